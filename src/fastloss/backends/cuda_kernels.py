"""The CUDA kernels of the ``cuda`` backend (the same formulas as ``fastloss.reference`` and the
CPU backends), and the launch geometry they are written for.

* Row losses (``softmax_xent`` with class indices or probabilities, ``multiclass_hinge``,
  ``cosine_similarity``): a *segment* of ``width`` threads per row (``width`` a power of two
  fixed by C alone: the next power of two of C up to a warp for small C, a warp per row up to
  C = 2048, the whole block above), ``TPB // width`` rows per block, blocks striding over the
  row groups. Softmax rows
  are read once for the maximum and the sum of exponentials together (online softmax: each
  thread keeps ``(m, s)`` and rescales ``s`` when ``m`` grows; the segment merges the pairs in a
  shared-memory tree) and the gradient is written in the same launch, each thread writing only
  the entries it read itself and only after the segment's barrier, so ``out=x`` is safe.
* Elementwise losses: grid-stride loops, one item function per loss (``@cuda.jit(device=True)``);
  the arithmetic ones and the newer ones are written once with the CPU backend's (``_items``).
* All arithmetic is float64 inside the kernels (float32 inputs are widened on load); gradients
  are stored in the input dtype.
* Half precision: float16 arrays are native (numba.cuda's fp16: loads widen exactly, a float64
  store rounds once, nearest-even, +-inf beyond the range, subnormals kept). bfloat16 arrays
  arrive as their uint16 bits, and ``bf`` says which arrays hold such bits (``BF_X``: ``x`` and
  every output, ``grad``, ``loss_out`` and the result; ``BF_T``: the targets; ``BF_W``:
  ``weight``; ``BF_P``: ``pos_weight``; ``BF_G``: ``gscale_arr``): ``_ld`` widens bits exactly
  (a bfloat16 is the top half of a float32), ``_st`` rounds a float64 once to bfloat16 bits.
  The flag, not the uint16 dtype, decides: integer arrays stay integers. ``bf`` is a constant
  of each kernel, not an argument: ``kernel(name, bf)`` makes the variant (each ``_make_*(bf)``
  below is such a factory); the module's ``*_kernel`` names are the variants for ``bf`` = 0.
* A class label outside ``[0, C)`` that is not ``ignore_index`` is never used as an index: that
  row's loss and its whole gradient row are NaN, and the row does not count in the mean's
  denominator. ``hinge`` labels are not checked: a label ``> 0`` is +1, anything else -1.

Deterministic batch reduction: every thread adds its items in a fixed order, each block adds its
threads in a fixed shared-memory tree (halving strides) and writes one float64 partial sum; a
second, single-block kernel (``finish_kernel``) adds the partials in the same fixed way and
writes the 1-element result (dividing by the mean's denominator there). No floating-point
atomics; the grid size depends on the shape only, so repeats are bitwise identical. The
denominator of a label-weighted mean (the sum of ``weight[y]`` over rows not ignored) is reduced
on the device the same way (``label_weight_kernel``) into a 1-element float64 array that the
gradient kernels read, so ``grad_output / denominator`` is applied without a host round trip.

Under ``NUMBA_ENABLE_CUDASIM=1`` (``SIM``) the same kernels run in Numba's CUDA simulator, with
8-thread blocks and at most 2 blocks per grid to keep it fast; the code path is the same. Without
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
_MAX_GRID = 2 if SIM else 1024  # blocks per grid at most; kernels stride over the rest
_WARP = 32
_BLOCK_PER_ROW_FROM = 2048  # C above this: the whole block works on one row

# The simulator runs kernels as Python: math.exp overflow and 1/0 raise there, NumPy's do not.
if SIM:
    _exp, _log, _log1p, _tanh = np.exp, np.log, np.log1p, np.tanh
else:
    _exp, _log, _log1p, _tanh = math.exp, math.log, math.log1p, math.tanh
_INF = math.inf
_NAN = math.nan


def row_width(n_classes):
    """Threads per row: a power of two that depends on C only."""
    if n_classes > _BLOCK_PER_ROW_FROM:
        return TPB
    w = 1
    while w < n_classes and w < _WARP:
        w *= 2
    return min(w, TPB)


def grid(n_work):
    return max(1, min(n_work, _MAX_GRID))


# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


# which arrays hold bfloat16 bits (the ``bf`` of a kernel variant, a sum of these)
BF_X, BF_T, BF_W, BF_P, BF_G = 1, 2, 4, 8, 16


@cuda.jit(device=True)
def _ld(v, is_bf):
    """An array element as float64; ``is_bf``: ``v`` is bfloat16 bits, widened exactly (they are
    the top half of a float32's)."""
    if is_bf:
        return np.float64(np.uint32(np.uint32(v) << np.uint32(16)).view(np.float32))
    return np.float64(v)


@cuda.jit(device=True)
def _bf16_bits(v):
    """float64 ``v`` rounded once to bfloat16 (nearest-even, beyond the range +-inf, NaN a quiet
    NaN, subnormals kept), as its bits. float64 -> float32 -> bfloat16 would round twice, so the
    first step rounds to odd (truncate, then set the last bit when inexact): with 16 spare bits
    the second, nearest-even, rounding then gives exactly the once-rounded result."""
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
    """float64 ``v`` as an output array stores it: bfloat16 bits when ``is_bf``; else as is (the
    store itself rounds once to the array's float dtype, float16 included). Numba types the
    result float64 (the bits exactly), and the store into the uint16 array takes them back."""
    if is_bf:
        return _bf16_bits(v)
    return v


@cuda.jit(device=True)
def _tree_sum(sm, tid, lane, width):
    """sm[seg] = sum of sm[seg:seg + width] in a fixed halving tree (seg = tid - lane).
    Every thread of the block must call it (it holds barriers)."""
    cuda.syncthreads()
    st = width // 2
    while st > 0:
        if lane < st:
            sm[tid] += sm[tid + st]
        cuda.syncthreads()
        st //= 2


@cuda.jit(device=True)
def _merge_lse(m1, s1, m2, s2):
    """(m, s) of two online-softmax states: s = sum exp(x - m) over both."""
    m = m1 if m1 >= m2 else m2
    t1 = s1 * _exp(m1 - m) if s1 != 0.0 else s1
    t2 = s2 * _exp(m2 - m) if s2 != 0.0 else s2
    return m, t1 + t2


@cuda.jit(device=True)
def _lse_of(m, s):
    """log(sum exp) from the merged state; a +inf logit gives NaN (as PyTorch), all -inf -inf."""
    if m == _INF:
        return _NAN
    return m + _log(s)


@cuda.jit(device=True)
def _block_partial(sm, acc, partials):
    """Write this block's fixed-order sum of every thread's ``acc`` to partials[blockIdx]."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()  # sm may still be read by the caller's last row group
    sm[tid] = acc
    _tree_sum(sm, tid, tid, TPB)
    if tid == 0:
        partials[cuda.blockIdx.x] = sm[0]


@cuda.jit(device=True)
def _item_scale(gscale, gscale_arr, gs_stride, i, den, bf):
    gs = gscale
    if gscale_arr.shape[0] > 0:
        gs = gs * _ld(gscale_arr[i * gs_stride], bf & BF_G)
    if den.shape[0] > 0:
        gs = gs / den[0]
    return gs


@cuda.jit(device=True)
def _weight(w, j, bf):
    """weight[j] as float64, 1 without weights."""
    return _ld(w[j], bf & BF_W) if w.shape[0] > 0 else np.float64(1.0)


# ---------------------------------------------------------------------------------------------
# Row-kernel helpers: a segment of ``width`` lanes per row
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _row_groups(n, width):
    """How many groups of ``TPB // width`` rows cover ``n`` rows."""
    rows_per_block = TPB // width
    return (n + rows_per_block - 1) // rows_per_block


@cuda.jit(device=True)
def _row_thread(x, g, width):
    """(lane, classes, write_g) of this thread: its lane among the ``width`` threads of a row, the
    row length, and whether a gradient is written (an empty ``g`` means loss only)."""
    return cuda.threadIdx.x % width, x.shape[1], g.shape[0] > 0


@cuda.jit(device=True)
def _row_of(grp, width):
    """This thread's row in row group ``grp`` (may be past the last row)."""
    return grp * (TPB // width) + cuda.threadIdx.x // width


@cuda.jit(device=True)
def _label_row(x, labels, w, row, ignore_index, can_ignore, bf):
    """(status, y, x[row, y], weight[y]) of a class-label row; status 0: compute, 1: ignored,
    2: bad label, 3: no row. x[row, y] is read here, before any lane writes the row (out=x)."""
    status = 3
    y = 0
    xy = np.float64(0.0)
    wy = np.float64(1.0)
    if row < x.shape[0]:
        yl = labels[row]
        if can_ignore and yl == ignore_index:
            status = 1
        elif yl < 0 or yl >= x.shape[1]:
            status = 2
        else:
            status = 0
            y = yl
            xy = _ld(x[row, y], bf & BF_X)
            wy = _weight(w, y, bf)
    return status, y, xy, wy


@cuda.jit(device=True)
def _lse_step(m, s, v):
    """Online softmax: the state (m, s) after one more logit v."""
    if v > m:
        return v, s * _exp(m - v) + 1.0
    if v != -_INF:
        return m, s + _exp(v - m)  # NaN lands here: s becomes NaN
    return m, s


def _make_seg_reduce(merge):
    """``seg_reduce(sm_a, sm_b, sm_c, sm_d, a, b, c, d, width)``: every lane's (a, b, c, d)
    folded over its segment with ``merge(sm_a, sm_b, sm_c, sm_d, dst, src)`` in one fixed halving
    tree; every lane gets the segment's result. Every thread of the block must call it (it holds
    barriers)."""
    @cuda.jit(device=True)
    def seg_reduce(sm_a, sm_b, sm_c, sm_d, a, b, c, d, width):
        tid = cuda.threadIdx.x
        lane = tid % width
        sm_a[tid] = a
        sm_b[tid] = b
        sm_c[tid] = c
        sm_d[tid] = d
        cuda.syncthreads()
        st = width // 2
        while st > 0:
            if lane < st:
                merge(sm_a, sm_b, sm_c, sm_d, tid, tid + st)
            cuda.syncthreads()
            st //= 2
        seg = tid - lane
        return sm_a[seg], sm_b[seg], sm_c[seg], sm_d[seg]

    return seg_reduce


@cuda.jit(device=True)
def _merge_lse_sums(sm_m, sm_s, sm_a, sm_b, i, k):
    """Slot k into slot i: (m, s) as online-softmax states, a and b summed."""
    mm, ss = _merge_lse(sm_m[i], sm_s[i], sm_m[k], sm_s[k])
    sm_m[i] = mm
    sm_s[i] = ss
    sm_a[i] += sm_a[k]
    sm_b[i] += sm_b[k]


@cuda.jit(device=True)
def _merge_sums(sm_a, sm_b, unused_c, unused_d, i, k):
    """Slot k into slot i: a and b summed (c and d are not used)."""
    sm_a[i] += sm_a[k]
    sm_b[i] += sm_b[k]


@cuda.jit(device=True)
def _merge_argmax(sm_v, sm_j, sm_nan, unused_d, i, k):
    """Slot k into slot i: the first maximal (value, index), index -1 meaning none; the NaN flag
    the larger of the two."""
    v2 = sm_v[k]
    j2 = sm_j[k]
    v1 = sm_v[i]
    j1 = sm_j[i]
    if v2 > v1 or (v2 == v1 and j2 >= 0 and (j1 < 0 or j2 < j1)):
        sm_v[i] = v2
        sm_j[i] = j2
    if sm_nan[k] > sm_nan[i]:
        sm_nan[i] = sm_nan[k]


_seg_lse = _make_seg_reduce(_merge_lse_sums)
_seg_sums = _make_seg_reduce(_merge_sums)
_seg_argmax = _make_seg_reduce(_merge_argmax)


@cuda.jit(device=True)
def _softmax_scale(gs, coef, s, m):
    """gs * coef / s, the factor of exp(x_j - m) in the gradient; NaN for a +inf logit."""
    if m == _INF:
        return _NAN
    return gs * coef / s


@cuda.jit(device=True)
def _fill_row(g, row, width, value, bf):
    """This lane's entries of gradient row ``row`` set to ``value``."""
    v = _st(value, bf & BF_X)
    for j in range(cuda.threadIdx.x % width, g.shape[1], width):
        g[row, j] = v


@cuda.jit(device=True)
def _add_row_loss(loss_out, row, loss, acc, bf):
    """acc + loss, storing loss_out[row] when per-row losses are asked for (the sum takes the
    float64 loss, not the stored, rounded one)."""
    if loss_out.shape[0] > 0:
        loss_out[row] = _st(loss, bf & BF_X)
    return acc + loss


# ---------------------------------------------------------------------------------------------
# Final reduction and the label pre-pass
# ---------------------------------------------------------------------------------------------


def _make_finish(bf):
    @cuda.jit
    def kernel(partials, den, den_host, result):
        """result[0] = (sum of partials, fixed order) / denominator; one block."""
        sm = cuda.shared.array(TPB, np.float64)
        tid = cuda.threadIdx.x
        acc = np.float64(0.0)
        for b in range(tid, partials.shape[0], TPB):
            acc += partials[b]
        sm[tid] = acc
        _tree_sum(sm, tid, tid, TPB)
        if tid == 0:
            d = den[0] if den.shape[0] > 0 else den_host
            result[0] = _st(sm[0] / d, bf & BF_X)

    return kernel


finish_kernel = _make_finish(0)


def _make_label_weight(bf):
    @cuda.jit
    def kernel(labels, n_classes, ignore_index, w, partials):
        """Partial sums of weight[y] (or 1) over labels that are not ignore_index and in range."""
        sm = cuda.shared.array(TPB, np.float64)
        acc = np.float64(0.0)
        for i in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, labels.shape[0], cuda.gridDim.x * TPB):
            y = labels[i]
            if y != ignore_index and y >= 0 and y < n_classes:
                acc += _weight(w, y, bf)
        _block_partial(sm, acc, partials)

    return kernel


label_weight_kernel = _make_label_weight(0)


# ---------------------------------------------------------------------------------------------
# softmax_xent with class indices
# ---------------------------------------------------------------------------------------------


def _make_softmax_xent(bf):
    @cuda.jit
    def kernel(x, labels, w, ignore_index, eps, z, g, gscale, gscale_arr, gs_stride,
               den, loss_out, partials, width):
        sm = cuda.shared.array((4, TPB), np.float64)  # per thread: m, s, sum_j w_j x_j, sum_j w_j
        lane, c, write_g = _row_thread(x, g, width)
        inv_c = 1.0 / c
        has_w = w.shape[0] > 0
        smooth_w = eps != 0.0 and has_w  # sum_j w_j is then reduced with the row (no host sync)
        acc = np.float64(0.0)
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            status, y, xy, wy = _label_row(x, labels, w, row, ignore_index, True, bf)
            # one pass: online max / sum of exponentials, and sum_j w_j x_j for label smoothing
            m = -_INF
            s = np.float64(0.0)
            sx = np.float64(0.0)
            sw = np.float64(0.0)
            if status == 0:
                for j in range(lane, c, width):
                    vj = _ld(x[row, j], bf & BF_X)
                    m, s = _lse_step(m, s, vj)
                    if eps != 0.0:
                        wj = _weight(w, j, bf)
                        sw += wj
                        if wj != 0.0:
                            sx += wj * vj
            m, s, sx, sw = _seg_lse(sm[0], sm[1], sm[2], sm[3], m, s, sx, sw, width)
            w_sum = sw if smooth_w else np.float64(c)
            loss = np.float64(0.0)
            lse = np.float64(0.0)
            if status == 0:
                lse = _lse_of(m, s)
                loss = (1.0 - eps) * wy * (lse - xy)
                if eps != 0.0:
                    loss += eps * inv_c * (w_sum * lse - sx)
                if z != 0.0:
                    loss += z * wy * lse * lse
            elif status == 2:
                loss = _NAN
            if lane == 0 and status != 3:
                acc = _add_row_loss(loss_out, row, loss, acc, bf)
            if write_g and status == 0:
                gs = _item_scale(gscale, gscale_arr, gs_stride, row, den, bf)
                coef = (1.0 - eps) * wy + eps * w_sum * inv_c
                if z != 0.0:
                    coef += 2.0 * z * wy * lse
                a = _softmax_scale(gs, coef, s, m)
                cs = gs * eps * inv_c
                for j in range(lane, c, width):
                    val = _exp(_ld(x[row, j], bf & BF_X) - m) * a - cs * _weight(w, j, bf)
                    if j == y:
                        val -= gs * (1.0 - eps) * wy
                    g[row, j] = _st(val, bf & BF_X)
            elif write_g and status != 3:
                _fill_row(g, row, width, 0.0 if status == 1 else _NAN, bf)
            cuda.syncthreads()  # the segment's leader slot is rewritten by the next group
        _block_partial(sm[0], acc, partials)

    return kernel


softmax_xent_kernel = _make_softmax_xent(0)


# ---------------------------------------------------------------------------------------------
# softmax_xent with probability targets
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _soft_target(t, w, row, j, keep, add, bf):
    """The smoothed, weighted target of entry (row, j)."""
    tj = keep * _ld(t[row, j], bf & BF_T) + add
    if w.shape[0] > 0:
        tj *= _ld(w[j], bf & BF_W)
    return tj


def _make_softmax_xent_probs(bf):
    @cuda.jit
    def kernel(x, t, w, eps, z, g, gscale, gscale_arr, gs_stride, den, loss_out,
               partials, width):
        sm = cuda.shared.array((4, TPB), np.float64)  # per thread: m, s, r, q
        lane, c, write_g = _row_thread(x, g, width)
        keep = 1.0 - eps
        add = eps * (1.0 / c)
        acc = np.float64(0.0)
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            active = row < x.shape[0]
            m = -_INF
            s = np.float64(0.0)
            r = np.float64(0.0)  # sum_j t_j
            q = np.float64(0.0)  # sum_j t_j x_j
            if active:
                for j in range(lane, c, width):
                    vj = _ld(x[row, j], bf & BF_X)
                    tj = _soft_target(t, w, row, j, keep, add, bf)
                    r += tj
                    if tj != 0.0:
                        q += tj * vj
                    m, s = _lse_step(m, s, vj)
            m, s, r, q = _seg_lse(sm[0], sm[1], sm[2], sm[3], m, s, r, q, width)
            if active:
                lse = _lse_of(m, s)
                loss = r * lse - q
                if z != 0.0:
                    loss += z * r * lse * lse
                if lane == 0:
                    acc = _add_row_loss(loss_out, row, loss, acc, bf)
                if write_g:
                    gs = _item_scale(gscale, gscale_arr, gs_stride, row, den, bf)
                    coef = r
                    if z != 0.0:
                        coef += 2.0 * z * r * lse
                    a = _softmax_scale(gs, coef, s, m)
                    for j in range(lane, c, width):
                        e = _exp(_ld(x[row, j], bf & BF_X) - m)
                        g[row, j] = _st(e * a - gs * _soft_target(t, w, row, j, keep, add, bf), bf & BF_X)
            cuda.syncthreads()
        _block_partial(sm[0], acc, partials)

    return kernel


softmax_xent_probs_kernel = _make_softmax_xent_probs(0)


# ---------------------------------------------------------------------------------------------
# multiclass_hinge
# ---------------------------------------------------------------------------------------------


def _make_multiclass_hinge(bf):
    @cuda.jit
    def kernel(x, labels, w, margin, squared, crammer_singer, g, gscale, gscale_arr,
               gs_stride, den, loss_out, partials, width):
        sm_a = cuda.shared.array(TPB, np.float64)
        sm_b = cuda.shared.array(TPB, np.float64)
        sm_j = cuda.shared.array(TPB, np.int64)  # also the unused slots of the two reductions
        lane, c, write_g = _row_thread(x, g, width)
        acc = np.float64(0.0)
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            status, y, xy, wy = _label_row(x, labels, w, row, 0, False, bf)  # no ignore_index
            gs = np.float64(0.0)
            if status == 0:
                gs = _item_scale(gscale, gscale_arr, gs_stride, row, den, bf)
            loss = np.float64(0.0)
            if not crammer_singer:
                # Weston-Watkins: each lane owns its classes; the true class's slope is -sum(others)
                f = wy * (1.0 / c)
                lsum = np.float64(0.0)
                dsum = np.float64(0.0)
                if status == 0:
                    for j in range(lane, c, width):
                        if j != y:
                            zj = margin - xy + _ld(x[row, j], bf & BF_X)
                            h = zj if not zj <= 0.0 else 0.0  # NaN stays NaN
                            d = 0.0
                            if squared:
                                lsum += h * h
                                if zj > 0.0:
                                    d = 2.0 * h * f * gs
                            else:
                                lsum += h
                                if zj > 0.0:
                                    d = f * gs
                            dsum += d
                            if write_g:
                                g[row, j] = _st(d, bf & BF_X)  # j != y: x[row, y] stays readable
                lsum, dsum, _, _ = _seg_sums(sm_a, sm_b, sm_j, sm_j, lsum, dsum, 0, 0, width)
                if status == 0:
                    loss = lsum * f
                    if write_g and lane == 0:
                        g[row, y] = _st(-dsum, bf & BF_X)
            else:
                # Crammer-Singer: the first maximal j != y, merged (value, index) in a fixed tree
                best = -_INF
                jb = -1
                nan = 0.0
                if status == 0:
                    for j in range(lane, c, width):
                        if j != y:
                            vj = _ld(x[row, j], bf & BF_X)
                            if vj > best:
                                best = vj
                                jb = j
                            if vj != vj:
                                nan = 1.0
                best, jb, nan, _ = _seg_argmax(sm_a, sm_j, sm_b, sm_b, best, jb, nan, nan, width)
                if status == 0:
                    zz = margin + best - xy if nan == 0.0 else _NAN
                    if c == 1:  # one class: no j != y, no term (as PyTorch), NaN score or not
                        zz = -_INF
                    h = zz if not zz <= 0.0 else 0.0
                    d = 0.0
                    if squared:
                        loss = wy * h * h
                        if zz > 0.0:
                            d = 2.0 * h * wy * gs
                    else:
                        loss = wy * h
                        if zz > 0.0:
                            d = wy * gs
                    if write_g:
                        for j in range(lane, c, width):
                            val = 0.0
                            if jb >= 0:
                                if j == jb:
                                    val = d
                                elif j == y:
                                    val = -d
                            g[row, j] = _st(val, bf & BF_X)
            if status == 2:
                loss = _NAN
                if write_g:
                    _fill_row(g, row, width, _NAN, bf)
            if lane == 0 and status != 3:
                acc = _add_row_loss(loss_out, row, loss, acc, bf)
            cuda.syncthreads()
        _block_partial(sm_a, acc, partials)

    return kernel


multiclass_hinge_kernel = _make_multiclass_hinge(0)


# ---------------------------------------------------------------------------------------------
# Elementwise losses: item functions (loss, d loss / dx) in float64, one grid-stride kernel each
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _sigmoid_bce_item(x, t, w, pw):
    """w [(1-t) x + (1 + (pw-1) t) log(1 + exp(-x))], stable for any x."""
    lw = 1.0 + (pw - 1.0) * t
    if x >= 0.0:
        e = _exp(-x)
        loss = (1.0 - t) * x + lw * _log1p(e)
        sig = 1.0 / (1.0 + e)
    else:
        e = _exp(x)  # NaN lands here: NaN out
        loss = -pw * t * x + lw * _log1p(e)
        if x == -_INF:  # the formula's NaN there, as PyTorch and the CPU backends
            loss = (1.0 - t) * x - lw * x
        sig = e / (1.0 + e)
    return w * loss, w * (lw * sig - pw * t)


# the arithmetic items, written once with the CPU backend's (_items)
_huber_item, _hinge_item, _mse_item, _mae_item = (cuda.jit(device=True)(f) for f in (
    _items.huber, _items.hinge, _items.mse, _items.mae))


@cuda.jit(device=True)
def _kl_div_item(x, t, log_target, unused):
    if log_target != 0.0:
        et = _exp(t)
        return et * (t - x), -et
    if t == 0.0:
        return (0.0 if x == x else x), -t  # no mass, no loss (not 0 * inf); a NaN x stays NaN
    if t > 0.0:
        return t * (_log(t) - x), -t
    return _NAN, -t


@cuda.jit(device=True)
def _f64(v, x):
    """The kit's ``like``: every constant in float64, as all arithmetic here."""
    return np.float64(v)


@cuda.jit(device=True)
def _pow(m, g):
    return m ** g


# the newer items, written once with the CPU backend's (_items.with_math), over float64 libm
(_smooth_l1_item, _log_cosh_item, _msle_item, _poisson_nll_item,
 _sigmoid_focal_item) = (cuda.jit(device=True)(f) for f in _items.with_math(
     _exp, _exp, _log, _log1p, _tanh, _pow, _f64))


@cuda.jit(device=True)
def _same_params(p0, p1, i, bf):
    """The item function's two float parameters, the same for every item."""
    return p0, p1


@cuda.jit(device=True)
def _bce_weights(w, pw, i, bf):
    """(weight, pos_weight) of flat item i: arrays broadcast by i % size, 1 when empty."""
    wi = _ld(w[i % w.shape[0]], bf & BF_W) if w.shape[0] > 0 else np.float64(1.0)
    pwi = _ld(pw[i % pw.shape[0]], bf & BF_P) if pw.shape[0] > 0 else np.float64(1.0)
    return wi, pwi


def _elementwise(item, params=_same_params):
    """The kernel factory (``bf`` -> grid-stride kernel) of ``item``; ``params(p0, p1, i, bf)``
    gives item i's two parameters."""
    return lambda bf: _make_elementwise(item, params, bf)


def _make_elementwise(item, params, bf):
    @cuda.jit
    def kernel(x, t, p0, p1, g, gscale, gscale_arr, gs_stride, loss_out, partials):
        sm = cuda.shared.array(TPB, np.float64)
        write_g = g.shape[0] > 0
        has_gscale_arr = gscale_arr.shape[0] > 0
        has_lo = loss_out.shape[0] > 0
        acc = np.float64(0.0)
        for i in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, x.shape[0], cuda.gridDim.x * TPB):
            a, b = params(p0, p1, i, bf)
            loss, d = item(_ld(x[i], bf & BF_X), _ld(t[i], bf & BF_T), a, b)
            if has_lo:
                loss_out[i] = _st(loss, bf & BF_X)
            if write_g:
                gs = gscale * _ld(gscale_arr[i * gs_stride], bf & BF_G) if has_gscale_arr else gscale
                g[i] = _st(d * gs, bf & BF_X)
            acc += loss
        _block_partial(sm, acc, partials)

    return kernel


