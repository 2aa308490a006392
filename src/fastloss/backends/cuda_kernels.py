"""The CUDA kernels of the ``cuda`` backend (the same formulas as ``fastloss.reference`` and the
CPU backends), and the launch geometry they are written for.

* Precision: float32, float16 and bfloat16 inputs are computed in float32 (half loads widen
  exactly, every result is rounded once as stored), float64 inputs in float64. A kernel's
  precision ``F`` is a constant of the kernel (flag ``F64``, see ``kernel``), and its float
  scalars arrive in F (the launch rounds them once). float64 appears in float32 kernels only
  where a line says why: the batch sums (each thread's running sum, the block's and the final
  one), ``lse - x_y`` once per softmax row, the row sums and gradient of ``cosine_similarity``
  (the squares of float32 values overflow float32 where the norm does not; the CPU backends do
  the same) and the loss of ``poisson_nll`` (``_items``: ``t x`` overflows float32 where the
  loss does not). ``tests/test_ptx.py`` holds every kernel's PTX to that.
* Row losses (``softmax_xent`` with class indices or probabilities, ``multiclass_hinge``,
  ``cosine_similarity``): a *segment* of ``width`` lanes per row, ``width`` a power of two fixed
  by C alone (``row_width``): the next power of two of C up to a warp for C up to
  ``_WARP_ROWS_UPTO`` = 1024 (several rows per warp for small C, a warp per row above 16), the
  whole block above. ``TPB // width`` rows per block, blocks striding over the row groups. A
  segment's values are merged by xor shuffles inside the warp (a butterfly: every lane ends with
  the same bits, the merges being commutative), and in a block row the warps' results then go
  through shared memory and every thread folds them in warp order (``_make_seg_reduce``).
* softmax rows are read once for the maximum and the sum of exponentials together (online
  softmax: each lane keeps ``(m, s)`` and rescales ``s`` when ``m`` grows), with the sum
  ``q = sum_j a_j (m - x_j)`` that label smoothing and probability targets need kept relative to
  the running maximum (no cancellation against ``lse`` for logits far from 0). The gradient is
  written in the same launch by a second pass over the row, which the warp or block has just
  read (from L1 for warp rows, L2 for block rows that fit it), each lane writing only the
  entries it read itself and only after the segment's reduction, so ``out=x`` is safe. Loads are plain coalesced loads (consecutive lanes read
  consecutive elements); there are no 128-bit vector loads: Numba has no vector-typed loads from
  an array, and a warp's 32 consecutive 4-byte loads already make whole 128-byte transactions.
* Elementwise losses: grid-stride loops, one item function per loss, written once with the CPU
  backend's (``_items``) except ``sigmoid_bce`` and ``kl_div`` (``_make_items``).
* Half precision: float16 arrays are native (numba.cuda's fp16: loads widen exactly, a store
  rounds once, nearest-even, +-inf beyond the range, subnormals kept). bfloat16 arrays arrive as
  their uint16 bits, and flags say which arrays hold such bits (``BF_X``: ``x`` and every output,
  ``grad``, ``loss_out`` and the result; ``BF_T``: the targets; ``BF_W``: ``weight``; ``BF_P``:
  ``pos_weight``; ``BF_G``: ``gscale_arr``): ``_ld`` widens bits exactly (a bfloat16 is the top
  half of a float32), ``_st`` rounds a float32 or float64 once to bfloat16 bits. The flag, not
  the uint16 dtype, decides: integer arrays stay integers.
* A class label outside ``[0, C)`` that is not ``ignore_index`` is never used as an index: that
  row's loss and its whole gradient row are NaN, and the row does not count in the mean's
  denominator. ``hinge`` labels are not checked: a label ``> 0`` is +1, anything else -1.

Deterministic batch reduction: every thread adds its items' losses in a fixed order in float64,
each block merges its threads in a fixed order (``_block_sum``) and writes one float64 partial
sum; a second, single-block kernel (``finish``) adds the partials in the same fixed way and
writes the 1-element result (dividing by the mean's denominator there). No floating-point
atomics; the grid size depends on the shape only, so repeats are bitwise identical. The
denominator of a label-weighted mean (the sum of ``weight[y]`` over rows not ignored) is reduced
on the device the same way (``label_weight``) into a 1-element float64 array that the gradient
kernels read, so ``grad_output / denominator`` is applied without a host round trip.

Under ``NUMBA_ENABLE_CUDASIM=1`` (``SIM``) the same kernels run in Numba's CUDA simulator, with
8-thread blocks of two 4-lane "warps" (so that block rows take both steps of the reduction) and
at most 2 blocks per grid to keep it fast; the simulator has no warp shuffles, so
``_shfl_xor4`` exchanges through shared memory there, the only code that differs. Without
``numba.cuda`` this module still imports (``IMPORT_ERROR`` says why), and nothing here can run.
"""

