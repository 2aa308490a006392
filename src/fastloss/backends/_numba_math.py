"""Scalar and row formulas of every loss as Numba ``@njit`` helpers, written once.

These are the building blocks of ``fastloss.backends.numba_cpu`` and are meant to be called from
users' own ``@njit`` code too (``fastloss.numba`` re-exports them). They are dtype-generic: a
float32 row is computed with float32 vector arithmetic where that is exact enough and float64
where it matters (the true-class term, the log-sum-exp, every returned loss).

Conventions
    * Row helpers take 1-D rows. ``g`` is the row's gradient output, or an *empty* array for the
      loss alone; it may be the input row itself (every read happens before the first write).
      The gradient written is d(row loss)/dx times ``gscale``. They return the row loss (float64).
    * Item helpers (elementwise losses) return ``(loss, dloss/dx)`` as float64.
    * Nothing here raises; NaN in gives NaN out. Sub-gradients at kinks follow PyTorch.
"""

import math

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from llvmlite import ir

__all__ = [
    "fexp",
    "row_max",
    "softmax_xent_row",
    "softmax_xent_probs_row",
    "multiclass_hinge_row",
    "sigmoid_bce_item",
    "huber_item",
    "hinge_item",
    "mse_item",
    "mae_item",
    "kl_div_item",
]

_F32 = np.float32
_INLINE = "always"  # Numba-IR inlining: only for tiny leaves (it multiplies typing/compile time)
# Everything else is compiled once per signature and inlined (or not) by LLVM when linked into a
# kernel; IEEE semantics make both give identical results. error_model="numpy": no Python-style
# ZeroDivisionError checks in helpers compiled on their own.
_HELPER = dict(error_model="numpy", nogil=True)
# No fast-math flags anywhere: with IEEE semantics kept, LLVM may not reorder a sum, so every
# compilation of a helper (serial kernel, parallel kernel, inlined or not) rounds the same way
# and results are bitwise identical for any thread count. Vectorised reductions are written
# with explicit lanes instead, and fused multiply-adds are explicit (``_fma``).


# --------------------------------------------------------------------------------------------
# A vectorisable float32 exp (Numba has no SVML here, and libm's expf is a scalar call that
# stops LLVM from vectorising the softmax loop). Cephes expf: x = n*ln2 + r, |r| <= ln2/2,
# exp(r) by a degree-6 polynomial, 2**n built in the exponent bits. About 1.3 ulp; exact
# specials: exp(-inf) = 0, exp(+inf) = inf, exp(nan) = nan; results below FLT_MIN flush to 0.
# --------------------------------------------------------------------------------------------


@intrinsic
def _pow2i_f32(typingctx, nf):
    """2.0**n for a float32 holding an integer n in [-126, 127] (built in the exponent bits)."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i = builder.fptosi(args[0], i32)
        i = builder.shl(builder.add(i, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(i, ir.FloatType())

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: vfmadd where the CPU has it, exact everywhere)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        t = args[0].type
        name = "llvm.fma.f32" if isinstance(t, ir.FloatType) else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), name)
        return builder.call(fn, args)

    return sig, codegen


_LOG2E = _F32(1.44269504088896341)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_P0 = _F32(1.9875691500e-4)
_P1 = _F32(1.3981999507e-3)
_P2 = _F32(8.3334519073e-3)
_P3 = _F32(4.1665795894e-2)
_P4 = _F32(1.6666665459e-1)
_P5 = _F32(5.0000001201e-1)
_LO = _F32(-87.33654)  # ~ log(FLT_MIN)
_HI = _F32(88.72283)  # ~ log(FLT_MAX)
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_ZERO = _F32(0.0)
_INF = _F32(np.inf)


@njit(inline=_INLINE)
def _expf32(x):
    """exp for float32, branch-free (selects only), any x."""
    xc = x if x > _LO else _LO  # NaN -> _LO: keeps the int conversion defined
    xc = xc if xc < _HI else _HI
    n = np.floor(_fma(xc, _LOG2E, _HALF))
    r = _fma(-n, _LN2_LO, _fma(-n, _LN2_HI, xc))
    y = _fma(_fma(_fma(_fma(_fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
    y = _fma(y, r * r, r) + _ONE
    n1 = np.floor(n * _HALF)  # two factors so that n = 128 does not overflow the exponent
    y = y * _pow2i_f32(n1) * _pow2i_f32(n - n1)
    y = _ZERO if x < _LO else y
    y = _INF if x > _HI else y
    return x if x != x else y


@njit(inline=_INLINE)
def _expf32_nonpos(x):
    """exp for float32 x <= 0, -inf or NaN (the softmax case): one scale factor fewer."""
    xc = x if x > _LO else _LO
    n = np.floor(_fma(xc, _LOG2E, _HALF))
    r = _fma(-n, _LN2_LO, _fma(-n, _LN2_HI, xc))
    y = _fma(_fma(_fma(_fma(_fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
    y = _fma(y, r * r, r) + _ONE
    y = y * _pow2i_f32(n)
    y = _ZERO if x < _LO else y
    return x if x != x else y


def fexp(x):
    """exp(x) in x's precision; vectorisable for float32 (usable from @njit code)."""
    return math.exp(x)