_ELEMENTWISE_FACTORIES = {
    "sigmoid_bce": _elementwise(_sigmoid_bce_item, _bce_weights),  # p0, p1: weight arrays
    "huber": _elementwise(_huber_item),
    "hinge": _elementwise(_hinge_item),
    "mse": _elementwise(_mse_item),
    "mae": _elementwise(_mae_item),
    "kl_div": _elementwise(_kl_div_item),
    "smooth_l1": _elementwise(_smooth_l1_item),
    "log_cosh": _elementwise(_log_cosh_item),
    "msle": _elementwise(_msle_item),
    "poisson_nll": _elementwise(_poisson_nll_item),  # p0: eps, p1: log_input + 2 full
    "sigmoid_focal": _elementwise(_sigmoid_focal_item),
}
sigmoid_bce_kernel = _ELEMENTWISE_FACTORIES["sigmoid_bce"](0)
ELEMENTWISE = {name: make(0) for name, make in _ELEMENTWISE_FACTORIES.items() if name != "sigmoid_bce"}


# ---------------------------------------------------------------------------------------------
# cosine_similarity: a row loss with float targets; the row's three sums in one segment reduction
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _merge_sums3(sm_a, sm_b, sm_c, unused_d, i, k):
    """Slot k into slot i: a, b and c summed (d is not used)."""
    sm_a[i] += sm_a[k]
    sm_b[i] += sm_b[k]
    sm_c[i] += sm_c[k]