import math

import numpy as np

from . import _items

try:
    import numba
    from numba import cuda

    IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - numba without a CUDA target
    cuda = None
    IMPORT_ERROR = exc

SIM = cuda is not None and bool(getattr(numba.config, "ENABLE_CUDASIM", 0))

if cuda is None:  # pragma: no cover - keep the module importable; nothing below is ever launched
    class _NoCuda:
        @staticmethod
        def jit(*args, **kwargs):
            return args[0] if args and callable(args[0]) else (lambda f: f)

    cuda = _NoCuda()

# ---------------------------------------------------------------------------------------------
# Launch geometry: constants only (never device properties), so results do not depend on the GPU
# ---------------------------------------------------------------------------------------------

TPB = 8 if SIM else 256  # threads per block (a power of two)
_WARP = 4 if SIM else 32  # lanes that shuffle together (the simulator's stand-in is smaller)
_NWARPS = TPB // _WARP
_FULL_MASK = 0xFFFFFFFF
_MAX_GRID = 2 if SIM else 1024  # blocks per grid at most; kernels stride over the rest
_WARP_ROWS_UPTO = 1024  # C up to this: a warp (or less) per row; above: the whole block

# The simulator runs kernels as Python: math.exp overflow and 1/0 raise there, NumPy's do not.
if SIM:
    _exp, _log, _log1p, _tanh = np.exp, np.log, np.log1p, np.tanh
else:
    _exp, _log, _log1p, _tanh = math.exp, math.log, math.log1p, math.tanh
_INF = math.inf
_NAN = math.nan

# flags of a kernel variant: which arrays hold bfloat16 bits, and the precision
BF_X, BF_T, BF_W, BF_P, BF_G = 1, 2, 4, 8, 16
F64 = 32  # x is float64: compute in float64 (else float32)


def compute_dtype(flags):
    """The precision ``F`` of a kernel variant."""
    return np.float64 if flags & F64 else np.float32


def row_width(n_classes):
    """Lanes per row: a power of two that depends on C only."""
    if n_classes > _WARP_ROWS_UPTO:
        return TPB
    w = 1
    while w < n_classes and w < _WARP:
        w *= 2
    return w


def grid(n_work):
    return max(1, min(n_work, _MAX_GRID))


# ---------------------------------------------------------------------------------------------
# Loads, stores, warp exchange
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _ld(v, is_bf, F):
    """An array element in precision F; ``is_bf``: ``v`` is bfloat16 bits, widened exactly (they
    are the top half of a float32's)."""
    if is_bf:
        return F(np.uint32(np.uint32(v) << np.uint32(16)).view(np.float32))
    return F(v)


@cuda.jit(device=True)
def _bf16_bits(v):
    """``v`` (float32 or float64) rounded once to bfloat16 (nearest-even, beyond the range +-inf,
    NaN a quiet NaN, subnormals kept), as its bits. float64 -> float32 -> bfloat16 would round
    twice, so for a float64 the first step rounds to odd (truncate, then set the last bit when
    inexact): with 16 spare bits the second, nearest-even, rounding then gives exactly the
    once-rounded result. For a float32 ``v`` the first step is exact and compiles away."""
    f = np.float32(v)  # nearest; beyond float32's range +-inf
    b = np.int64(f.view(np.uint32))
    if f != f:
        return np.uint16((b >> 16) | 0x40)
    d = np.float64(f)
    if d != v:
        if abs(d) > abs(v):  # rounded away from zero (+-inf included): step back to truncate
            b -= 1
        b |= 1
    return np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)


@cuda.jit(device=True)
def _st(v, is_bf):
    """``v`` as an output array stores it, rounded once: bfloat16 bits when ``is_bf``; else as
    is (the store itself rounds to the array's float dtype, float16 included). Numba types the
    result as ``v``'s float type (the bits exactly), and the store into the uint16 array takes
    them back."""
    if is_bf:
        return _bf16_bits(v)
    return v


if SIM:
    def _shfl_xor4(a, b, c, d, k, n):
        """(a, b, c, d) of lane ``lane ^ k``: the simulator has no shuffles, so every thread of
        the block posts its values in shared memory and reads its partner's."""
        slots = cuda.shared.array(TPB, np.object_)
        tid = cuda.threadIdx.x
        cuda.syncthreads()  # the last exchange's reads are done
        slots[tid] = (a, b, c, d)
        cuda.syncthreads()
        return slots[tid ^ k]

    def _syncwarp():
        """Nothing to do: the simulator's exchanges are block barriers."""