@overload(fexp)
def _ol_fexp(x):
    if x == types.float32:
        return lambda x: _expf32(x)
    return lambda x: math.exp(x)


def _exp_nonpos(x):
    return math.exp(x)


@overload(_exp_nonpos)
def _ol_exp_nonpos(x):
    if x == types.float32:
        return lambda x: _expf32_nonpos(x)
    return lambda x: math.exp(x)


def _like(v, a):
    """v converted to the dtype of array a."""
    return a.dtype.type(v)


@overload(_like)
def _ol_like(v, a):
    if a.dtype == types.float32:
        return lambda v, a: np.float32(v)
    return lambda v, a: np.float64(v)


# --------------------------------------------------------------------------------------------
# Row pieces
# --------------------------------------------------------------------------------------------


# 16 fixed lanes, as explicit LLVM vectors: lane k takes the items j0 + k, j0 + k + 16, ... so
# a vector max/add is exactly the 16 scalar accumulators it replaces, in the same order (LLVM
# does not vectorise FP reductions without reassociation, which would make results depend on
# how a kernel was compiled). Contiguous 1-D arrays only; callers copy others first.


@intrinsic
def _lanes16(typingctx, a, j0, j1, op):
    """16 lanes over a[j0:j0 + 16 k] (j1 - j0 a multiple of 16) as a 16-tuple:
    op 0: lane-wise max ('v if v > m else m', NaN skipped) starting from a[j0] in every lane;
    op 1: lane-wise sum starting from 0."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
            and isinstance(a.dtype, types.Float) and isinstance(op, types.IntegerLiteral)):
        return None
    kind = op.literal_value
    rt = types.UniTuple(a.dtype, 16)
    sig = rt(a, j0, j1, op)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i64 = ir.IntType(64)
        lo = context.cast(builder, args[1], signature.args[1], types.intp)
        hi = context.cast(builder, args[2], signature.args[2], types.intp)
        et = context.get_data_type(aryty.dtype)
        vt = ir.VectorType(et, 16)
        align = aryty.dtype.bitwidth // 8
        acc = cgutils.alloca_once(builder, vt)
        if kind == 0:
            first = builder.load(builder.gep(ary.data, [lo]))
            init = cgutils.get_null_value(vt)
            for k in range(16):
                init = builder.insert_element(init, first, ir.Constant(ir.IntType(32), k))
        else:
            init = cgutils.get_null_value(vt)
        builder.store(init, acc)
        with cgutils.for_range_slice(builder, lo, hi, ir.Constant(i64, 16), intp=i64) as (j, _):
            ptr = builder.bitcast(builder.gep(ary.data, [j]), vt.as_pointer())
            v = builder.load(ptr, align=align)
            m = builder.load(acc)
            if kind == 0:
                r = builder.select(builder.fcmp_ordered(">", v, m), v, m)
            else:
                r = builder.fadd(v, m)
            builder.store(r, acc)
        res = builder.load(acc)
        items = [builder.extract_element(res, ir.Constant(ir.IntType(32), k)) for k in range(16)]
        return context.make_tuple(builder, signature.return_type, items)

    return sig, codegen


def _contig(a):
    return np.ascontiguousarray(a)


@overload(_contig)
def _ol_contig(a):
    if a.layout == "C":
        return lambda a: a
    return lambda a: np.ascontiguousarray(a)


@njit(**_HELPER)
def row_max(x):
    """max of a non-empty row over 16 fixed lanes (vector max, order fixed).
    (NaN may be skipped; callers get NaN from the sum of exponentials instead.)"""
    x = _contig(x)
    n = x.shape[0]
    n16 = n - n % 16
    m = _lanes16(x, 0, n16, 0)  # every lane starts at x[0] (n >= 1)
    m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = m
    for j in range(n16, n):
        v = x[j]
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m8 = m9 if m9 > m8 else m8
    m10 = m11 if m11 > m10 else m10
    m12 = m13 if m13 > m12 else m12
    m14 = m15 if m15 > m14 else m14
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    m8 = m10 if m10 > m8 else m8
    m12 = m14 if m14 > m12 else m12
    m0 = m4 if m4 > m0 else m0
    m8 = m12 if m12 > m8 else m8
    return m8 if m8 > m0 else m0


_CHUNK = 512  # float32 partial sums of at most this many terms, then added in float64


@njit(**_HELPER)
def _sum16(a, j0, j1):
    """a[j0:j1] summed in a's precision over 16 fixed lanes (vector adds, order fixed)."""
    a = _contig(a)
    n16 = j0 + (j1 - j0) - (j1 - j0) % 16
    s = _lanes16(a, j0, n16, 1)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15 = s
    for j in range(n16, j1):
        s0 += a[j]
    s0 += s8
    s1 += s9
    s2 += s10
    s3 += s11
    s4 += s12
    s5 += s13
    s6 += s14
    s7 += s15
    s0 += s4
    s1 += s5
    s2 += s6
    s3 += s7
    return np.float64((s0 + s2) + (s1 + s3))


