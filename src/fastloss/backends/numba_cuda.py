"""Numba CUDA backend: fused loss + gradient kernels that keep everything on the device.

The one entry point is :func:`run` (``fastloss._dispatch`` calls it for ``backend="cuda"``). It
takes anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors) without a copy, launches on the caller's current stream (CuPy's / PyTorch's current
stream where that framework is already imported, else the array's own Numba stream or the default
stream), allocates its results with the caller's framework and returns them in the caller's array
type, with no host synchronisation. NumPy inputs are validated on the host exactly as on the CPU
backends, copied to the device, computed there and returned as NumPy.

Kernels (the same formulas as ``fastloss.reference`` and the CPU backends):

* Row losses (``softmax_xent`` with class indices or probabilities, ``multiclass_hinge``): a
  *segment* of ``width`` threads per row (``width`` a power of two fixed by C alone: the next
  power of two of C up to a warp for small C, a warp per row up to C = 2048, the whole block
  above), ``_TPB // width`` rows per block, blocks striding over the row groups. Softmax rows
  are read once for the maximum and the sum of exponentials together (online softmax: each
  thread keeps ``(m, s)`` and rescales ``s`` when ``m`` grows; the segment merges the pairs in a
  shared-memory tree) and the gradient is written in the same launch, each thread writing only
  the entries it read itself and only after the segment's barrier, so ``out=x`` is safe.
* Elementwise losses: grid-stride loops, one item function per loss (``@cuda.jit(device=True)``).
* All arithmetic is float64 inside the kernels (float32 inputs are widened on load); gradients
  are stored in the input dtype.

Deterministic batch reduction: every thread adds its items in a fixed order, each block adds its
threads in a fixed shared-memory tree (halving strides) and writes one float64 partial sum; a
second, single-block kernel adds the partials in the same fixed way and writes the 1-element
result (dividing by the mean's denominator there). No floating-point atomics; the grid size
depends on the shape only, so repeats are bitwise identical. The denominator of
``softmax_xent``'s mean with class indices (the sum of ``weight[y]`` over rows not ignored) is
reduced on the device the same way into a 1-element float64 array that the gradient kernel
reads, so ``grad_output / denominator`` is applied without a host round trip.

Device-only rules (a kernel cannot raise without a host synchronisation):

* A class label outside ``[0, C)`` that is not ``ignore_index`` in a *device* label array is never
  used as an index: that row's loss and its whole gradient row are NaN (so a reduced loss is NaN)
  and the row does not count in the mean's denominator. Host (NumPy) labels are checked and raise
  ``ValueError`` as on every other backend.
* ``hinge`` labels on the device are not checked: a label ``> 0`` is +1, anything else -1.
* Device ``weight``/``pos_weight`` of ``sigmoid_bce`` must have a trailing shape of the input
  (element ``i`` uses ``w[i % w.size]``); broadcast other shapes on the device first. Host
  (NumPy) weights broadcast as everywhere else.
* Device inputs must be C-contiguous Numba device arrays, or CuPy/PyTorch arrays (those are made
  contiguous by their own framework, on the device, when they are not). PyTorch tensors that
  require grad are read through ``detach()`` (same memory).
* Targets, weights and ``grad_output`` on the device may have any real dtype (labels any integer
  dtype): kernels widen on load, so nothing is converted on the host.
* ``grad_output`` may be a device array: of size 1 for ``mean``/``sum`` (e.g. the 0-d gradient
  of an autograd ``backward``), of the unreduced loss's shape for ``none``; it is read on the
  device.

Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's CUDA simulator (with 8-thread
blocks and at most 2 blocks per grid to keep it fast; the code path is the same).
"""

import math
import sys
import warnings
from contextlib import nullcontext

import numpy as np

from .. import _validation as v
from .._specs import ELEMENTS

try:
    import numba
    from numba import cuda

    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - numba without a CUDA target
    cuda = None
    _IMPORT_ERROR = exc

_SIM = cuda is not None and bool(getattr(numba.config, "ENABLE_CUDASIM", 0))

__all__ = ["run", "is_device_array", "AVAILABLE", "WHY_UNAVAILABLE"]

_HOW = ("install fastloss[cuda] (numba-cuda) and run on an NVIDIA GPU, or set NUMBA_ENABLE_CUDASIM=1 "
        "before importing numba to use the simulator")


def _availability():
    if cuda is None:
        return False, f"numba.cuda cannot be imported ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); {_HOW}"
    if _SIM:
        return True, ""
    try:
        ok = bool(cuda.is_available())
    except Exception as exc:  # pragma: no cover - driver errors
        return False, f"numba.cuda cannot use the CUDA driver ({exc}); {_HOW}"
    if not ok:
        return False, f"numba.cuda cannot find a CUDA driver/GPU; {_HOW}"
    return True, ""