else:
    @cuda.jit(device=True)
    def _shfl_xor4(a, b, c, d, k, n):
        """(a, b, c, d) of lane ``lane ^ k`` of the warp, the first ``n`` of them (a constant)
        shuffled (a float64 or int64 takes two shuffles), the others, unused, left as they are."""
        a = cuda.shfl_xor_sync(_FULL_MASK, a, k)
        if n > 1:
            b = cuda.shfl_xor_sync(_FULL_MASK, b, k)
        if n > 2:
            c = cuda.shfl_xor_sync(_FULL_MASK, c, k)
        if n > 3:
            d = cuda.shfl_xor_sync(_FULL_MASK, d, k)
        return a, b, c, d

    @cuda.jit(device=True)
    def _syncwarp():
        cuda.syncwarp(_FULL_MASK)


def _make_seg_reduce(merge, n):
    """``seg_reduce(sm_a, sm_b, sm_c, sm_d, a, b, c, d, width)``: every lane's (a, b, c, d)
    merged over its segment of ``width`` lanes with ``merge(a, b, c, d, a2, b2, c2, d2)``
    (which merges the first ``n`` and passes the others through), in a fixed order; every lane
    gets the segment's result, the same bits in each (``merge`` is commutative). Inside a warp
    by xor shuffles (a butterfly); a block-wide segment then merges the warps' results through
    the shared slots ``sm_*[warp]`` (arrays of ``_NWARPS``), every thread folding them in warp
    order. Every thread of the block must call it (it holds barriers)."""
    @cuda.jit(device=True)
    def seg_reduce(sm_a, sm_b, sm_c, sm_d, a, b, c, d, width):
        _syncwarp()  # the lanes' reads of the row come before any lane writes it (out=x)
        k = min(width, _WARP) // 2
        while k > 0:
            a2, b2, c2, d2 = _shfl_xor4(a, b, c, d, k, n)
            a, b, c, d = merge(a, b, c, d, a2, b2, c2, d2)
            k //= 2
        if width > _WARP:
            tid = cuda.threadIdx.x
            cuda.syncthreads()  # the slots' readers of the last reduction are done
            if tid % _WARP == 0:
                w = tid // _WARP
                sm_a[w] = a
                sm_b[w] = b
                sm_c[w] = c
                sm_d[w] = d
            cuda.syncthreads()
            a, b, c, d = sm_a[0], sm_b[0], sm_c[0], sm_d[0]
            for w in range(1, _NWARPS):
                a, b, c, d = merge(a, b, c, d, sm_a[w], sm_b[w], sm_c[w], sm_d[w])
        return a, b, c, d

    return seg_reduce


@cuda.jit(device=True)
def _merge_sum1(a, b, c, d, a2, b2, c2, d2):
    return a + a2, b, c, d


@cuda.jit(device=True)
def _merge_sum2(a, b, c, d, a2, b2, c2, d2):
    return a + a2, b + b2, c, d


@cuda.jit(device=True)
def _merge_sum3(a, b, c, d, a2, b2, c2, d2):
    return a + a2, b + b2, c + c2, d


_seg_sum1 = _make_seg_reduce(_merge_sum1, 1)
_seg_sum2 = _make_seg_reduce(_merge_sum2, 2)
_seg_sum3 = _make_seg_reduce(_merge_sum3, 3)


@cuda.jit(device=True)
def _block_sum(sm, acc, partials):
    """partials[blockIdx] = the block's threads' float64 ``acc`` summed in a fixed order
    (``sm``: a (4, _NWARPS) float64 shared array)."""
    total, _, _, _ = _seg_sum1(sm[0], sm[1], sm[2], sm[3], acc, acc, acc, acc, TPB)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit(device=True)
def _weight(w, j, flags, F):
    """weight[j] in F, 1 without weights."""
    return _ld(w[j], flags & BF_W, F) if w.shape[0] > 0 else F(1.0)


# ---------------------------------------------------------------------------------------------
# Row-kernel helpers: a segment of ``width`` lanes per row
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _row_groups(n, width):
    """How many groups of ``TPB // width`` rows cover ``n`` rows."""
    rows_per_block = TPB // width
    return (n + rows_per_block - 1) // rows_per_block


@cuda.jit(device=True)
def _row_thread(x, g, width, gscale, den, F):
    """(lane, classes, write_g, gs) of this thread: its lane among the ``width`` lanes of a row,
    the row length, whether a gradient is written (an empty ``g`` means loss only), and the
    gradient's scale ``gscale / den`` in F (``den``: the float64 batch sum of the mean's
    denominator, or empty)."""
    gs = gscale / F(den[0]) if den.shape[0] > 0 else gscale
    return cuda.threadIdx.x % width, x.shape[1], g.shape[0] > 0, gs


@cuda.jit(device=True)
def _row_scale(gs, gscale_arr, gs_stride, row, flags, F):
    """The gradient scale of row ``row``: ``gs`` times ``gscale_arr[row]`` where given."""
    if gscale_arr.shape[0] > 0:
        return gs * _ld(gscale_arr[row * gs_stride], flags & BF_G, F)
    return gs


