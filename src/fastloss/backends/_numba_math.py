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
    * The math in x's precision, vectorisable for float32 (``fexp``, ``flog``, ``ftanh``,
      ``fpow``, and ``_exp_nonpos``, ``_log1p_unit`` on their ranges), is also the CPU's kit for
      the item formulas written once with the CUDA backend's (``_items.with_math``).
"""

import math
import platform

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from llvmlite import ir

from . import _items

__all__ = [
    "fexp",
    "flog",
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
    "smooth_l1_item",
    "log_cosh_item",
    "msle_item",
    "poisson_nll_item",
    "sigmoid_focal_item",
    "cosine_similarity_row",
    "ftanh",
    "fpow",
]

_F32 = np.float32
_INLINE = "always"  # Numba-IR inlining: only for tiny leaves (it multiplies typing/compile time)
# Everything else is compiled once per signature and inlined (or not) by LLVM when linked into a
# kernel; IEEE semantics make both give identical results. error_model="numpy": no Python-style
# ZeroDivisionError checks in helpers compiled on their own.
_HELPER = dict(error_model="numpy", nogil=True)
# Items with exp/log are the exception, inlined at the Numba-IR level too (inline=_INLINE with
# _HELPER): LLVM's inliner would leave them as calls, and a call stops the vectoriser.
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


@intrinsic
def _pow2_rounded(typingctx, k):
    """2.0**n for k = float32(n + _ROUNDER) with an integer n in [-126, 127]: n sits in the low
    bits of k's significand, shifted into the exponent field (two integer ops, no conversion)."""
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i = builder.shl(builder.bitcast(args[0], i32), ir.Constant(i32, 23))
        return builder.bitcast(builder.add(i, ir.Constant(i32, 127 << 23)), ir.FloatType())

    return sig, codegen


_ROUNDER = _F32(12582912.0)  # 1.5 * 2**23: k = v + _ROUNDER rounds v to an integer in k's low bits