def __getattr__(name):
    """``AVAILABLE``/``WHY_UNAVAILABLE``, computed on first access (not at import: asking the
    driver is not free, and importing fastloss must never touch CUDA)."""
    if name in ("AVAILABLE", "WHY_UNAVAILABLE"):
        ok, why = _availability()
        globals()["AVAILABLE"], globals()["WHY_UNAVAILABLE"] = ok, why
        return ok if name == "AVAILABLE" else why
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if cuda is None:  # pragma: no cover - keep the module importable; nothing below is ever launched
    class _NoCuda:
        @staticmethod
        def jit(*args, **kwargs):
            return args[0] if args and callable(args[0]) else (lambda f: f)

    cuda = _NoCuda()

# ---------------------------------------------------------------------------------------------
# Launch geometry: constants only (never device properties), so results do not depend on the GPU
# ---------------------------------------------------------------------------------------------

_TPB = 8 if _SIM else 256  # threads per block (a power of two)
_MAX_GRID = 2 if _SIM else 1024  # blocks per grid at most; kernels stride over the rest
_WARP = 32
_BLOCK_PER_ROW_FROM = 2048  # C above this: the whole block works on one row

# The simulator runs kernels as Python: math.exp overflow and 1/0 raise there, NumPy's do not.
if _SIM:
    _exp, _log, _log1p = np.exp, np.log, np.log1p
else:
    _exp, _log, _log1p = math.exp, math.log, math.log1p
_INF = math.inf
_NAN = math.nan


def _row_width(n_classes):
    """Threads per row: a power of two that depends on C only."""
    if n_classes > _BLOCK_PER_ROW_FROM:
        return _TPB
    w = 1
    while w < n_classes and w < _WARP:
        w *= 2
    return min(w, _TPB)


def _grid(n_work):
    return max(1, min(n_work, _MAX_GRID))


# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


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
    _tree_sum(sm, tid, tid, _TPB)
    if tid == 0:
        partials[cuda.blockIdx.x] = sm[0]


@cuda.jit(device=True)
def _item_scale(gscale, gs_arr, gs_stride, i, den):
    gs = gscale
    if gs_arr.shape[0] > 0:
        gs = gs * np.float64(gs_arr[i * gs_stride])
    if den.shape[0] > 0:
        gs = gs / den[0]
    return gs


# ---------------------------------------------------------------------------------------------
# Final reduction and the label pre-pass
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _finish_kernel(partials, den, den_host, result):
    """result[0] = (sum of partials, fixed order) / denominator; one block."""
    sm = cuda.shared.array(_TPB, np.float64)
    tid = cuda.threadIdx.x
    acc = np.float64(0.0)
    for b in range(tid, partials.shape[0], _TPB):
        acc += partials[b]
    sm[tid] = acc
    _tree_sum(sm, tid, tid, _TPB)
    if tid == 0:
        d = den[0] if den.shape[0] > 0 else den_host
        result[0] = sm[0] / d


@cuda.jit
def _label_weight_kernel(labels, n_classes, ignore_index, w, partials):
    """Partial sums of weight[y] (or 1) over labels that are not ignore_index and in range."""
    sm = cuda.shared.array(_TPB, np.float64)
    has_w = w.shape[0] > 0
    acc = np.float64(0.0)
    for i in range(cuda.blockIdx.x * _TPB + cuda.threadIdx.x, labels.shape[0], cuda.gridDim.x * _TPB):
        y = labels[i]
        if y != ignore_index and y >= 0 and y < n_classes:
            acc += np.float64(w[y]) if has_w else 1.0
    _block_partial(sm, acc, partials)