@cuda.jit(device=True)
def _row_of(grp, width):
    """This thread's row in row group ``grp`` (may be past the last row)."""
    return grp * (TPB // width) + cuda.threadIdx.x // width


@cuda.jit(device=True)
def _label_row(x, labels, w, row, ignore_index, can_ignore, flags, F):
    """(status, y, x[row, y], weight[y]) of a class-label row; status 0: compute, 1: ignored,
    2: bad label, 3: no row. x[row, y] is read here, before any lane writes the row (out=x)."""
    status = 3
    y = 0
    xy = F(0.0)
    wy = F(1.0)
    if row < x.shape[0]:
        yl = labels[row]
        if can_ignore and yl == ignore_index:
            status = 1
        elif yl < 0 or yl >= x.shape[1]:
            status = 2
        else:
            status = 0
            y = yl
            xy = _ld(x[row, y], flags & BF_X, F)
            wy = _weight(w, y, flags, F)
    return status, y, xy, wy


@cuda.jit(device=True)
def _rebase(q, r, m_old, m_new):
    """q = sum_j a_j (m_old - x_j) (r = sum_j a_j) taken relative to m_new >= m_old. Nothing
    moves without weight or from m_old = -inf (q is then 0, or +inf from a weighted -inf)."""
    if r != 0 and m_old != m_new and m_old != -_INF:
        return q + r * (m_new - m_old)
    return q


@cuda.jit(device=True)
def _lse_step(m, s, r, q, v, a, F):
    """Online softmax with a weighted sum: the state after one more logit v of weight a, where
    m = max, s = sum exp(x - m), r = sum a, q = sum a (m - x); a term of weight 0 adds
    nothing, a -inf logit of weight a != 0 adds +inf (a * inf)."""
    if v > m:
        q = _rebase(q, r, m, v)
        s = s * _exp(m - v) + F(1.0)
        m = v
    elif v != -_INF:
        s += _exp(v - m)  # NaN lands here: s becomes NaN
    if a != 0:
        r += a
        q += a * (m - v) if v != -_INF else a * F(_INF)
    return m, s, r, q


@cuda.jit(device=True)
def _merge_lse(m1, s1, r1, q1, m2, s2, r2, q2):
    """Two lanes' online-softmax states as one (commutative: the same bits either way)."""
    m = m1 if m1 >= m2 else m2
    t1 = s1 * _exp(m1 - m) if s1 != 0 else s1
    t2 = s2 * _exp(m2 - m) if s2 != 0 else s2
    return m, t1 + t2, r1 + r2, _rebase(q1, r1, m1, m) + _rebase(q2, r2, m2, m)


_seg_lse = _make_seg_reduce(_merge_lse, 4)


@cuda.jit(device=True)
def _log_sum(m, s, F):
    """log(s) = lse - m of a merged state; NaN for a +inf logit (as PyTorch)."""
    if m == _INF:
        return F(_NAN)
    return _log(s)


@cuda.jit(device=True)
def _softmax_scale(gs, coef, s, m, F):
    """gs * coef / s, the factor of exp(x_j - m) in the gradient; NaN for a +inf logit."""
    if m == _INF:
        return F(_NAN)
    return gs * coef / s


@cuda.jit(device=True)
def _fill_row(g, row, width, value, flags):
    """This lane's entries of gradient row ``row`` set to ``value``."""
    v = _st(value, flags & BF_X)
    for j in range(cuda.threadIdx.x % width, g.shape[1], width):
        g[row, j] = v


@cuda.jit(device=True)
def _add_row_loss(loss_out, row, loss, acc, flags):
    """acc + loss (the batch sum, in float64), storing loss_out[row] when per-row losses are
    asked for (the sum takes the unrounded loss, not the stored one)."""
    if loss_out.shape[0] > 0:
        loss_out[row] = _st(loss, flags & BF_X)
    return acc + np.float64(loss)


# ---------------------------------------------------------------------------------------------
# Final reduction and the label pre-pass (float64 batch sums)
# ---------------------------------------------------------------------------------------------


def _make_finish(flags):
    @cuda.jit
    def kernel(partials, den, den_host, result):
        """result[0] = (sum of partials, fixed order) / denominator; one block."""
        sm = cuda.shared.array((4, _NWARPS), np.float64)
        tid = cuda.threadIdx.x
        acc = np.float64(0.0)
        for b in range(tid, partials.shape[0], TPB):
            acc += partials[b]
        total, _, _, _ = _seg_sum1(sm[0], sm[1], sm[2], sm[3], acc, acc, acc, acc, TPB)
        if tid == 0:
            d = den[0] if den.shape[0] > 0 else den_host
            result[0] = _st(total / d, flags & BF_X)

    return kernel


def _make_label_weight(flags):
    @cuda.jit
    def kernel(labels, n_classes, ignore_index, w, partials):
        """Partial sums of weight[y] (or 1) over labels that are not ignore_index and in range."""
        sm = cuda.shared.array((4, _NWARPS), np.float64)
        acc = np.float64(0.0)
        for i in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, labels.shape[0], cuda.gridDim.x * TPB):
            y = labels[i]
            if y != ignore_index and y >= 0 and y < n_classes:
                acc += _weight(w, y, flags, np.float64)
        _block_sum(sm, acc, partials)

    return kernel