@njit(inline=_INLINE)
def _expf32_nonpos(x):
    """exp for float32 x <= 0, -inf or NaN (the softmax case): n = round(x / ln2) by adding
    _ROUNDER (no floor, no int conversion), one scale factor."""
    xc = _LO if x < _LO else x  # NaN stays NaN, and so does every step after it
    k = _fma(xc, _LOG2E, _ROUNDER)
    n = k - _ROUNDER
    r = _fma(-n, _LN2_LO, _fma(-n, _LN2_HI, xc))
    y = _fma(_fma(_fma(_fma(_fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
    y = _fma(y, r * r, r) + _ONE
    y = y * _pow2_rounded(k)
    return _ZERO if x < _LO else y


def _by_precision(name, f32, f64, doc):
    """A function of one float for @njit code: ``f32`` (vectorisable) for float32 arguments,
    ``f64`` (libm) otherwise; called from Python, ``f64``."""

    def func(x):
        return f64(x)

    func.__name__ = func.__qualname__ = name
    func.__doc__ = doc

    @overload(func)
    def _ol(x):
        if x == types.float32:
            return lambda x: f32(x)
        return lambda x: f64(x)

    return func


fexp = _by_precision("fexp", _expf32, math.exp,
                     "exp(x) in x's precision; vectorisable for float32 (usable from @njit code).")
_exp_nonpos = _by_precision("_exp_nonpos", _expf32_nonpos, math.exp, "exp(x) for x <= 0 or NaN.")


# --------------------------------------------------------------------------------------------
# A vectorisable float32 log (Cephes logf, branch-free): x = 2**e * m, m in [sqrt(1/2), sqrt(2)),
# log(m) = f - f**2/2 + f**3 P(f) with f = m - 1, plus e*ln2 in two parts. About 1 ulp; exact
# specials: log(0) = -inf, log(x < 0) = nan, log(+inf) = inf, log(nan) = nan; subnormals scaled.
# --------------------------------------------------------------------------------------------


@intrinsic
def _frexp_f32(typingctx, x):
    """(m, e) with x = m * 2**e, m in [0.5, 1), both float32, for a positive normal x."""
    sig = types.UniTuple(types.float32, 2)(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i = builder.bitcast(args[0], i32)
        e = builder.sub(builder.and_(builder.lshr(i, ir.Constant(i32, 23)), ir.Constant(i32, 0xFF)),
                        ir.Constant(i32, 126))
        mb = builder.or_(builder.and_(i, ir.Constant(i32, 0x807FFFFF)), ir.Constant(i32, 0x3F000000))
        items = [builder.bitcast(mb, ir.FloatType()), builder.sitofp(e, ir.FloatType())]
        return context.make_tuple(builder, signature.return_type, items)

    return sig, codegen


_SQRTHF = _F32(0.707106781186547524)
_SQRT2M1 = _F32(0.41421356237309515)
_FLT_MIN = _F32(1.17549435e-38)
_TWO23 = _F32(8388608.0)
_L0 = _F32(7.0376836292e-2)
_L1 = _F32(-1.1514610310e-1)
_L2 = _F32(1.1676998740e-1)
_L3 = _F32(-1.2420140846e-1)
_L4 = _F32(1.4249322787e-1)
_L5 = _F32(-1.6668057665e-1)
_L6 = _F32(2.0000714765e-1)
_L7 = _F32(-2.4999993993e-1)
_L8 = _F32(3.3333331174e-1)
_NAN = _F32(np.nan)


@njit(inline=_INLINE)
def _logf32_poly(f, e):
    """log(1 + f) + e ln2 for f in [sqrt(1/2) - 1, sqrt(2) - 1]."""
    f2 = f * f
    p = _fma(_fma(_fma(_fma(_fma(_fma(_fma(_fma(_L0, f, _L1), f, _L2), f, _L3), f, _L4), f, _L5),
                           f, _L6), f, _L7), f, _L8)
    y = _fma(e, _LN2_LO, p * f * f2)
    y = _fma(-_HALF, f2, y)
    return _fma(e, _LN2_HI, f + y)


@njit(inline=_INLINE)
def _logf32_core(x, eoff):
    """log(x) + eoff ln2 for a positive, normal, finite float32 x (anything else: garbage)."""
    m, e = _frexp_f32(x)
    low = m < _SQRTHF
    return _logf32_poly((m + m) - _ONE if low else m - _ONE, e + eoff - _ONE if low else e + eoff)


@njit(inline=_INLINE)
def _log1pf32_unit(x):
    """log(1 + x) for float32 x in [sqrt(1/2) - 1, 1] or NaN, without forming 1 + x: f = x
    (exact), or (x - 1) / 2 with one ln2 above sqrt(2) - 1."""
    big = x > _SQRT2M1
    return _logf32_poly((x - _ONE) * _HALF if big else x, _ONE if big else _ZERO)


@njit(inline=_INLINE)
def _logf32(x):
    """log for float32, branch-free (selects only), any x."""
    tiny = x < _FLT_MIN
    r = _logf32_core(x * _TWO23 if tiny else x, _F32(-23.0) if tiny else _ZERO)
    r = -_INF if x == _ZERO else r
    r = _NAN if x < _ZERO else r
    r = x if x == _INF else r
    return x if x != x else r


flog = _by_precision("flog", _logf32, math.log,
                     "log(x) in x's precision; vectorisable for float32 (usable from @njit code).")
_log1p_unit = _by_precision("_log1p_unit", _log1pf32_unit, math.log1p,
                            "log(1 + x) for x in [sqrt(1/2) - 1, 1] or NaN (vectorisable for float32).")


# --------------------------------------------------------------------------------------------
# Half precision. Numba's CPU target has no float16 type: the kernels take float16 arrays as
# int16 arrays of their bits and bfloat16 ones as uint16 arrays of theirs (as the contract
# passes them), so the element type says which. Values are converted where they are loaded
# (``_f``: to float32, exact) and stored (``_to``: from float32, rounded once to nearest even,
# overflow to +-inf, NaN kept, subnormals kept), in LLVM IR that vectorises: float16 through
# LLVM's half type (vcvtph2ps / vcvtps2ph with F16C), bfloat16 with integer ops (LLVM's bfloat
# would use avx512_bf16's vcvtneps2bf16, which flushes subnormals to zero).
# --------------------------------------------------------------------------------------------

_HALF_BITS = (types.int16, types.uint16)  # float16, bfloat16


def _computed(t):
    """The Numba type an element of type t is computed in: float32 for the half types."""
    return types.float32 if t in _HALF_BITS else t


def _ir_shaped(v, elem):
    """elem, or a vector of elem with as many lanes as the LLVM value v."""
    return ir.VectorType(elem, v.type.count) if isinstance(v.type, ir.VectorType) else elem


def _ir_widen(builder, v, t):
    """LLVM value(s) v of stored element type t as computed (half bits to float32)."""
    if t == types.int16:
        return builder.fpext(builder.bitcast(v, _ir_shaped(v, ir.HalfType())), _ir_shaped(v, ir.FloatType()))
    if t == types.uint16:  # bfloat16: the high half of a float32
        w = builder.zext(v, _ir_shaped(v, ir.IntType(32)))
        return builder.bitcast(builder.shl(w, ir.Constant(w.type, 16)), _ir_shaped(v, ir.FloatType()))
    return v


def _ir_narrow(builder, v, t):
    """float32 LLVM value(s) v as stored element type t (half bits, rounded to nearest even)."""
    if t == types.int16:
        return builder.bitcast(builder.fptrunc(v, _ir_shaped(v, ir.HalfType())), _ir_shaped(v, ir.IntType(16)))
    if t == types.uint16:  # bfloat16: add just under half an ulp, plus the ulp's parity, and cut
        b = builder.bitcast(v, _ir_shaped(v, ir.IntType(32)))
        c = lambda k: ir.Constant(b.type, k)  # noqa: E731
        hi = builder.lshr(b, c(16))
        rounded = builder.lshr(builder.add(b, builder.add(c(0x7FFF), builder.and_(hi, c(1)))), c(16))
        quiet = builder.or_(hi, c(0x40))  # a NaN stays a NaN (its payload may not round to inf)
        r = builder.select(builder.fcmp_unordered("uno", v, v), quiet, rounded)
        return builder.trunc(r, _ir_shaped(v, ir.IntType(16)))
    return v


@intrinsic
def _f(typingctx, v):
    """An array element as computed: float16 / bfloat16 bits (int16 / uint16) to float32, a
    float as it is."""
    if not (isinstance(v, types.Float) or v in _HALF_BITS):
        return None
    sig = _computed(v)(v)

    def codegen(context, builder, signature, args):
        return _ir_widen(builder, args[0], signature.args[0])

    return sig, codegen


@intrinsic
def _to(typingctx, v, a):
    """The number v as an element of array a: cast for a float array; for a half one, cast to
    float32 and then rounded once (the float32 kernels' value, rounded)."""
    if not (isinstance(a, types.Array) and isinstance(v, (types.Float, types.Integer, types.Boolean))):
        return None
    et = a.dtype
    sig = et(v, a)

    def codegen(context, builder, signature, args):
        f = context.cast(builder, args[0], signature.args[0], _computed(et))
        return _ir_narrow(builder, f, et)

    return sig, codegen


def _is_half(a):
    """Whether array a holds float16 or bfloat16 bits (a compile-time constant)."""
    return a.dtype in (np.int16, np.uint16)


@overload(_is_half)
def _ol_is_half(a):
    half = a.dtype in _HALF_BITS
    return lambda a: half


def _scratch(shape, a):
    """np.empty(shape) of the type a's elements are computed in."""
    return np.empty(shape, np.float32 if _is_half(a) else a.dtype)


@overload(_scratch)
def _ol_scratch(shape, a):
    dt = np.float32 if _computed(a.dtype) == types.float32 else np.float64
    return lambda shape, a: np.empty(shape, dt)


# Chunks of half items staged through float32 scratch: the item loops then run as for float32,
# and each conversion in a loop of its own, at full vector width (inside loops whose float64
# math vectorises 4 wide, the conversions cost more than the items). A float array is used
# in place: no staging, no copy.


def _half_scratch(a, n):
    """n float32 items of scratch for a half array a; for a float array an empty view of a (no
    allocation: float arrays are never staged)."""


@overload(_half_scratch)
def _ol_half_scratch(a, n):
    if a.dtype in _HALF_BITS:
        return lambda a, n: np.empty(n, np.float32)
    return lambda a, n: a[:0]


def _staged(a, buf):
    """The array a's items are read from or written to: a itself, or buf for a half array
    (filled and emptied chunk by chunk, by _stage_in and _stage_out)."""


@overload(_staged)
def _ol_staged(a, buf):
    if a.dtype in _HALF_BITS:
        return lambda a, buf: buf
    return lambda a, buf: a


def _stage_base(a, lo):
    """Index of a's item lo in _staged(a, buf): lo, or 0 for a half array."""


@overload(_stage_base)
def _ol_stage_base(a, lo):
    if a.dtype in _HALF_BITS:
        return lambda a, lo: np.uint64(0)
    return lambda a, lo: np.uint64(lo)


def _stage_loop(context, builder, src_ty, src, src_lo, dst_ty, dst, dst_lo, n, convert):
    """IR of dst[dst_lo + k] = convert(src[src_lo + k]) for 0 <= k < n (1-D C arrays; the
    loop is emitted in the caller, where LLVM vectorises it)."""
    s_ary = context.make_array(src_ty)(context, builder, src)
    d_ary = context.make_array(dst_ty)(context, builder, dst)
    with cgutils.for_range(builder, n) as loop:
        k = loop.index
        v = builder.load(builder.gep(s_ary.data, [builder.add(src_lo, k)]))
        builder.store(convert(v), builder.gep(d_ary.data, [builder.add(dst_lo, k)]))


@intrinsic
def _stage_in(typingctx, a, lo, n, buf):
    """For a half array a: buf[:n] = a[lo:lo + n], widened. Nothing for a float array."""
    if not (isinstance(a, types.Array) and isinstance(buf, types.Array)):
        return None
    sig = types.void(a, lo, n, buf)

    def codegen(context, builder, signature, args):
        if a.dtype in _HALF_BITS:
            lo_, n_ = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2))
            _stage_loop(context, builder, a, args[0], lo_, buf, args[3], ir.Constant(lo_.type, 0), n_,
                        lambda v: _ir_widen(builder, v, a.dtype))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stage_out(typingctx, buf, a, lo, n):
    """For a non-empty half array a: a[lo:lo + n] = buf[:n], rounded once. Nothing otherwise."""
    if not (isinstance(a, types.Array) and isinstance(buf, types.Array)):
        return None
    sig = types.void(buf, a, lo, n)

    def codegen(context, builder, signature, args):
        if a.dtype in _HALF_BITS:
            lo_, n_ = (context.cast(builder, args[i], signature.args[i], types.intp) for i in (2, 3))
            size = builder.extract_value(context.make_array(a)(context, builder, args[1]).shape, 0)
            with builder.if_then(builder.icmp_signed(">", size, ir.Constant(size.type, 0))):
                _stage_loop(context, builder, buf, args[0], ir.Constant(lo_.type, 0), a, args[1], lo_, n_,
                            lambda v: _ir_narrow(builder, v, a.dtype))
        return context.get_dummy_value()

    return sig, codegen


def _like(v, a):
    """v converted to the float type a is computed in (a: an array or a scalar)."""
    return (np.float32 if _is_half(np.asarray(a)) else np.asarray(a).dtype.type)(v)


@overload(_like)
def _ol_like(v, a):
    if _computed(a.dtype if isinstance(a, types.Array) else a) == types.float32:
        return lambda v, a: np.float32(v)
    return lambda v, a: np.float64(v)


_T0 = _F32(-5.70498872745e-3)
_T1 = _F32(2.06390887954e-2)
_T2 = _F32(-5.37397155531e-2)
_T3 = _F32(1.33314422036e-1)
_T4 = _F32(-3.33332819422e-1)
_TANH_SMALL = _F32(0.625)


@njit(inline=_INLINE)
def _tanhf32(x):
    """tanh for float32 (Cephes tanhf), branch-free: x + x z P(z), z = x**2, below |x| = 0.625;
    (1 - e) / (1 + e) with e = exp(-2|x|) above, signed. About 2 ulp; tanh(+-inf) = +-1."""
    a = abs(x)
    e = _expf32_nonpos(-(a + a))
    big = (_ONE - e) / (_ONE + e)
    z = x * x
    small = _fma(_fma(_fma(_fma(_fma(_T0, z, _T1), z, _T2), z, _T3), z, _T4) * z, x, x)
    big = -big if x < _ZERO else big
    return small if a < _TANH_SMALL else big  # NaN: big, NaN


ftanh = _by_precision("ftanh", _tanhf32, math.tanh,
                      "tanh(x) in x's precision; vectorisable for float32 (usable from @njit code).")


@njit(inline=_INLINE)
def fpow(m, g):
    """m**g for m >= 0 (or NaN) and a float g >= 0, in m's precision (usable from @njit code):
    exp(g log(m)) (vectorisable for float32), m m for g = 2, 1 for g = 0 (also 0**0 and NaN**0,
    as C's pow). (Inlined into the item: an overload's function would stay a call, and a call
    stops the vectoriser.)"""
    gg = _like(g, m)
    r = fexp(gg * flog(m))
    r = m * m if gg == 2.0 else r
    return _like(1.0, m) if gg == 0.0 else r


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
    op 1: lane-wise sum starting from 0.
    A half array's items are widened to float32 as they are loaded. Four independent 16-lane accumulators take the 64-item steps (64 loads in flight instead of
    16: the reduction is no longer latency-bound), the rest goes to the first; they are then
    combined lane-wise, (acc0 op acc1) op (acc2 op acc3). The order depends on j0, j1 only."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
            and _computed(a.dtype) in (types.float32, types.float64) and isinstance(op, types.IntegerLiteral)):
        return None
    kind = op.literal_value
    rt = types.UniTuple(_computed(a.dtype), 16)
    sig = rt(a, j0, j1, op)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i64 = ir.IntType(64)
        lo = context.cast(builder, args[1], signature.args[1], types.intp)
        hi = context.cast(builder, args[2], signature.args[2], types.intp)
        st = context.get_data_type(aryty.dtype)  # stored
        vt = ir.VectorType(context.get_data_type(_computed(aryty.dtype)), 16)
        align = aryty.dtype.bitwidth // 8
        init = cgutils.get_null_value(vt)
        if kind == 0:
            first = _ir_widen(builder, builder.load(builder.gep(ary.data, [lo])), aryty.dtype)
            for k in range(16):
                init = builder.insert_element(init, first, ir.Constant(ir.IntType(32), k))

        def step(m, v):
            if kind == 0:
                return builder.select(builder.fcmp_ordered(">", v, m), v, m)
            return builder.fadd(v, m)

        def load(j, d):
            ptr = builder.gep(ary.data, [builder.add(j, ir.Constant(i64, d))])
            v = builder.load(builder.bitcast(ptr, ir.VectorType(st, 16).as_pointer()), align=align)
            return _ir_widen(builder, v, aryty.dtype)

        accs = [cgutils.alloca_once(builder, vt) for _ in range(4)]
        for acc in accs:
            builder.store(init, acc)
        n64 = builder.add(lo, builder.mul(builder.sdiv(builder.sub(hi, lo), ir.Constant(i64, 64)),
                                          ir.Constant(i64, 64)))
        with cgutils.for_range_slice(builder, lo, n64, ir.Constant(i64, 64), intp=i64) as (j, _):
            vs = [load(j, 16 * q) for q in range(4)]
            for acc, v in zip(accs, vs):
                builder.store(step(builder.load(acc), v), acc)
        with cgutils.for_range_slice(builder, n64, hi, ir.Constant(i64, 16), intp=i64) as (j, _):
            builder.store(step(builder.load(accs[0]), load(j, 0)), accs[0])
        r0, r1, r2, r3 = (builder.load(acc) for acc in accs)
        res = step(step(r0, r1), step(r2, r3))
        items = [builder.extract_element(res, ir.Constant(ir.IntType(32), k)) for k in range(16)]
        return context.make_tuple(builder, signature.return_type, items)

    return sig, codegen


@intrinsic
def _prefetch_l2(typingctx, a, j):
    """Prefetch the cache line of a[j] into L2 (llvm.prefetch: read, locality 2, data)."""
    if not (isinstance(a, types.Array) and isinstance(j, types.Integer)):
        return None
    sig = types.void(a, j)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        j = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [j]), cgutils.voidptr_t)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _sfence(typingctx):
    """Order earlier streaming stores before later stores (x86 sfence; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse.sfence")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _scale_into(typingctx, src, dst, a, c, w, has_w, stream):
    """dst[j] = src[j] * a - c * w[j] (c alone without weights) for every j of dst, src[j] and
    w[j] read before dst[j] is written (src may be dst). stream: streaming stores (no read for
    ownership, no cache pollution) for the 64-byte aligned vector body; the caller issues
    _sfence() before other threads may read dst. A half dst (and w) holds float16/bfloat16
    bits: src, a and c are then float32, w is widened as loaded and the result rounded once."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.layout == "C"
            and dst.layout == "C" and src.dtype == _computed(dst.dtype) and isinstance(w, types.Array)
            and w.dtype == dst.dtype and w.layout == "C" and a == c == src.dtype):
        return None
    sig = types.void(src, dst, a, c, w, has_w, stream)

    def codegen(context, builder, signature, args):
        aryty = signature.args[1]
        s_ary = context.make_array(signature.args[0])(context, builder, args[0])
        d_ary = context.make_array(aryty)(context, builder, args[1])
        w_ary = context.make_array(signature.args[4])(context, builder, args[4])
        av, cv = args[2], args[3]
        has_w = context.cast(builder, args[5], signature.args[5], types.boolean)
        stream = context.cast(builder, args[6], signature.args[6], types.boolean)
        i64 = ir.IntType(64)
        size = aryty.dtype.bitwidth // 8  # of dst and w
        src_size = src.dtype.bitwidth // 8
        lanes = 64 // size
        et = context.get_data_type(src.dtype)  # computed in
        vt = ir.VectorType(et, lanes)
        dt = context.get_data_type(aryty.dtype)  # stored
        n = builder.extract_value(d_ary.shape, 0)
        addr = builder.ptrtoint(d_ary.data, i64)
        head = builder.udiv(builder.and_(builder.neg(addr), ir.Constant(i64, 63)), ir.Constant(i64, size))
        misaligned = builder.icmp_unsigned("!=", builder.and_(addr, ir.Constant(i64, size - 1)),
                                           ir.Constant(i64, 0))
        head = builder.select(misaligned, n, head)
        head = builder.select(builder.icmp_signed("<", n, head), n, head)
        body = builder.add(head, builder.mul(builder.udiv(builder.sub(n, head), ir.Constant(i64, lanes)),
                                             ir.Constant(i64, lanes)))

        def splat(v):
            r = cgutils.get_null_value(vt)
            for k in range(lanes):
                r = builder.insert_element(r, v, ir.Constant(ir.IntType(32), k))
            return r

        def value(j, weighted, n, av, cv):
            """dst[j:j + n] (a vector if n > 1), as stored."""
            p = builder.gep(s_ary.data, [j])
            x = builder.load(builder.bitcast(p, (ir.VectorType(et, n) if n > 1 else et).as_pointer()), align=src_size)
            r = builder.fmul(x, av)
            if weighted:
                p = builder.gep(w_ary.data, [j])
                wv = builder.load(builder.bitcast(p, (ir.VectorType(dt, n) if n > 1 else dt).as_pointer()), align=size)
                cv = builder.fmul(cv, _ir_widen(builder, wv, aryty.dtype))
            return _ir_narrow(builder, builder.fsub(r, cv), aryty.dtype)

        def scalar_loop(lo, hi, weighted):
            with cgutils.for_range_slice(builder, lo, hi, ir.Constant(i64, 1), intp=i64) as (j, _):
                builder.store(value(j, weighted, 1, av, cv), builder.gep(d_ary.data, [j]), align=size)

        def emit(weighted, streaming):
            scalar_loop(ir.Constant(i64, 0), head, weighted)
            avv, cvv = splat(av), splat(cv)
            with cgutils.for_range_slice(builder, head, body, ir.Constant(i64, lanes), intp=i64) as (j, _):
                ptr = builder.bitcast(builder.gep(d_ary.data, [j]), ir.VectorType(dt, lanes).as_pointer())
                st = builder.store(value(j, weighted, lanes, avv, cvv), ptr, align=64)
                if streaming:
                    st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            scalar_loop(body, n, weighted)

        with builder.if_else(has_w) as (then_w, else_w):
            for weighted, blk in ((True, then_w), (False, else_w)):
                with blk:
                    with builder.if_else(stream) as (then_stream, else_stream):
                        with then_stream:
                            emit(weighted, True)
                        with else_stream:
                            emit(weighted, False)
        return context.get_dummy_value()

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
        v = _f(x[j])
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