# ---------------------------------------------------------------------------------------------
# softmax_xent with class indices
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _softmax_xent_kernel(x, labels, w, ignore_index, eps, z, g, gscale, gs_arr, gs_stride,
                         den, loss_out, partials, width):
    sm_m = cuda.shared.array(_TPB, np.float64)
    sm_s = cuda.shared.array(_TPB, np.float64)
    sm_a = cuda.shared.array(_TPB, np.float64)
    sm_w = cuda.shared.array(_TPB, np.float64)
    tid = cuda.threadIdx.x
    lane = tid % width
    seg = tid - lane
    rows_per_block = _TPB // width
    n = x.shape[0]
    c = x.shape[1]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    inv_c = 1.0 / c
    smooth_w = eps != 0.0 and has_w  # sum_j w_j is then reduced with the row (no host sync)
    acc = np.float64(0.0)
    n_groups = (n + rows_per_block - 1) // rows_per_block
    for grp in range(cuda.blockIdx.x, n_groups, cuda.gridDim.x):
        row = grp * rows_per_block + tid // width
        status = 3  # 0: compute, 1: ignored, 2: bad label, 3: no row
        y = 0
        if row < n:
            yl = labels[row]
            if yl == ignore_index:
                status = 1
            elif yl < 0 or yl >= c:
                status = 2
            else:
                status = 0
                y = yl
        # one pass: online max / sum of exponentials, and sum_j w_j x_j for label smoothing
        m = -_INF
        s = np.float64(0.0)
        sx = np.float64(0.0)
        sw = np.float64(0.0)
        xy = np.float64(0.0)
        wy = np.float64(1.0)
        if status == 0:
            xy = np.float64(x[row, y])  # read before any thread writes this row (out=x)
            if has_w:
                wy = np.float64(w[y])
            for j in range(lane, c, width):
                vj = np.float64(x[row, j])
                if vj > m:
                    s = s * _exp(m - vj) + 1.0
                    m = vj
                elif vj != -_INF:
                    s += _exp(vj - m)  # NaN lands here: s becomes NaN
                if eps != 0.0:
                    wj = np.float64(w[j]) if has_w else 1.0
                    sw += wj
                    if wj != 0.0:
                        sx += wj * vj
        sm_m[tid] = m
        sm_s[tid] = s
        sm_a[tid] = sx
        sm_w[tid] = sw
        cuda.syncthreads()
        st = width // 2
        while st > 0:  # one fixed tree for the (m, s) states and the two sums
            if lane < st:
                mm, ss = _merge_lse(sm_m[tid], sm_s[tid], sm_m[tid + st], sm_s[tid + st])
                sm_m[tid] = mm
                sm_s[tid] = ss
                sm_a[tid] += sm_a[tid + st]
                sm_w[tid] += sm_w[tid + st]
            cuda.syncthreads()
            st //= 2
        m = sm_m[seg]
        s = sm_s[seg]
        sx = sm_a[seg]
        w_sum = sm_w[seg] if smooth_w else np.float64(c)
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
            if has_lo:
                loss_out[row] = loss
            acc += loss
        if write_g and status != 3:
            if status == 0:
                gs = _item_scale(gscale, gs_arr, gs_stride, row, den)
                coef = (1.0 - eps) * wy + eps * w_sum * inv_c
                if z != 0.0:
                    coef += 2.0 * z * wy * lse
                a = gs * coef / s
                if m == _INF:
                    a = _NAN
                cs = gs * eps * inv_c
                for j in range(lane, c, width):
                    e = _exp(np.float64(x[row, j]) - m)
                    wj = np.float64(w[j]) if has_w else 1.0
                    val = e * a - cs * wj
                    if j == y:
                        val -= gs * (1.0 - eps) * wy
                    g[row, j] = val
            else:
                fill = 0.0 if status == 1 else _NAN
                for j in range(lane, c, width):
                    g[row, j] = fill
        cuda.syncthreads()  # the segment's leader slot is rewritten by the next group
    _block_partial(sm_a, acc, partials)


# ---------------------------------------------------------------------------------------------
# softmax_xent with probability targets
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _softmax_xent_probs_kernel(x, t, w, eps, z, g, gscale, gs_arr, gs_stride, den, loss_out,
                               partials, width):
    sm_m = cuda.shared.array(_TPB, np.float64)
    sm_s = cuda.shared.array(_TPB, np.float64)
    sm_r = cuda.shared.array(_TPB, np.float64)
    sm_q = cuda.shared.array(_TPB, np.float64)
    tid = cuda.threadIdx.x
    lane = tid % width
    seg = tid - lane
    rows_per_block = _TPB // width
    n = x.shape[0]
    c = x.shape[1]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    keep = 1.0 - eps
    add = eps * (1.0 / c)
    acc = np.float64(0.0)
    n_groups = (n + rows_per_block - 1) // rows_per_block
    for grp in range(cuda.blockIdx.x, n_groups, cuda.gridDim.x):
        row = grp * rows_per_block + tid // width
        active = row < n
        m = -_INF
        s = np.float64(0.0)
        r = np.float64(0.0)
        q = np.float64(0.0)
        if active:
            for j in range(lane, c, width):
                vj = np.float64(x[row, j])
                tj = keep * np.float64(t[row, j]) + add
                if has_w:
                    tj *= np.float64(w[j])
                r += tj
                if tj != 0.0:
                    q += tj * vj
                if vj > m:
                    s = s * _exp(m - vj) + 1.0
                    m = vj
                elif vj != -_INF:
                    s += _exp(vj - m)
        sm_m[tid] = m
        sm_s[tid] = s
        sm_r[tid] = r
        sm_q[tid] = q
        cuda.syncthreads()
        st = width // 2
        while st > 0:  # one fixed tree for the (m, s) states and the two sums
            if lane < st:
                mm, ss = _merge_lse(sm_m[tid], sm_s[tid], sm_m[tid + st], sm_s[tid + st])
                sm_m[tid] = mm
                sm_s[tid] = ss
                sm_r[tid] += sm_r[tid + st]
                sm_q[tid] += sm_q[tid + st]
            cuda.syncthreads()
            st //= 2
        m = sm_m[seg]
        s = sm_s[seg]
        r = sm_r[seg]
        q = sm_q[seg]
        if active:
            lse = _lse_of(m, s)
            loss = r * lse - q
            if z != 0.0:
                loss += z * r * lse * lse
            if lane == 0:
                if has_lo:
                    loss_out[row] = loss
                acc += loss
            if write_g:
                gs = _item_scale(gscale, gs_arr, gs_stride, row, den)
                coef = r
                if z != 0.0:
                    coef += 2.0 * z * r * lse
                a = gs * coef / s
                if m == _INF:
                    a = _NAN
                for j in range(lane, c, width):
                    e = _exp(np.float64(x[row, j]) - m)
                    tj = keep * np.float64(t[row, j]) + add
                    if has_w:
                        tj *= np.float64(w[j])
                    g[row, j] = e * a - gs * tj
        cuda.syncthreads()
    _block_partial(sm_q, acc, partials)