@njit(**_HELPER)
def _exp_into(src, dst, j0, j1, shift, finite):
    """dst[j] = exp(src[j] - shift) for j0 <= j < j1 (unsigned indices: no wraparound test,
    so LLVM vectorises; src may be dst)."""
    if finite:
        for jj in range(j0, j1):
            j = np.uint64(jj)
            dst[j] = _exp_nonpos(src[j] - shift)
    else:
        for jj in range(j0, j1):
            j = np.uint64(jj)
            dst[j] = fexp(src[j] - shift)


@njit(**_HELPER)
def _exp_shift_sum(x, shift, g, write_g, finite):
    """sum_j exp(x_j - shift) in float64 (float32 lanes per chunk), storing each term in g if
    write_g. The terms are stored first, then summed back from cache, so the exp loop has no
    reduction and vectorises without fast-math. g may be x."""
    n = x.shape[0]
    s = 0.0
    if write_g:
        alias = x.ctypes.data == g.ctypes.data
        for j0 in range(0, n, _CHUNK):
            j1 = min(j0 + _CHUNK, n)
            if alias:  # one array: LLVM's overlap check would otherwise pick the scalar loop
                _exp_into(g, g, j0, j1, shift, finite)
            else:
                _exp_into(x, g, j0, j1, shift, finite)
            s += _sum16(g, j0, j1)
    elif n > 64:
        buf = np.empty(min(n, _CHUNK), x.dtype)
        for j0 in range(0, n, _CHUNK):
            j1 = min(j0 + _CHUNK, n)
            _exp_into(x[j0:j1], buf, 0, j1 - j0, shift, finite)
            s += _sum16(buf, 0, j1 - j0)
    else:
        z = _like(0.0, x)
        n4 = n - n % 4
        c0 = c1 = c2 = c3 = z
        for j in range(0, n4, 4):
            c0 += fexp(x[j] - shift)
            c1 += fexp(x[j + 1] - shift)
            c2 += fexp(x[j + 2] - shift)
            c3 += fexp(x[j + 3] - shift)
        for j in range(n4, n):
            c0 += fexp(x[j] - shift)
        s = np.float64((c0 + c1) + (c2 + c3))
    return s


@njit(inline=_INLINE)
def _wx(x, w, j, has_w):
    """w_j x_j in float64 (x_j alone without weights); 0 where w_j == 0, even if x_j = -inf."""
    if has_w:
        wj = np.float64(w[j])
        return wj * np.float64(x[j]) if wj != 0.0 else 0.0
    return np.float64(x[j])


@njit(**_HELPER)
def _weighted_row_sum(x, w, has_w):
    """sum_j w_j x_j in float64 over 4 fixed lanes."""
    n = x.shape[0]
    n4 = n - n % 4
    s0 = s1 = s2 = s3 = 0.0
    for j in range(0, n4, 4):
        s0 += _wx(x, w, j, has_w)
        s1 += _wx(x, w, j + 1, has_w)
        s2 += _wx(x, w, j + 2, has_w)
        s3 += _wx(x, w, j + 3, has_w)
    for j in range(n4, n):
        s0 += _wx(x, w, j, has_w)
    return (s0 + s1) + (s2 + s3)