# ---------------------------------------------------------------------------------------------
# softmax_xent with class indices
# ---------------------------------------------------------------------------------------------


def _make_softmax_xent(flags):
    F = compute_dtype(flags)

    @cuda.jit
    def kernel(x, labels, w, ignore_index, eps, z, g, gscale, gscale_arr, gs_stride,
               den, loss_out, partials, width):
        """(1-eps) w_y (lse - x_y) + eps/C sum_j w_j (lse - x_j) + z w_y lse**2; gradient
        p_j ((1-eps) w_y + eps W/C + 2 z w_y lse) - (1-eps) w_y [j == y] - eps w_j / C
        (W = sum_j w_j). Per row: the online state (m, s, r = W, q = sum_j w_j (m - x_j)), r and
        q with label smoothing only; then lse = m + log(s) and
        sum_j w_j (lse - x_j) = r log(s) + q."""
        sm = cuda.shared.array((4, _NWARPS), F)
        sm64 = cuda.shared.array((4, _NWARPS), np.float64)
        lane, c, write_g, gsc = _row_thread(x, g, width, gscale, den, F)
        smooth = eps != 0
        keep = F(1.0) - eps
        epsc = eps / F(c)
        zero = F(0.0)
        acc = np.float64(0.0)  # this thread's share of the batch sum
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            status, y, xy, wy = _label_row(x, labels, w, row, ignore_index, True, flags, F)
            m = F(-_INF)
            s = zero
            r = zero
            q = zero
            if status == 0:
                for j in range(lane, c, width):
                    a = _weight(w, j, flags, F) if smooth else zero
                    m, s, r, q = _lse_step(m, s, r, q, _ld(x[row, j], flags & BF_X, F), a, F)
            m, s, r, q = _seg_lse(sm[0], sm[1], sm[2], sm[3], m, s, r, q, width)
            ls = _log_sum(m, s, F)
            lse = m + ls
            loss = zero
            if status == 0:
                # lse - x_y once per row in float64, as the float64 reference has it: for logits
                # beyond 1e15 its lse absorbs log(s), which (m - x_y) + log(s) in F would keep
                nll = F(np.float64(m) + np.float64(ls) - np.float64(xy))
                loss = keep * wy * nll
                if smooth:
                    loss += epsc * (r * ls + q)
                if z != 0:
                    loss += z * wy * lse * lse
            elif status == 2:
                loss = F(_NAN)
            if lane == 0 and status != 3:
                acc = _add_row_loss(loss_out, row, loss, acc, flags)
            if write_g and status == 0:
                gs = _row_scale(gsc, gscale_arr, gs_stride, row, flags, F)
                coef = keep * wy + epsc * r
                if z != 0:
                    coef += F(2.0) * z * wy * lse
                a = _softmax_scale(gs, coef, s, m, F)
                cs = gs * epsc
                gy = gs * keep * wy
                for j in range(lane, c, width):
                    val = _exp(_ld(x[row, j], flags & BF_X, F) - m) * a
                    if smooth:
                        val -= cs * _weight(w, j, flags, F)
                    if j == y:
                        val -= gy
                    g[row, j] = _st(val, flags & BF_X)
            elif write_g and status != 3:
                _fill_row(g, row, width, zero if status == 1 else F(_NAN), flags)
        _block_sum(sm64, acc, partials)

    return kernel


# ---------------------------------------------------------------------------------------------
# softmax_xent with probability targets
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _soft_target(t, w, row, j, keep, add, flags, F):
    """The smoothed, weighted target a_j = w_j ((1-eps) t_j + eps/C) of entry (row, j)."""
    tj = keep * _ld(t[row, j], flags & BF_T, F) + add
    if w.shape[0] > 0:
        tj *= _ld(w[j], flags & BF_W, F)
    return tj