# ---------------------------------------------------------------------------------------------
# multiclass_hinge
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _multiclass_hinge_kernel(x, labels, w, margin, squared, crammer_singer, g, gscale, gs_arr,
                             gs_stride, den, loss_out, partials, width):
    sm_a = cuda.shared.array(_TPB, np.float64)
    sm_b = cuda.shared.array(_TPB, np.float64)
    sm_j = cuda.shared.array(_TPB, np.int64)
    tid = cuda.threadIdx.x
    lane = tid % width
    seg = tid - lane
    rows_per_block = _TPB // width
    n = x.shape[0]
    c = x.shape[1]
    has_w = w.shape[0] > 0
    write_g = g.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = np.float64(0.0)
    n_groups = (n + rows_per_block - 1) // rows_per_block
    for grp in range(cuda.blockIdx.x, n_groups, cuda.gridDim.x):
        row = grp * rows_per_block + tid // width
        status = 3  # 0: compute, 2: bad label, 3: no row
        y = 0
        if row < n:
            yl = labels[row]
            if yl < 0 or yl >= c:
                status = 2
            else:
                status = 0
                y = yl
        xy = np.float64(0.0)
        wy = np.float64(1.0)
        gs = np.float64(0.0)
        if status == 0:
            xy = np.float64(x[row, y])  # read before any thread writes this row (out=x)
            if has_w:
                wy = np.float64(w[y])
            gs = _item_scale(gscale, gs_arr, gs_stride, row, den)
        loss = np.float64(0.0)
        if not crammer_singer:
            # Weston-Watkins: each lane owns its classes; the true class's slope is -sum(others)
            f = wy * (1.0 / c)
            lsum = np.float64(0.0)
            dsum = np.float64(0.0)
            if status == 0:
                for j in range(lane, c, width):
                    if j != y:
                        zj = margin - xy + np.float64(x[row, j])
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
                            g[row, j] = d  # j != y: x[row, y] stays readable
            sm_a[tid] = lsum
            sm_b[tid] = dsum
            cuda.syncthreads()
            st = width // 2
            while st > 0:
                if lane < st:
                    sm_a[tid] += sm_a[tid + st]
                    sm_b[tid] += sm_b[tid + st]
                cuda.syncthreads()
                st //= 2
            if status == 0:
                loss = sm_a[seg] * f
                if write_g and lane == 0:
                    g[row, y] = -sm_b[seg]
        else:
            # Crammer-Singer: the first maximal j != y, merged (value, index) in a fixed tree
            best = -_INF
            jb = -1
            nan = 0.0
            if status == 0:
                for j in range(lane, c, width):
                    if j != y:
                        vj = np.float64(x[row, j])
                        if vj > best:
                            best = vj
                            jb = j
                        if vj != vj:
                            nan = 1.0
            sm_a[tid] = best
            sm_b[tid] = nan
            sm_j[tid] = jb
            cuda.syncthreads()
            st = width // 2
            while st > 0:
                if lane < st:
                    b2 = sm_a[tid + st]
                    j2 = sm_j[tid + st]
                    b1 = sm_a[tid]
                    j1 = sm_j[tid]
                    if b2 > b1 or (b2 == b1 and j2 >= 0 and (j1 < 0 or j2 < j1)):
                        sm_a[tid] = b2
                        sm_j[tid] = j2
                    if sm_b[tid + st] > sm_b[tid]:
                        sm_b[tid] = sm_b[tid + st]
                cuda.syncthreads()
                st //= 2
            if status == 0:
                best = sm_a[seg]
                jb = sm_j[seg]
                zz = margin + best - xy if sm_b[seg] == 0.0 else _NAN
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
                        g[row, j] = val
        if status == 2:
            loss = _NAN
            if write_g:
                for j in range(lane, c, width):
                    g[row, j] = _NAN
        if lane == 0 and status != 3:
            if has_lo:
                loss_out[row] = loss
            acc += loss
        cuda.syncthreads()
    _block_partial(sm_a, acc, partials)


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
        sig = e / (1.0 + e)
    return w * loss, w * (lw * sig - pw * t)


@cuda.jit(device=True)
def _huber_item(x, t, delta, unused):
    d = x - t
    ad = abs(d)
    loss = 0.5 * d * d if ad <= delta else delta * (ad - 0.5 * delta)
    gr = delta if d > delta else (-delta if d < -delta else d)
    return loss, gr


@cuda.jit(device=True)
def _hinge_item(x, t, margin, squared):
    y = 1.0 if t > 0.0 else -1.0
    zz = margin - y * x
    h = zz if not zz <= 0.0 else 0.0
    if squared != 0.0:
        return h * h, -2.0 * h * y
    return h, (-y if zz > 0.0 else 0.0)