@intrinsic
def _dots3(typingctx, x, t, j0, j1):
    """(sum x_j**2, sum t_j**2, sum x_j t_j) over j0 <= j < j1, in float64 (float32 products
    are exact there) over 16 fixed lanes, as explicit LLVM vectors: lane k takes the items
    j0 + k, j0 + k + 16, ... (fused multiply-adds), the lanes are then added in a fixed halving
    tree and the last (j1 - j0) % 16 items in order. The order depends on j0, j1 only. Half
    arrays are widened as loaded."""
    if not (isinstance(x, types.Array) and isinstance(t, types.Array) and x.ndim == t.ndim == 1
            and x.layout == t.layout == "C" and x.dtype == t.dtype
            and _computed(x.dtype) in (types.float32, types.float64)):
        return None
    sig = types.UniTuple(types.float64, 3)(x, t, j0, j1)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        arrays = [context.make_array(aryty)(context, builder, a) for a in args[:2]]
        lo = context.cast(builder, args[2], signature.args[2], types.intp)
        hi = context.cast(builder, args[3], signature.args[3], types.intp)
        i64, i32 = ir.IntType(64), ir.IntType(32)
        et, f64 = context.get_data_type(aryty.dtype), ir.DoubleType()  # et: as stored
        lanes = 16
        vin, vd = ir.VectorType(et, lanes), ir.VectorType(f64, lanes)
        align = aryty.dtype.bitwidth // 8
        vfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vd, [vd, vd, vd]), "llvm.fma.v16f64")
        sfma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64, f64, f64]), "llvm.fma.f64")

        def load(ary, j, ty):
            ptr = builder.gep(ary.data, [j])
            if ty is not et:
                ptr = builder.bitcast(ptr, ty.as_pointer())
            v = _ir_widen(builder, builder.load(ptr, align=align), aryty.dtype)
            if v.type != f64 and v.type != vd:
                v = builder.fpext(v, vd if ty is vin else f64)
            return v

        accs = [cgutils.alloca_once(builder, vd) for _ in range(3)]
        for acc in accs:
            builder.store(cgutils.get_null_value(vd), acc)
        nvec = builder.add(lo, builder.mul(builder.sdiv(builder.sub(hi, lo), ir.Constant(i64, lanes)),
                                           ir.Constant(i64, lanes)))
        with cgutils.for_range_slice(builder, lo, nvec, ir.Constant(i64, lanes), intp=i64) as (j, _):
            xv, tv = load(arrays[0], j, vin), load(arrays[1], j, vin)
            for acc, (a, b) in zip(accs, ((xv, xv), (tv, tv), (xv, tv))):
                builder.store(builder.call(vfma, [a, b, builder.load(acc)]), acc)
        sums = []
        for acc in accs:
            v = builder.load(acc)
            width = lanes
            while width > 1:  # lanes k and k + width/2 added, for every k < width/2
                width //= 2
                mask = ir.VectorType(i32, width)
                low = ir.Constant(mask, [ir.Constant(i32, k) for k in range(width)])
                high = ir.Constant(mask, [ir.Constant(i32, k + width) for k in range(width)])
                v = builder.fadd(builder.shuffle_vector(v, v, low), builder.shuffle_vector(v, v, high))
            s = cgutils.alloca_once(builder, f64)
            builder.store(builder.extract_element(v, ir.Constant(i32, 0)), s)
            sums.append(s)
        with cgutils.for_range_slice(builder, nvec, hi, ir.Constant(i64, 1), intp=i64) as (j, _):
            xs, ts = load(arrays[0], j, et), load(arrays[1], j, et)
            for s, (a, b) in zip(sums, ((xs, xs), (ts, ts), (xs, ts))):
                builder.store(builder.call(sfma, [a, b, builder.load(s)]), s)
        return context.make_tuple(builder, signature.return_type, [builder.load(s) for s in sums])

    return sig, codegen