@njit(**_HELPER)
def softmax_xent_row(x, y, w, w_sum, eps, z, g, gscale):
    """Cross-entropy of one row of logits ``x`` (C,) with class ``y`` (0 <= y < C).

    ``w``: class weights (C,) or empty; ``w_sum``: their sum (C without weights); ``eps``:
    label smoothing; ``z``: z-loss coefficient. Returns
    (1-eps) w_y (lse - x_y) + eps/C sum_c w_c (lse - x_c) + z w_y lse**2 and, when ``g`` is
    non-empty, writes gscale * [p_j ((1-eps) w_y + eps W/C + 2 z w_y lse) - (1-eps) w_y [j==y]
    - eps w_j/C] into it (``g`` may be ``x``). -inf logits are masks (p = 0)."""
    n = x.shape[0]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    # --- read everything first (g may alias x)
    m = row_max(x)
    xy = np.float64(x[y])
    wy = np.float64(w[y]) if has_w else 1.0
    sx = _weighted_row_sum(x, w, has_w) if eps != 0.0 else 0.0
    finite = abs(m) < np.inf
    shift = m if m > -np.inf else _like(0.0, x)  # +inf max: NaN row, as PyTorch
    s = _exp_shift_sum(x, shift, g, write_g, finite)
    lse = np.float64(shift) + math.log(s)
    inv_c = 1.0 / n
    loss = (1.0 - eps) * wy * (lse - xy)
    if eps != 0.0:
        loss += eps * inv_c * (w_sum * lse - sx)
    if z != 0.0:
        loss += z * wy * lse * lse
    if write_g:
        coef = (1.0 - eps) * wy + eps * w_sum * inv_c
        if z != 0.0:
            coef += 2.0 * z * wy * lse
        a = gscale * coef / s
        ey = np.float64(g[y])
        af = _like(a, x)
        c = gscale * eps * inv_c
        if eps != 0.0:
            cf = _like(c, x)
            if has_w:
                for j in range(n):
                    g[j] = g[j] * af - cf * w[j]
            else:
                for j in range(n):
                    g[j] = g[j] * af - cf
        else:
            for j in range(n):
                g[j] = g[j] * af
        # the true class in float64, folded before rounding
        g[y] = ey * a - c * wy - gscale * (1.0 - eps) * wy
    return loss


@njit(**_HELPER)
def softmax_xent_probs_row(x, t, w, eps, z, g, gscale):
    """Cross-entropy of one row of logits ``x`` (C,) with target probabilities ``t`` (C,).

    t' = (1-eps) t + eps/C, r = sum_c w_c t'_c; returns sum_c w_c t'_c (lse - x_c) (a term with
    w_c t'_c == 0 counts 0, even where x_c = -inf) + z r lse**2 and, when ``g`` is non-empty,
    writes gscale * [p_j (r + 2 z r lse) - w_j t'_j] into it (``g`` may be ``x``)."""
    n = x.shape[0]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    inv_c = 1.0 / n
    keep = 1.0 - eps
    add = eps * inv_c
    m = row_max(x)
    finite = abs(m) < np.inf
    shift = m if m > -np.inf else _like(0.0, x)  # +inf max: NaN row, as PyTorch
    shift64 = np.float64(shift)
    r = 0.0
    q = 0.0  # sum_j a_j (shift - x_j) >= 0: no cancellation against r * log(s)
    for j in range(n):
        tj = keep * np.float64(t[j]) + add
        if has_w:
            tj *= np.float64(w[j])
        r += tj
        q += tj * (shift64 - np.float64(x[j])) if tj != 0.0 else 0.0
    s = _exp_shift_sum(x, shift, g, write_g, finite)
    lse = shift64 + math.log(s)
    loss = r * math.log(s) + q
    if z != 0.0:
        loss += z * r * lse * lse
    if write_g:
        a = gscale * r / s
        az = gscale * 2.0 * z * r * lse / s if z != 0.0 else 0.0
        for j in range(n):
            tj = keep * np.float64(t[j]) + add
            if has_w:
                tj *= np.float64(w[j])
            e = np.float64(g[j])
            g[j] = (e * a - gscale * tj) + e * az  # p r - a_j first: exact where p = t
    return loss