@cuda.jit(device=True)
def _mse_item(x, t, unused0, unused1):
    d = x - t
    return d * d, 2.0 * d


@cuda.jit(device=True)
def _mae_item(x, t, unused0, unused1):
    d = x - t
    s = 1.0 if d > 0.0 else (-1.0 if d < 0.0 else d * 0.0)
    return abs(d), s


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


def _make_elementwise(item):
    @cuda.jit
    def kernel(x, t, p0, p1, g, gscale, gs_arr, gs_stride, loss_out, partials):
        sm = cuda.shared.array(_TPB, np.float64)
        write_g = g.shape[0] > 0
        has_gs = gs_arr.shape[0] > 0
        has_lo = loss_out.shape[0] > 0
        acc = np.float64(0.0)
        for i in range(cuda.blockIdx.x * _TPB + cuda.threadIdx.x, x.shape[0], cuda.gridDim.x * _TPB):
            loss, d = item(np.float64(x[i]), np.float64(t[i]), p0, p1)
            if has_lo:
                loss_out[i] = loss
            if write_g:
                gs = gscale * np.float64(gs_arr[i * gs_stride]) if has_gs else gscale
                g[i] = d * gs
            acc += loss
        _block_partial(sm, acc, partials)

    return kernel


@cuda.jit
def _sigmoid_bce_kernel(x, t, w, pw, g, gscale, gs_arr, gs_stride, loss_out, partials):
    sm = cuda.shared.array(_TPB, np.float64)
    n_w = w.shape[0]
    n_pw = pw.shape[0]
    write_g = g.shape[0] > 0
    has_gs = gs_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = np.float64(0.0)
    for i in range(cuda.blockIdx.x * _TPB + cuda.threadIdx.x, x.shape[0], cuda.gridDim.x * _TPB):
        wi = np.float64(w[i % n_w]) if n_w > 0 else np.float64(1.0)
        pwi = np.float64(pw[i % n_pw]) if n_pw > 0 else np.float64(1.0)
        loss, d = _sigmoid_bce_item(np.float64(x[i]), np.float64(t[i]), wi, pwi)
        if has_lo:
            loss_out[i] = loss
        if write_g:
            gs = gscale * np.float64(gs_arr[i * gs_stride]) if has_gs else gscale
            g[i] = d * gs
        acc += loss
    _block_partial(sm, acc, partials)


_ELEMENTWISE = {
    "huber": _make_elementwise(_huber_item),
    "hinge": _make_elementwise(_hinge_item),
    "mse": _make_elementwise(_mse_item),
    "mae": _make_elementwise(_mae_item),
    "kl_div": _make_elementwise(_kl_div_item),
}


# ---------------------------------------------------------------------------------------------
# Device arrays of the caller's framework: detection, zero-copy views, allocation, streams
# ---------------------------------------------------------------------------------------------


def _is_numba_device_array(a):
    if cuda is None or isinstance(a, np.ndarray):
        return False
    if _SIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return isinstance(a, FakeCUDAArray)
    try:
        return bool(cuda.devicearray.is_cuda_ndarray(a))
    except Exception:  # pragma: no cover
        return False


def _is_torch_cuda(a):
    return type(a).__module__.split(".")[0] == "torch" and bool(getattr(a, "is_cuda", False))


def is_device_array(a):
    """True for anything this backend reads on the device without a copy (CUDA array interface
    objects, PyTorch CUDA tensors, even those that require grad and so hide that interface, and
    the simulator's fake device arrays, which do not export it)."""
    return hasattr(a, "__cuda_array_interface__") or _is_numba_device_array(a) or _is_torch_cuda(a)


def _framework(a):
    """'numba', 'cupy', 'torch' or 'cai' (any other CUDA array interface object)."""
    if _is_numba_device_array(a):
        return "numba"
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy" and "cupy" in sys.modules:
        return "cupy"
    if mod == "torch" and "torch" in sys.modules:
        return "torch"
    return "cai"


def _view(a):
    """A Numba device array over ``a``'s memory: no copy, no synchronisation (we launch on the
    stream the caller's framework uses)."""
    if _is_numba_device_array(a):
        return a
    if _is_torch_cuda(a) and a.requires_grad:
        a = a.detach()  # same memory; autograd is the caller's business
    return cuda.as_cuda_array(a, sync=False)


class _Device:
    """Allocation and launch stream of one call, following the framework of ``like``."""

    def __init__(self, like):
        self.kind = _framework(like) if like is not None else "numba"
        self.like = like
        self.stream = 0
        if _SIM:
            return
        if self.kind == "cupy":
            ptr = sys.modules["cupy"].cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        elif self.kind == "torch":
            ptr = sys.modules["torch"].cuda.current_stream(like.device).cuda_stream
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        elif self.kind == "numba":
            st = getattr(like, "stream", 0)
            self.stream = st if st else cuda.default_stream()
        else:
            self.stream = cuda.default_stream()

    def empty(self, shape, dtype):
        """(caller-type array, its Numba view), uninitialised: results and scratch come from the
        caller's allocator (PyTorch's/CuPy's pools, stream-ordered), so they are born in the
        caller's array type and no copy or wrapping is needed."""
        dtype = np.dtype(dtype)
        if self.kind == "cupy":
            arr = sys.modules["cupy"].empty(shape, dtype=dtype)
            return arr, _view(arr)
        if self.kind == "torch":
            torch = sys.modules["torch"]
            arr = torch.empty(shape, dtype=getattr(torch, dtype.name), device=self.like.device)
            return arr, _view(arr)
        arr = cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return arr, arr

    def upload(self, a, dtype=None):
        """A Numba device array holding host array ``a`` (C-contiguous)."""
        a = np.ascontiguousarray(a, dtype=dtype)
        return cuda.to_device(a, stream=self.stream)