@njit(**_HELPER)
def _sum16(a, j0, j1):
    """a[j0:j1] summed in a's precision over 16 fixed lanes (vector adds, order fixed)."""
    a = _contig(a)
    n16 = j0 + (j1 - j0) - (j1 - j0) % 16
    s = _lanes16(a, j0, n16, 1)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15 = s
    for j in range(n16, j1):
        s0 += a[j]
    # the lanes folded in halves (lane l + lane l+8, then + 4, + 2, + 1): one fixed order
    h0 = (s0 + s8) + (s4 + s12)
    h1 = (s1 + s9) + (s5 + s13)
    h2 = (s2 + s10) + (s6 + s14)
    h3 = (s3 + s11) + (s7 + s15)
    return np.float64((h0 + h2) + (h1 + h3))


@njit(**_HELPER)
def _exp_into(src, dst, j0, j1, shift, finite):
    """dst[j] = exp(src[j] - shift) for j0 <= j < j1 (unsigned indices: no wraparound test,
    so LLVM vectorises; src may be dst)."""
    if finite:
        for jj in range(j0, j1):
            j = np.uint64(jj)
            dst[j] = _exp_nonpos(_f(src[j]) - shift)
    else:
        for jj in range(j0, j1):
            j = np.uint64(jj)
            dst[j] = fexp(_f(src[j]) - shift)