def _make_softmax_xent_probs(flags):
    F = compute_dtype(flags)

    @cuda.jit
    def kernel(x, t, w, eps, z, g, gscale, gscale_arr, gs_stride, den, loss_out,
               partials, width):
        """sum_j a_j (lse - x_j) + z r lse**2 = r log(s) + q + z r lse**2 (r = sum_j a_j,
        q = sum_j a_j (m - x_j), a_j the smoothed, weighted targets); gradient
        p_j (r + 2 z r lse) - a_j."""
        sm = cuda.shared.array((4, _NWARPS), F)
        sm64 = cuda.shared.array((4, _NWARPS), np.float64)
        lane, c, write_g, gsc = _row_thread(x, g, width, gscale, den, F)
        keep = F(1.0) - eps
        add = eps / F(c)
        zero = F(0.0)
        acc = np.float64(0.0)  # this thread's share of the batch sum
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            active = row < x.shape[0]
            m = F(-_INF)
            s = zero
            r = zero
            q = zero
            if active:
                for j in range(lane, c, width):
                    a = _soft_target(t, w, row, j, keep, add, flags, F)
                    m, s, r, q = _lse_step(m, s, r, q, _ld(x[row, j], flags & BF_X, F), a, F)
            m, s, r, q = _seg_lse(sm[0], sm[1], sm[2], sm[3], m, s, r, q, width)
            if active:
                ls = _log_sum(m, s, F)
                lse = m + ls
                loss = r * ls + q
                if z != 0:
                    loss += z * r * lse * lse
                if lane == 0:
                    acc = _add_row_loss(loss_out, row, loss, acc, flags)
                if write_g:
                    gs = _row_scale(gsc, gscale_arr, gs_stride, row, flags, F)
                    coef = r
                    if z != 0:
                        coef += F(2.0) * z * r * lse
                    a = _softmax_scale(gs, coef, s, m, F)
                    for j in range(lane, c, width):
                        e = _exp(_ld(x[row, j], flags & BF_X, F) - m)
                        g[row, j] = _st(e * a - gs * _soft_target(t, w, row, j, keep, add, flags, F),
                                        flags & BF_X)
        _block_sum(sm64, acc, partials)

    return kernel


# ---------------------------------------------------------------------------------------------
# multiclass_hinge
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _merge_argmax(v1, j1, nan1, unused1, v2, j2, nan2, unused2):
    """The first maximal (value, index), index -1 meaning none, and the larger NaN flag."""
    if v2 > v1 or (v2 == v1 and j2 >= 0 and (j1 < 0 or j2 < j1)):
        v1 = v2
        j1 = j2
    return v1, j1, (nan2 if nan2 > nan1 else nan1), unused1


_seg_argmax = _make_seg_reduce(_merge_argmax, 3)


def _make_multiclass_hinge(flags):
    F = compute_dtype(flags)

    @cuda.jit
    def kernel(x, labels, w, margin, squared, crammer_singer, g, gscale, gscale_arr,
               gs_stride, den, loss_out, partials, width):
        """Weston-Watkins: w_y/C sum_{j != y} h(margin - x_y + x_j); Crammer-Singer:
        w_y h(margin + max_{j != y} x_j - x_y), the gradient to the first maximal j; h(z) =
        max(0, z), squared if asked, slope 0 at z = 0."""
        sm = cuda.shared.array((4, _NWARPS), F)
        sm_j = cuda.shared.array(_NWARPS, np.int64)
        sm64 = cuda.shared.array((4, _NWARPS), np.float64)
        lane, c, write_g, gsc = _row_thread(x, g, width, gscale, den, F)
        inv_c = F(1.0) / F(c)
        zero = F(0.0)
        half = F(0.5)
        two = F(2.0)
        acc = np.float64(0.0)  # this thread's share of the batch sum
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            status, y, xy, wy = _label_row(x, labels, w, row, 0, False, flags, F)  # no ignore_index
            gs = zero
            if status == 0:
                gs = _row_scale(gsc, gscale_arr, gs_stride, row, flags, F)
            loss = zero
            if not crammer_singer:
                # Weston-Watkins: each lane owns its classes; the true class's slope is -sum(others).
                # The terms go in halves, z_j / 2 (halving is exact), each term times w_y / C: z_j
                # itself may overflow float32 where the loss, a mean over the classes, does not
                f = wy * inv_c
                f2 = f + f
                half_zy = half * margin - half * xy
                lsum = zero  # the row's loss
                dsum = zero
                if status == 0:
                    for j in range(lane, c, width):
                        if j != y:
                            zh = half_zy + half * _ld(x[row, j], flags & BF_X, F)
                            hh = zh if not zh <= 0 else zero  # h / 2; NaN stays NaN
                            d = zero
                            if squared:
                                th = hh * f2  # h w_y / C
                                lsum += th * (hh + hh)
                                if zh > 0:
                                    d = (th + th) * gs
                            else:
                                lsum += hh * f2
                                if zh > 0:
                                    d = f * gs
                            dsum += d
                            if write_g:
                                g[row, j] = _st(d, flags & BF_X)  # j != y: x[row, y] stays readable
                lsum, dsum, _, _ = _seg_sum2(sm[0], sm[1], sm[2], sm[3], lsum, dsum, zero, zero, width)
                if status == 0:
                    loss = lsum
                    if write_g and lane == 0:
                        g[row, y] = _st(-dsum, flags & BF_X)
            else:
                # Crammer-Singer: the first maximal j != y, merged (value, index) in a fixed order
                best = F(-_INF)
                jb = -1
                nan = zero
                if status == 0:
                    for j in range(lane, c, width):
                        if j != y:
                            vj = _ld(x[row, j], flags & BF_X, F)
                            if vj > best:
                                best = vj
                                jb = j
                            if vj != vj:
                                nan = F(1.0)
                best, jb, nan, _ = _seg_argmax(sm[0], sm_j, sm[1], sm[2], best, jb, nan, nan, width)
                if status == 0:
                    zz = margin + best - xy if nan == 0 else F(_NAN)
                    if c == 1:  # one class: no j != y, no term (as PyTorch), NaN score or not
                        zz = F(-_INF)
                    h = zz if not zz <= 0 else zero
                    d = zero
                    if squared:
                        loss = wy * h * h
                        if zz > 0:
                            d = two * h * wy * gs
                    else:
                        loss = wy * h
                        if zz > 0:
                            d = wy * gs
                    if write_g:
                        for j in range(lane, c, width):
                            val = zero
                            if jb >= 0:
                                if j == jb:
                                    val = d
                                elif j == y:
                                    val = -d
                            g[row, j] = _st(val, flags & BF_X)
            if status == 2:
                loss = F(_NAN)
                if write_g:
                    _fill_row(g, row, width, F(_NAN), flags)
            if lane == 0 and status != 3:
                acc = _add_row_loss(loss_out, row, loss, acc, flags)
        _block_sum(sm64, acc, partials)

    return kernel