def _contiguous(a, name):
    """A C-contiguous device array with the memory of ``a`` where it already is; CuPy/PyTorch
    arrays that are not are copied on the device by their own framework."""
    view = _view(a)
    if view.is_c_contiguous():
        return a, view
    kind = _framework(a)
    if kind == "cupy":
        a = sys.modules["cupy"].ascontiguousarray(a)
    elif kind == "torch":
        a = a.contiguous()
    else:
        raise ValueError(f"{name} must be C-contiguous on the device (got strides {view.strides}); "
                         f"copy it into a contiguous device array first")
    return a, _view(a)


def _span(view):
    """(start, end) device addresses of a Numba (or simulated) device array."""
    if _SIM:
        ptr = view._ary.__array_interface__["data"][0]
    else:
        ptr = view.__cuda_array_interface__["data"][0]
    return ptr, ptr + view.size * view.dtype.itemsize


def _overlaps(a, b):
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1 and a1 > a0 and b1 > b0


def _real_dtype(spec, name, view):
    if np.dtype(view.dtype).kind not in "biuf":
        raise TypeError(f"{spec.name}: {name} must be a real array, got dtype {view.dtype}")


# ---------------------------------------------------------------------------------------------
# The device road
# ---------------------------------------------------------------------------------------------


def run(spec, entry, x, target, reduction, grad_output, out, options):
    """Compute ``entry`` ('loss', 'grad' or 'loss_and_grad') of loss ``spec`` on the GPU.

    Device inputs give device results in the caller's array type with no host synchronisation;
    NumPy inputs are copied to the device and the results come back as NumPy."""
    v.check_reduction(spec, reduction)
    if is_device_array(x):
        return _run_device(spec, entry, x, target, reduction, grad_output, out, options)
    if is_device_array(target):
        raise TypeError(f"{spec.name}: {spec.target_name} is a device array but {spec.input_name} is not; "
                        f"pass both on the device or both on the host")
    return _run_host(spec, entry, x, target, reduction, grad_output, out, options)


def _run_host(spec, entry, x, target, reduction, grad_output, out, options):
    from .. import _dispatch  # the shared host validation, with the NumPy label pre-passes
    p = _dispatch.prepare(spec, entry, x, target, reduction, grad_output, out, options,
                          _dispatch.get_backend("numpy"))
    kind, opts, dtype, item_shape, gscale, gscale_arr, out = (
        p.kind, p.options, p.dtype, p.item_shape, p.gscale, p.gscale_arr, p.out)
    if reduction in ("mean", "batchmean"):  # the device divides by the denominator itself
        gscale = 1.0 if entry != "grad" else float(np.asarray(grad_output))
    want_grad = entry != "loss"
    dev = _Device(None)
    n_items = v.size_of(item_shape)
    x_d = dev.upload(p.x)
    t_d = dev.upload(p.target)
    w_d = {k: (None if opts[k] is None else dev.upload(opts[k])) for k in ("weight", "pos_weight") if k in opts}
    gs_d = None if gscale_arr is None else dev.upload(gscale_arr)
    grad_d = dev.empty(x_d.shape, dtype)[1] if want_grad else None
    lo_d = dev.empty(n_items, dtype)[1] if (reduction == "none" and entry != "grad") else None
    res_d = dev.empty(1, dtype)[1] if (reduction != "none" and entry != "grad") else None
    _compute(spec, kind, dev, x_d, t_d, {**opts, **w_d}, reduction, gscale, gs_d, 1, grad_d, lo_d, res_d,
             p.shape, entry)

    grad = None
    if want_grad:
        grad = out if out is not None else np.empty(p.shape, dtype)
        if grad.size:
            grad_d.copy_to_host(grad.reshape(x_d.shape))
    if entry == "grad":
        return grad
    if reduction == "none":
        value = out if (out is not None and not want_grad) else np.empty(item_shape, dtype)
        if value.size:
            lo_d.copy_to_host(value.reshape(-1))
    else:
        value = dtype.type(res_d.copy_to_host()[0])
    return value if entry == "loss" else (value, grad)