def _scale_row(src, dst, a, c, w, has_w, stream):
    """dst[j] = src[j] * a - c * w[j] (c alone without weights): _scale_into for contiguous
    arrays, a plain loop for others (a user's strided gradient row)."""


@overload(_scale_row)
def _ol_scale_row(src, dst, a, c, w, has_w, stream):
    if src.layout == dst.layout == w.layout == "C":
        return lambda src, dst, a, c, w, has_w, stream: _scale_into(src, dst, a, c, w, has_w, stream)

    def impl(src, dst, a, c, w, has_w, stream):
        for j in range(dst.shape[0]):
            dst[j] = _to(src[j] * a - c * _f(w[j]) if has_w else src[j] * a - c, dst)
    return impl


def _line_items(a):
    return 64 // a.itemsize


@overload(_line_items)
def _ol_line_items(a):
    k = 64 // (a.dtype.bitwidth // 8)
    return lambda a: k


@njit(**_HELPER)
def _exp_shift_sum(x, shift, g, write_g, finite, nxt):
    """sum_j exp(x_j - shift) in float64 (float32 lanes per chunk), storing each term in g if
    write_g. The terms are stored first, then summed back from cache, so the exp loop has no
    reduction and vectorises without fast-math. g may be x. While the exps are computed, the
    cache lines of the row ``nxt`` (the next row, or empty) are prefetched into L2, one per
    line, spread over the chunks: its DRAM read overlaps this row's compute."""
    n = x.shape[0]
    s = 0.0
    pf = nxt.shape[0] > 0
    line = _line_items(x)
    if write_g:
        alias = x.ctypes.data == g.ctypes.data
        for j0 in range(0, n, _CHUNK):
            j1 = min(j0 + _CHUNK, n)
            if alias:  # one array: LLVM's overlap check would otherwise pick the scalar loop
                _exp_into(g, g, j0, j1, shift, finite)
            elif pf:  # 4 lines of the next row per 4 lines of exps
                for k0 in range(j0, j1, 4 * line):
                    k1 = min(k0 + 4 * line, j1)
                    for j in range(k0, k1, line):
                        _prefetch_l2(nxt, j)
                    _exp_into(x, g, k0, k1, shift, finite)
            else:
                _exp_into(x, g, j0, j1, shift, finite)
            s += _sum16(g, j0, j1)
        if pf:
            _prefetch_l2(nxt, n - 1)  # the row's last line when it is not line-aligned
    elif n > 64:
        buf = _scratch(min(n, _CHUNK), x)
        for j0 in range(0, n, _CHUNK):
            j1 = min(j0 + _CHUNK, n)
            if pf:
                for j in range(j0, j1, line):
                    _prefetch_l2(nxt, j)
            _exp_into(x[j0:j1], buf, 0, j1 - j0, shift, finite)
            s += _sum16(buf, 0, j1 - j0)
        if pf:
            _prefetch_l2(nxt, n - 1)
    else:
        z = _like(0.0, x)
        n4 = n - n % 4
        c0 = c1 = c2 = c3 = z
        for j in range(0, n4, 4):
            c0 += fexp(_f(x[j]) - shift)
            c1 += fexp(_f(x[j + 1]) - shift)
            c2 += fexp(_f(x[j + 2]) - shift)
            c3 += fexp(_f(x[j + 3]) - shift)
        for j in range(n4, n):
            c0 += fexp(_f(x[j]) - shift)
        s = np.float64((c0 + c1) + (c2 + c3))
    return s