_seg_sums3 = _make_seg_reduce(_merge_sums3)
# written once with the CPU's
_cosine_similarity_row = cuda.jit(device=True)(_items.cosine_similarity)
_cosine_similarity_grad = cuda.jit(device=True)(_items.cosine_similarity_grad)


def _make_cosine_similarity(bf):
    @cuda.jit
    def kernel(x, t, g, gscale, gscale_arr, gs_stride, den, loss_out, partials, width):
        sm = cuda.shared.array((4, TPB), np.float64)  # per thread: sum x**2, sum t**2, sum x t
        lane, c, write_g = _row_thread(x, g, width)
        acc = np.float64(0.0)
        for grp in range(cuda.blockIdx.x, _row_groups(x.shape[0], width), cuda.gridDim.x):
            row = _row_of(grp, width)
            active = row < x.shape[0]
            sx = np.float64(0.0)
            st = np.float64(0.0)
            s = np.float64(0.0)
            if active:
                for j in range(lane, c, width):
                    xj = _ld(x[row, j], bf & BF_X)
                    tj = _ld(t[row, j], bf & BF_T)
                    sx += xj * xj
                    st += tj * tj
                    s += xj * tj
            sx, st, s, _ = _seg_sums3(sm[0], sm[1], sm[2], sm[3], sx, st, s, np.float64(0.0), width)
            if active:
                loss, nn, coef = _cosine_similarity_row(sx, st, s)
                if lane == 0:
                    acc = _add_row_loss(loss_out, row, loss, acc, bf)
                if write_g:
                    gs = _item_scale(gscale, gscale_arr, gs_stride, row, den, bf)
                    for j in range(lane, c, width):  # the entries this lane read: out=x is safe
                        d = _cosine_similarity_grad(_ld(x[row, j], bf & BF_X), _ld(t[row, j], bf & BF_T), nn, coef)
                        g[row, j] = _st(d * gs, bf & BF_X)
            cuda.syncthreads()  # the segment's leader slots are rewritten by the next group
        _block_partial(sm[0], acc, partials)

    return kernel