def _run_device(spec, entry, x, target, reduction, grad_output, out, options):
    x, x_v = _contiguous(x, spec.input_name)
    dtype = v.compute_dtype(x_v, spec.input_name)
    x_shape = tuple(x_v.shape)  # a plain tuple: the simulator's shapes refuse negative indices
    v.check_input_shape(spec, x_shape, spec.input_name)
    dev = _Device(x)
    rows = spec.layout != ELEMENTS
    item_shape = x_shape[:-1] if rows else x_shape
    n_items = v.size_of(item_shape)

    # target: on the device (any real/int dtype; kernels widen on load) or on the host
    t_host = not is_device_array(target)
    t_v = np.asarray(target) if t_host else _contiguous(target, spec.target_name)[1]
    kind = v.target_kind(spec, x_shape, t_v, spec.target_name)

    # options: device arrays are checked here (shape only), the rest by the shared checks
    dev_opts = {k: val for k, val in options.items() if k in ("weight", "pos_weight") and is_device_array(val)}
    opts = v.check_options(spec, {k: (None if k in dev_opts else val) for k, val in options.items()},
                           x_shape, dtype)
    if t_host:  # host targets are checked as on the CPU backends (no synchronisation needed)
        from .. import _dispatch
        t_v = _dispatch.checked_target(spec, kind, t_v, x_shape[-1] if x_shape else 1, dtype, opts,
                                       _dispatch.get_backend("numpy"))[0]
    for k, val in dev_opts.items():
        w_v = _contiguous(val, k)[1]
        _real_dtype(spec, k, w_v)
        shape = tuple(w_v.shape)
        if rows:
            if shape != (x_shape[-1],):
                raise ValueError(f"{spec.name}: {k} must have shape ({x_shape[-1]},) (one per class), got {shape}")
        elif len(shape) > len(x_shape) or shape != x_shape[len(x_shape) - len(shape):] or not shape:
            raise ValueError(f"{spec.name}: a device {k} must have a trailing shape of the input shape "
                             f"{x_shape} (element i uses {k}[i % size]), got {shape}; broadcast it on the "
                             f"device first")
        opts[k] = w_v

    # grad_output: a host scalar/array, or a device array read by the kernels
    want_grad = entry != "loss"
    gs_stride = 1
    gs_v = None
    if entry == "grad" and is_device_array(grad_output):
        gs_v = _contiguous(grad_output, "grad_output")[1]
        _real_dtype(spec, "grad_output", gs_v)
        if gs_v.size == 1:
            gs_stride = 0
        elif reduction != "none" or tuple(gs_v.shape) != tuple(item_shape):
            raise ValueError(f"{spec.name}: a device grad_output must have size 1 or, for reduction='none', "
                             f"the unreduced loss shape {tuple(item_shape)}; got shape {tuple(gs_v.shape)}")
        gs_v = gs_v.reshape(-1)
        gscale = 1.0
    else:
        gscale, gs_host = v.check_grad_output(spec, 1.0 if entry != "grad" else grad_output, reduction,
                                              item_shape)
        gs_v = None if gs_host is None else dev.upload(gs_host)

    # out: a device array of the right dtype/shape, contiguous, not sharing the targets' memory
    out_v = None
    if out is not None:
        if not is_device_array(out):
            raise TypeError(f"{spec.name}: out must be a device array for device inputs, got {type(out).__name__}")
        out_v = _view(out)
        what = "gradient" if want_grad else "unreduced loss"
        shape = x_shape if want_grad else tuple(item_shape)
        if not want_grad and reduction != "none":
            raise ValueError(f"{spec.name}: out receives the unreduced loss; pass it only with reduction='none'")
        if np.dtype(out_v.dtype) != dtype:
            raise TypeError(f"{spec.name}: out must have dtype {dtype} (the {what}), got {out_v.dtype}")
        if tuple(out_v.shape) != shape:
            raise ValueError(f"{spec.name}: out must have shape {shape} (the {what}), got {tuple(out_v.shape)}")
        if not out_v.is_c_contiguous():
            raise ValueError(f"{spec.name}: out must be C-contiguous, got strides {out_v.strides}")
        others = [(spec.target_name, None if t_host else t_v)] + [(k, opts.get(k)) for k in dev_opts]
        if not want_grad or _span(out_v)[0] != _span(x_v)[0]:  # the gradient may overwrite x exactly
            others.append((spec.input_name, x_v))
        for name, arr in others:
            if arr is not None and arr.size and out_v.size and _overlaps(out_v, arr):
                raise ValueError(v.out_overlap_message(spec, name))

    # everything checked: upload host pieces, allocate, launch
    x_d = x_v.reshape((n_items, x_shape[-1]) if rows else (n_items,))
    if t_host:
        t_d = dev.upload(t_v if kind == "classes" else t_v.reshape(-1),
                         None if kind == "classes" else dtype)
    else:
        t_d = t_v.reshape(-1) if kind == "classes" else t_v.reshape(x_d.shape)
    if t_host and kind != "classes":
        t_d = t_d.reshape(x_d.shape)
    for k in ("weight", "pos_weight"):
        if k in opts and opts[k] is not None and k not in dev_opts:
            opts[k] = dev.upload(opts[k])
        elif k in dev_opts:
            opts[k] = opts[k].reshape(-1)

    grad = grad_v = None
    if want_grad:
        grad, grad_v = (out, out_v) if out is not None else dev.empty(x_shape, dtype)
    loss_arr = lo_v = None
    if reduction == "none" and entry != "grad":
        loss_arr, lo_v = (out, out_v) if (out is not None and not want_grad) else dev.empty(item_shape, dtype)
    res = res_v = None
    if reduction != "none" and entry != "grad":
        res, res_v = dev.empty((1,), dtype)
    _compute(spec, kind, dev, x_d, t_d, opts, reduction, gscale, gs_v, gs_stride,
             None if grad_v is None else grad_v.reshape(x_d.shape),
             None if lo_v is None else lo_v.reshape(-1), res_v, x_shape, entry)
    if entry == "grad":
        return grad
    value = loss_arr if reduction == "none" else res.reshape(())
    return value if entry == "loss" else (value, grad)