@njit(inline=_INLINE)
def _wx(x, w, j, has_w):
    """w_j x_j in float64 (x_j alone without weights); 0 where w_j == 0, even if x_j = -inf."""
    if has_w:
        wj = np.float64(_f(w[j]))
        return wj * np.float64(_f(x[j])) if wj != 0.0 else 0.0
    return np.float64(_f(x[j]))


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


@njit(inline=_INLINE)
def _xent_loss(lse, xy, wy, sx, w_sum, inv_c, eps, z):
    """(1-eps) w_y (lse - x_y) + eps/C (W lse - sum_c w_c x_c) + z w_y lse**2 (W = sum w)."""
    loss = (1.0 - eps) * wy * (lse - xy)
    if eps != 0.0:
        loss += eps * inv_c * (w_sum * lse - sx)
    if z != 0.0:
        loss += z * wy * lse * lse
    return loss


@njit(inline=_INLINE)
def _xent_coef(lse, wy, w_sum, inv_c, eps, z):
    """d loss / d lse: (1-eps) w_y + eps W/C + 2 z w_y lse (the gradient is p_j times this,
    minus (1-eps) w_y [j == y] + eps w_j / C)."""
    coef = (1.0 - eps) * wy + eps * w_sum * inv_c
    if z != 0.0:
        coef += 2.0 * z * wy * lse
    return coef


@njit(inline=_INLINE)
def _xent_grad_y(ey, a, c, wy, gscale, eps):
    """The true class's gradient in float64, e_y a - c w_y - gscale (1-eps) w_y, folded before
    rounding (a = gscale coef / s, c = gscale eps / C)."""
    return ey * a - c * wy - gscale * (1.0 - eps) * wy


def _exps_to(buf, g):
    """Where a row's exponentials go: the scratch row ``buf`` if it is not empty or ``g`` holds
    half bits (``buf`` then has the row's length), else the gradient row ``g``."""


@overload(_exps_to)
def _ol_exps_to(buf, g):
    if buf.dtype != g.dtype:  # half g: only buf can hold float32 exps
        return lambda buf, g: buf
    return lambda buf, g: buf if buf.shape[0] > 0 else g


@njit(**_HELPER)
def _softmax_xent_row(x, y, w, w_sum, eps, z, g, gscale, buf, nxt, stream):
    """softmax_xent_row with a scratch row ``buf`` (len C, or empty: the exps go to ``g``; len
    C for half rows), the next row ``nxt`` to prefetch (or empty) and streaming gradient stores
    (``stream``)."""
    n = x.shape[0]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    # --- read everything first (g may alias x)
    m = row_max(x)
    xy = np.float64(_f(x[y]))
    wy = np.float64(_f(w[y])) if has_w else 1.0
    sx = _weighted_row_sum(x, w, has_w) if eps != 0.0 else 0.0
    finite = abs(m) < np.inf
    shift = m if m > -np.inf else _like(0.0, x)  # +inf max: NaN row, as PyTorch
    e = _exps_to(buf, g)
    s = _exp_shift_sum(x, shift, e, write_g, finite, nxt)
    lse = np.float64(shift) + math.log(s)
    inv_c = 1.0 / n
    loss = _xent_loss(lse, xy, wy, sx, w_sum, inv_c, eps, z)
    if write_g:
        a = gscale * _xent_coef(lse, wy, w_sum, inv_c, eps, z) / s
        c = gscale * eps * inv_c
        ey = np.float64(e[y])
        _scale_row(e, g, _like(a, x), _like(c, x), w, has_w and eps != 0.0, stream)
        g[y] = _to(_xent_grad_y(ey, a, c, wy, gscale, eps), g)
    return loss