cosine_similarity_kernel = _make_cosine_similarity(0)


# ---------------------------------------------------------------------------------------------
# Kernels by name and bfloat16 flags
# ---------------------------------------------------------------------------------------------

_FACTORIES = {"finish": _make_finish, "label_weight": _make_label_weight, "softmax_xent": _make_softmax_xent,
              "softmax_xent_probs": _make_softmax_xent_probs, "multiclass_hinge": _make_multiclass_hinge,
              "cosine_similarity": _make_cosine_similarity, **_ELEMENTWISE_FACTORIES}
_VARIANTS = {("finish", 0): finish_kernel, ("label_weight", 0): label_weight_kernel,
             ("softmax_xent", 0): softmax_xent_kernel, ("softmax_xent_probs", 0): softmax_xent_probs_kernel,
             ("multiclass_hinge", 0): multiclass_hinge_kernel, ("cosine_similarity", 0): cosine_similarity_kernel,
             ("sigmoid_bce", 0): sigmoid_bce_kernel, **{(name, 0): k for name, k in ELEMENTWISE.items()}}


def kernel(name, bf):
    """Kernel ``name`` (a key of ``_FACTORIES``) for the arrays that ``bf`` flags as bfloat16
    bits. ``bf`` is a constant of each kernel, not an argument: the kernels keep the signatures
    of their float variant (``bf`` = 0, the module's ``*_kernel`` names), the compiler drops the
    branches of arrays that are not bfloat16, and a variant is made (and compiled) only when a
    call first asks for it; a race makes it twice, harmlessly."""
    k = _VARIANTS.get((name, bf))
    if k is None:
        k = _VARIANTS[(name, bf)] = _FACTORIES[name](bf)
    return k