# ---------------------------------------------------------------------------------------------
# cosine_similarity: a row loss with float targets; the row's three sums in one reduction
# ---------------------------------------------------------------------------------------------

# written once with the CPU's, in float64 (see the module's docstring)
_cosine_similarity_row = cuda.jit(device=True)(_items.cosine_similarity)
_cosine_similarity_grad = cuda.jit(device=True)(_items.cosine_similarity_grad)


def _make_cosine_similarity(flags):
    @cuda.jit
    def kernel(x, t, g, gscale, gscale_arr, gs_stride, den, loss_out, partials, width):
        """-sum_j x_j t_j / (|x| |t|) (squared norms clamped at 1e-12); float64 sums and
        gradient: the squares of float32 values overflow float32 where the norm does not."""
        sm = cuda.shared.array((4, _NWARPS), np.float64)
        lane, c, write_g, gsc = _row_thread(x, g, width, np.float64(gscale), den, np.float64)
        acc = np.float64(0.0)  # this thread's share of the batch sum
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            active = row < x.shape[0]
            sx = np.float64(0.0)
            st = np.float64(0.0)
            s = np.float64(0.0)
            if active:
                for j in range(lane, c, width):
                    xj = _ld(x[row, j], flags & BF_X, np.float64)  # float64: see the docstring
                    tj = _ld(t[row, j], flags & BF_T, np.float64)
                    sx += xj * xj
                    st += tj * tj
                    s += xj * tj
            sx, st, s, _ = _seg_sum3(sm[0], sm[1], sm[2], sm[3], sx, st, s, s, width)
            if active:
                loss, nn, coef = _cosine_similarity_row(sx, st, s)
                if lane == 0:
                    acc = _add_row_loss(loss_out, row, loss, acc, flags)
                if write_g:
                    gs = _row_scale(gsc, gscale_arr, gs_stride, row, flags, np.float64)
                    for j in range(lane, c, width):  # the entries this lane read: out=x is safe
                        d = _cosine_similarity_grad(_ld(x[row, j], flags & BF_X, np.float64),
                                                    _ld(t[row, j], flags & BF_T, np.float64), nn, coef)
                        g[row, j] = _st(d * gs, flags & BF_X)
        _block_sum(sm, acc, partials)

    return kernel


# ---------------------------------------------------------------------------------------------
# Elementwise losses: item functions (loss, d loss / dx) in F, one grid-stride kernel each
# ---------------------------------------------------------------------------------------------