@njit(**_HELPER)
def softmax_xent_row(x, y, w, w_sum, eps, z, g, gscale):
    """Cross-entropy of one row of logits ``x`` (C,) with class ``y`` (0 <= y < C).

    ``w``: class weights (C,) or empty; ``w_sum``: their sum (C without weights); ``eps``:
    label smoothing; ``z``: z-loss coefficient. Returns
    (1-eps) w_y (lse - x_y) + eps/C sum_c w_c (lse - x_c) + z w_y lse**2 and, when ``g`` is
    non-empty, writes gscale * [p_j ((1-eps) w_y + eps W/C + 2 z w_y lse) - (1-eps) w_y [j==y]
    - eps w_j/C] into it (``g`` may be ``x``). -inf logits are masks (p = 0)."""
    x = _contig(x)
    none = x[:0]
    return _softmax_xent_row(x, y, _contig(w), w_sum, eps, z, g, gscale, none, none, False)


@njit(**_HELPER)
def softmax_xent_probs_row(x, t, w, eps, z, g, gscale):
    """Cross-entropy of one row of logits ``x`` (C,) with target probabilities ``t`` (C,).

    t' = (1-eps) t + eps/C, r = sum_c w_c t'_c; returns sum_c w_c t'_c (lse - x_c) (a term with
    w_c t'_c == 0 counts 0, even where x_c = -inf) + z r lse**2 and, when ``g`` is non-empty,
    writes gscale * [p_j (r + 2 z r lse) - w_j t'_j] into it (``g`` may be ``x``)."""
    return _softmax_xent_probs_row(x, t, w, eps, z, g, gscale, g[:0])


@njit(**_HELPER)
def _softmax_xent_probs_row(x, t, w, eps, z, g, gscale, buf):
    """softmax_xent_probs_row with a scratch row ``buf`` for the exps (as _softmax_xent_row's)."""
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
        tj = keep * np.float64(_f(t[j])) + add
        if has_w:
            tj *= np.float64(_f(w[j]))
        r += tj
        q += tj * (shift64 - np.float64(_f(x[j]))) if tj != 0.0 else 0.0
    e = _exps_to(buf, g)
    s = _exp_shift_sum(x, shift, e, write_g, finite, x[:0])
    lse = shift64 + math.log(s)
    loss = r * math.log(s) + q
    if z != 0.0:
        loss += z * r * lse * lse
    if write_g:
        a = gscale * r / s
        az = gscale * 2.0 * z * r * lse / s if z != 0.0 else 0.0
        for j in range(n):
            tj = keep * np.float64(_f(t[j])) + add
            if has_w:
                tj *= np.float64(_f(w[j]))
            ej = np.float64(e[j])
            g[j] = _to((ej * a - gscale * tj) + ej * az, g)  # p r - a_j first: exact where p = t
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
    wy = np.float64(_f(w[y])) if has_w else 1.0
    xy = np.float64(_f(x[y]))
    if not crammer_singer:
        f = wy / n
        loss = 0.0
        dsum = 0.0
        for j in range(n):
            zj = margin - xy + np.float64(_f(x[j]))
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
                g[j] = _to(d, g)
        if write_g:
            g[y] = _to(-dsum, g)
        return loss * f
    best = -np.inf
    jb = -1
    nan = False
    for j in range(n):
        v = np.float64(_f(x[j]))
        if j != y:
            if v > best:
                best = v
                jb = j
            nan = nan or v != v
    # one class: no j != y, no term (as PyTorch's and the other backends), NaN score or not
    zz = -np.inf if n == 1 else (margin + best - xy if not nan else np.nan)
    h = zz if not zz <= 0.0 else 0.0
    if squared:
        loss = wy * h * h
        d = 2.0 * h * wy * gscale if zz > 0.0 else 0.0
    else:
        loss = wy * h
        d = wy * gscale if zz > 0.0 else 0.0
    if write_g:
        for j in range(n):
            g[j] = _to(0.0, g)
        if jb >= 0:
            g[jb] = _to(d, g)
            g[y] = _to(-d, g)
    return loss


# --------------------------------------------------------------------------------------------
# Elementwise items: (loss, dloss/dx) in float64
# --------------------------------------------------------------------------------------------


@njit(inline=_INLINE, **_HELPER)
def _sigmoid_bce_x(x, t, w, pw):
    """sigmoid_bce_item in x's precision (vectorisable for float32; t, w, pw of x's type)."""
    one = _like(1.0, x)
    zero = _like(0.0, x)
    e = _exp_nonpos(-abs(x))  # exp(-|x|) in (0, 1]; NaN for NaN
    l1p = _log1p_unit(e)
    r = one / (one + e)
    lw = one + (pw - one) * t
    xp = x if x > zero else zero
    xn = x if x < zero else zero
    loss = (lw * l1p + (one - t) * xp) - (pw * t) * xn  # no cancellation for 0 <= t <= 1
    loss = (one - t) * x - lw * x if x == -_like(np.inf, x) else loss  # the formula's NaN there
    sig = r if x >= zero else e * r
    return w * loss, w * (lw * sig - pw * t)


@njit(inline=_INLINE, **_HELPER)
def sigmoid_bce_item(x, t, w, pw):
    """w * [(1-t) x + (1 + (pw-1) t) log(1 + exp(-x))], PyTorch's BCE-with-logits, stable for
    any x: with e = exp(-|x|) and r = 1 / (1 + e), log(1 + exp(-x)) = log1p(e) (- x for x < 0)
    and sigmoid(x) = r (e r for x < 0); the loss is summed as lw log1p(e) + (1-t) max(x, 0) -
    pw t min(x, 0) (lw = 1 + (pw-1) t), which does not cancel for 0 <= t <= 1. Computed in x's
    precision (vectorisable for float32). NaN at x = -inf, as PyTorch."""
    loss, d = _sigmoid_bce_x(x, _like(t, x), _like(w, x), _like(pw, x))
    return np.float64(loss), np.float64(d)


# the arithmetic items, written once with the CUDA backend's (_items): the kernels' (x, t, p0, p1)
# forms, and the public ones of fastloss.numba
huber4, hinge4, mse4, mae4 = (njit(inline=_INLINE, **_HELPER)(f) for f in _items.arithmetic(
    njit(inline=_INLINE)(lambda v, x: np.float64(v))))  # in float64, whatever x's dtype