@njit(**_HELPER)
def multiclass_hinge_row(x, y, w, margin, squared, crammer_singer, g, gscale):
    """Multiclass hinge of one row of scores ``x`` (C,) with class ``y`` (0 <= y < C).

    Weston-Watkins (PyTorch multi_margin_loss): w_y/C sum_{j!=y} max(0, margin - x_y + x_j)**p;
    Crammer-Singer: w_y max(0, margin + max_{j!=y} x_j - x_y)**p, the gradient going to the
    first maximal j. p = 2 if ``squared`` else 1; slope 0 where the hinge argument is 0."""
    n = x.shape[0]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    wy = np.float64(w[y]) if has_w else 1.0
    xy = np.float64(x[y])
    if not crammer_singer:
        f = wy / n
        loss = 0.0
        dsum = 0.0
        for j in range(n):
            zj = margin - xy + np.float64(x[j])
            h = zj if not zj <= 0.0 else 0.0  # NaN stays NaN
            d = 0.0
            if j != y:
                if squared:
                    loss += h * h
                    d = 2.0 * h * f * gscale if zj > 0.0 else 0.0
                else:
                    loss += h
                    d = f * gscale if zj > 0.0 else 0.0
                dsum += d
            if write_g:
                g[j] = d
        if write_g:
            g[y] = -dsum
        return loss * f
    best = -np.inf
    jb = -1
    nan = False
    for j in range(n):
        v = np.float64(x[j])
        if j != y:
            if v > best:
                best = v
                jb = j
            nan = nan or v != v
    zz = margin + best - xy if not nan else np.nan
    h = zz if not zz <= 0.0 else 0.0
    if squared:
        loss = wy * h * h
        d = 2.0 * h * wy * gscale if zz > 0.0 else 0.0
    else:
        loss = wy * h
        d = wy * gscale if zz > 0.0 else 0.0
    if write_g:
        for j in range(n):
            g[j] = 0.0
        if jb >= 0:
            g[jb] = d
            g[y] = -d
    return loss


# --------------------------------------------------------------------------------------------
# Elementwise items: (loss, dloss/dx) in float64
# --------------------------------------------------------------------------------------------


@njit(**_HELPER)
def sigmoid_bce_item(x, t, w, pw):
    """w * [(1-t) x + (1 + (pw-1) t) log(1 + exp(-x))], PyTorch's BCE-with-logits, stable for
    any x (no cancellation between large terms: log(1+exp(-x)) = -x + log1p(exp(x)) for x < 0)."""
    x = np.float64(x)
    t = np.float64(t)
    lw = 1.0 + (pw - 1.0) * t
    if x >= 0.0:
        e = math.exp(-x)
        loss = (1.0 - t) * x + lw * math.log1p(e)
        sig = 1.0 / (1.0 + e)
    else:
        e = math.exp(x)  # NaN lands here: NaN out
        loss = (1.0 - t) * x + lw * (math.log1p(e) - x)  # NaN at x = -inf, as PyTorch
        sig = e / (1.0 + e)
    return w * loss, w * (lw * sig - pw * t)


@njit(**_HELPER)
def huber_item(x, t, delta):
    """0.5 d**2 if |d| <= delta else delta (|d| - delta/2), d = x - t; gradient clip(d)."""
    d = np.float64(x) - np.float64(t)
    ad = abs(d)
    loss = 0.5 * d * d if ad <= delta else delta * (ad - 0.5 * delta)
    gr = delta if d > delta else (-delta if d < -delta else d)
    return loss, gr


@njit(**_HELPER)
def hinge_item(x, t, margin, squared):
    """max(0, margin - y x), y = +1 if t > 0 else -1; squared if asked; slope 0 at the kink."""
    y = 1.0 if t > 0 else -1.0
    zz = margin - y * np.float64(x)
    h = zz if not zz <= 0.0 else 0.0
    if squared:
        return h * h, -2.0 * h * y
    return h, (-y if zz > 0.0 else 0.0)


@njit(**_HELPER)
def mse_item(x, t):
    """(x - t)**2."""
    d = np.float64(x) - np.float64(t)
    return d * d, 2.0 * d


@njit(**_HELPER)
def mae_item(x, t):
    """|x - t|; gradient sign(x - t) with sign(0) = 0."""
    d = np.float64(x) - np.float64(t)
    s = 1.0 if d > 0.0 else (-1.0 if d < 0.0 else d * 0.0)
    return abs(d), s


@njit(**_HELPER)
def kl_div_item(x, t, log_target):
    """PyTorch kl_div: t (log t - x) (0 where t == 0), or exp(t) (t - x) with log_target."""
    x = np.float64(x)
    t = np.float64(t)
    if log_target:
        et = math.exp(t)
        return et * (t - x), -et
    if t == 0.0:
        return 0.0, -t
    return t * (math.log(t) - x) if t > 0.0 else np.nan, -t