def _make_items(F):
    """name -> the item device function (x, t, p0, p1) -> (loss, dloss/dx) in precision F."""

    @cuda.jit(device=True)
    def like(v, x):
        return F(v)

    @cuda.jit(device=True)
    def power(m, gamma):
        return m ** F(gamma)

    @cuda.jit(device=True)
    def sigmoid_bce(x, t, w, pw):
        """w [(1-t) x + (1 + (pw-1) t) log(1 + exp(-x))], stable for any x; NaN at x = -inf
        (the formula's, as PyTorch and the CPU backends)."""
        one = F(1.0)
        lw = one + (pw - one) * t
        if x >= 0:
            e = _exp(-x)
            loss = (one - t) * x + lw * _log1p(e)
            sig = one / (one + e)
        else:
            e = _exp(x)  # NaN lands here: NaN out
            loss = -pw * t * x + lw * _log1p(e)
            if x == -_INF:
                loss = (one - t) * x - lw * x
            sig = e / (one + e)
        return w * loss, w * (lw * sig - pw * t)

    @cuda.jit(device=True)
    def kl_div(x, t, log_target, unused):
        """t (log t - x) (0 where t == 0 unless x is NaN, NaN where t < 0), gradient -t; or
        exp(t) (t - x), gradient -exp(t), with ``log_target``."""
        if log_target != 0.0:
            et = _exp(t)
            return et * (t - x), -et
        if t == 0:
            return (F(0.0) if x == x else x), -t  # no mass, no loss (not 0 * inf)
        if t > 0:
            return t * (_log(t) - x), -t
        return F(_NAN), -t

    items = {"sigmoid_bce": sigmoid_bce, "kl_div": kl_div}
    plain = _items.arithmetic(like)
    newer = _items.with_math(_exp, _exp, _log, _log1p, _tanh, power, like)
    for name, f in zip(("huber", "hinge", "mse", "mae", "smooth_l1", "log_cosh", "msle", "poisson_nll",
                        "sigmoid_focal"), plain + newer):
        items[name] = cuda.jit(device=True)(f)
    return items


_ITEMS = {np.float32: _make_items(np.float32), np.float64: _make_items(np.float64)}


@cuda.jit(device=True)
def _same_params(p0, p1, i, flags, F):
    """The item function's two float parameters, the same for every item."""
    return p0, p1


@cuda.jit(device=True)
def _bce_weights(w, pw, i, flags, F):
    """(weight, pos_weight) of flat item i in F: arrays broadcast by i % size, 1 when empty."""
    wi = _ld(w[i % w.shape[0]], flags & BF_W, F) if w.shape[0] > 0 else F(1.0)
    pwi = _ld(pw[i % pw.shape[0]], flags & BF_P, F) if pw.shape[0] > 0 else F(1.0)
    return wi, pwi


def _elementwise(name, params=_same_params):
    """The kernel factory (flags -> grid-stride kernel) of item ``name``; ``params(p0, p1, i,
    flags, F)`` gives item i's two parameters."""
    def make(flags):
        F = compute_dtype(flags)
        item = _ITEMS[F][name]

        @cuda.jit
        def kernel(x, t, p0, p1, g, gscale, gscale_arr, gs_stride, loss_out, partials):
            sm = cuda.shared.array((4, _NWARPS), np.float64)
            write_g = g.shape[0] > 0
            has_gscale_arr = gscale_arr.shape[0] > 0
            has_lo = loss_out.shape[0] > 0
            acc = np.float64(0.0)  # this thread's share of the batch sum
            for i in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, x.shape[0], cuda.gridDim.x * TPB):
                a, b = params(p0, p1, i, flags, F)
                loss, d = item(_ld(x[i], flags & BF_X, F), _ld(t[i], flags & BF_T, F), a, b)
                if has_lo:
                    loss_out[i] = _st(loss, flags & BF_X)
                if write_g:
                    gsi = gscale * _ld(gscale_arr[i * gs_stride], flags & BF_G, F) if has_gscale_arr else gscale
                    g[i] = _st(d * gsi, flags & BF_X)
                acc += np.float64(loss)
            _block_sum(sm, acc, partials)

        return kernel

    return make


_ELEMENTWISE_FACTORIES = {
    "sigmoid_bce": _elementwise("sigmoid_bce", _bce_weights),  # p0, p1: weight arrays
    **{name: _elementwise(name) for name in ("huber", "hinge", "mse", "mae", "kl_div", "smooth_l1", "log_cosh",
                                             "msle", "poisson_nll", "sigmoid_focal")},
    # poisson_nll: p0 = eps, p1 = log_input + 2 full
}
ELEMENTWISE = tuple(name for name in _ELEMENTWISE_FACTORIES if name != "sigmoid_bce")  # (x, t, p0, p1) floats


# ---------------------------------------------------------------------------------------------
# Kernels by name and flags
# ---------------------------------------------------------------------------------------------

_FACTORIES = {"finish": _make_finish, "label_weight": _make_label_weight, "softmax_xent": _make_softmax_xent,
              "softmax_xent_probs": _make_softmax_xent_probs, "multiclass_hinge": _make_multiclass_hinge,
              "cosine_similarity": _make_cosine_similarity, **_ELEMENTWISE_FACTORIES}
_VARIANTS = {}


def kernel(name, flags):
    """Kernel ``name`` (a key of ``_FACTORIES``) for ``flags``: the arrays that hold bfloat16
    bits (``BF_*``) and the precision (``F64``). The flags are constants of each kernel, not
    arguments: the compiler drops the branches of arrays that are not bfloat16, and a variant
    is made (and compiled) only when a call first asks for it; a race makes it twice,
    harmlessly."""
    k = _VARIANTS.get((name, flags))
    if k is None:
        k = _VARIANTS[(name, flags)] = _FACTORIES[name](flags)
    return k