@njit(**_HELPER)
def huber_item(x, t, delta):
    """0.5 d**2 if |d| <= delta else delta (|d| - delta/2), d = x - t; gradient clip(d)."""
    return huber4(x, t, delta, 0.0)


@njit(**_HELPER)
def hinge_item(x, t, margin, squared):
    """max(0, margin - y x), y = +1 if t > 0 else -1; squared if asked; slope 0 at the kink."""
    return hinge4(x, t, margin, squared)


@njit(**_HELPER)
def mse_item(x, t):
    """(x - t)**2."""
    return mse4(x, t, 0.0, 0.0)


@njit(**_HELPER)
def mae_item(x, t):
    """|x - t|; gradient sign(x - t) with sign(0) = 0."""
    return mae4(x, t, 0.0, 0.0)


@njit(inline=_INLINE, **_HELPER)
def _kl_div_x(x, t, log_target):
    """kl_div_item in x's precision (vectorisable for float32 without log_target)."""
    if log_target:
        et = math.exp(np.float64(t))
        return _like(et * (np.float64(t) - np.float64(x)), x), _like(-et, x)
    loss = t * (flog(t) - x)
    # no target mass, no loss (not 0 * inf = NaN), but a NaN x stays NaN
    loss = loss if t > 0 else (_like(0.0, x) if t == 0 and x == x else _like(np.nan, x))
    return loss, -t


@njit(inline=_INLINE, **_HELPER)
def kl_div_item(x, t, log_target):
    """PyTorch kl_div: t (log t - x) (0 where t == 0 unless x is NaN, NaN where t < 0), or exp(t) (t - x) with
    log_target; gradient -t or -exp(t)."""
    loss, d = _kl_div_x(x, _like(t, x), log_target)
    return np.float64(loss), np.float64(d)


# --------------------------------------------------------------------------------------------
# The newer losses, written once with the CUDA backend's (_items): the kernels' (x, t, p0, p1)
# items in x's precision (vectorisable for float32: the math above), and the public ones
# --------------------------------------------------------------------------------------------

smooth_l14, log_cosh4, msle4, poisson_nll4, sigmoid_focal4 = (
    njit(inline=_INLINE, **_HELPER)(f) for f in _items.with_math(fexp, _exp_nonpos, flog, _log1p_unit, ftanh, fpow, _like))
_cosine_similarity3 = njit(inline=_INLINE, **_HELPER)(_items.cosine_similarity)
_cosine_similarity_grad = njit(inline=_INLINE, **_HELPER)(_items.cosine_similarity_grad)


@njit(**_HELPER)
def smooth_l1_item(x, t, beta):
    """0.5 d**2 / beta if |d| < beta else |d| - beta/2, d = x - t (beta = 0: |d|); gradient
    d / beta or sign(d), sign(0) = 0."""
    loss, d = smooth_l14(x, _like(t, x), beta, 0.0)
    return np.float64(loss), np.float64(d)


@njit(inline=_INLINE, **_HELPER)
def log_cosh_item(x, t):
    """log(cosh(x - t)), stable for any difference; gradient tanh(x - t)."""
    loss, d = log_cosh4(x, _like(t, x), 0.0, 0.0)
    return np.float64(loss), np.float64(d)


@njit(inline=_INLINE, **_HELPER)
def msle_item(x, t):
    """(log1p(max(x, 1e-7)) - log1p(max(t, 1e-7)))**2; gradient 2 d / (1 + x), 0 where x < 1e-7."""
    loss, d = msle4(x, _like(t, x), 0.0, 0.0)
    return np.float64(loss), np.float64(d)


@njit(inline=_INLINE, **_HELPER)
def poisson_nll_item(x, t, log_input, full, eps):
    """exp(x) - t x (log_input), else x - t log(x + eps); ``full`` adds Stirling's
    t log(t) - t + log(2 pi t) / 2 where t > 1 (no gradient)."""
    loss, d = poisson_nll4(x, _like(t, x), eps, (1 if log_input else 0) + (2 if full else 0))
    return np.float64(loss), np.float64(d)


@njit(inline=_INLINE, **_HELPER)
def sigmoid_focal_item(x, t, alpha, gamma):
    """torchvision's sigmoid_focal_loss of one logit: alpha_t (1 - p_t)**gamma bce(x, t)
    (alpha_t = 1 when alpha < 0), stable for any x."""
    loss, d = sigmoid_focal4(x, _like(t, x), alpha, gamma)
    return np.float64(loss), np.float64(d)


@njit(**_HELPER)
def _cosine_grad_into(src, t, g, nn, coef, gscale):
    """g_j = gscale (-t_j / nn - coef src_j) in float64, rounded once (src may be g)."""
    for jj in range(g.shape[0]):
        j = np.uint64(jj)
        g[j] = _to(_cosine_similarity_grad(_f(src[j]), _f(t[j]), nn, coef) * gscale, g)


@njit(**_HELPER)
def _cosine_similarity_row(x, t, g, gscale):
    """cosine_similarity_row of contiguous rows."""
    sx, st, s = _dots3(x, t, 0, x.shape[0])
    loss, nn, coef = _cosine_similarity3(sx, st, s)
    if g.shape[0] > 0:
        if g.ctypes.data == x.ctypes.data:  # one array: LLVM's overlap check would pick the scalar loop
            _cosine_grad_into(g, t, g, nn, coef, gscale)
        else:
            _cosine_grad_into(x, t, g, nn, coef, gscale)
    return loss


@njit(**_HELPER)
def cosine_similarity_row(x, t, g, gscale):
    """Cosine-similarity loss of one row ``x`` (C,) with target row ``t`` (C,) (Keras'
    CosineSimilarity): -sum_c x_c t_c / (|x| |t|), each norm at least 1e-6 (sqrt of Keras'
    1e-12 on the squared norm). Sums in float64; when ``g`` is non-empty, writes gscale *
    [-t_c / (|x| |t|) + loss x_c / sum x**2] into it (only the first term where sum x**2 <=
    1e-12; ``g`` may be ``x``)."""
    return _cosine_similarity_row(_contig(x), _contig(t), g, gscale)