def _f(value):
    """A float64 kernel scalar (a NumPy scalar: in the simulator 1/0 must not raise)."""
    return np.float64(value)


def _compute(spec, kind, dev, x, t, opts, reduction, gscale, gs_arr, gs_stride, grad, loss_out, result,
             x_shape, entry):
    """Launch the loss kernel (and the label pre-pass and the final reduction) on dev.stream.

    ``x`` is (N, C) or (n,); ``grad``/``loss_out``/``result`` are device arrays or None."""
    stream = dev.stream
    f64 = np.float64
    empty = cuda.device_array(0, x.dtype, stream=stream)
    empty64 = cuda.device_array(0, f64, stream=stream)
    g = grad if grad is not None else (cuda.device_array((0, 0), x.dtype, stream=stream) if x.ndim == 2 else empty)
    lo = loss_out if loss_out is not None else empty
    gs_arr = gs_arr if gs_arr is not None else empty64
    rows = x.ndim == 2
    n_items = x.shape[0]
    den = empty64
    den_host = 1.0
    if reduction in ("mean", "batchmean"):
        if reduction == "batchmean":
            den_host = float(x_shape[0]) if len(x_shape) else 1.0
        elif kind == "classes" and spec.label_weighted_mean:
            den = dev.empty(1, f64)[1]
        else:
            den_host = float(n_items)
    need_den = den.shape[0] > 0
    if not need_den and reduction in ("mean", "batchmean"):
        with np.errstate(divide="ignore", invalid="ignore"):
            gscale = float(np.float64(gscale) / den_host)

    quiet = warnings.catch_warnings() if _SIM else nullcontext()
    with quiet:
        if _SIM:
            warnings.simplefilter("ignore", RuntimeWarning)
        if need_den:  # the mean's denominator, reduced on the device in a fixed order
            w = opts["weight"] if opts["weight"] is not None else empty
            nb = _grid(-(-n_items // _TPB))
            parts = dev.empty(nb, f64)[1]
            _label_weight_kernel[nb, _TPB, stream](t, x.shape[1], opts["ignore_index"], w, parts)
            _finish_kernel[1, _TPB, stream](parts, empty64, _f(1.0), den)

        if rows:
            width = _row_width(x.shape[1])
            nb = _grid(-(-n_items // (_TPB // width)))
        else:
            nb = _grid(-(-n_items // _TPB))
        parts = dev.empty(nb, f64)[1]
        launch = (nb, _TPB, stream)
        if spec.name == "softmax_xent":
            w = opts["weight"] if opts["weight"] is not None else empty
            eps, z = _f(opts["label_smoothing"]), _f(opts["z_loss"])
            if kind == "probs":
                _softmax_xent_probs_kernel[launch](x, t, w, eps, z, g, _f(gscale), gs_arr, gs_stride, den,
                                                   lo, parts, width)
            else:
                _softmax_xent_kernel[launch](x, t, w, opts["ignore_index"], eps, z, g, _f(gscale), gs_arr,
                                             gs_stride, den, lo, parts, width)
        elif spec.name == "multiclass_hinge":
            w = opts["weight"] if opts["weight"] is not None else empty
            _multiclass_hinge_kernel[launch](x, t, w, _f(opts["margin"]), bool(opts["squared"]),
                                             opts["mode"] == "crammer_singer", g, _f(gscale), gs_arr,
                                             gs_stride, den, lo, parts, width)
        elif spec.name == "sigmoid_bce":
            w = opts["weight"] if opts["weight"] is not None else empty
            pw = opts["pos_weight"] if opts["pos_weight"] is not None else empty
            _sigmoid_bce_kernel[launch](x, t, w, pw, g, _f(gscale), gs_arr, gs_stride, lo, parts)
        else:
            p = {"huber": (opts.get("delta"), 0.0), "hinge": (opts.get("margin"), float(bool(opts.get("squared")))),
                 "kl_div": (float(bool(opts.get("log_target"))), 0.0)}.get(spec.name, (0.0, 0.0))
            _ELEMENTWISE[spec.name][launch](x, t, _f(p[0]), _f(p[1]), g, _f(gscale), gs_arr, gs_stride, lo, parts)

        if result is not None:
            _finish_kernel[1, _TPB, stream](parts, den, _f(den_host), result)
