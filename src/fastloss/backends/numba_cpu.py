"""Numba CPU backend: fused loss + gradient kernels, ``@njit`` serial and ``parallel=True``.

Every kernel of the contract (``fastloss.backends``) is a thin Python wrapper that

* maps ``None`` arrays to an empty array of the right type (kernels test ``a.shape[0] > 0``) and
  passes every input as a read-only array (outputs stay writeable), so each kernel compiles once
  per dtype rather than once per None pattern and read-only-ness;
* runs the serial compilation when ``n_threads == 1`` and the ``parallel=True`` compilation of
  the *same* Python function otherwise (``prange`` is ``range`` in the serial one);
* sums items in float64 over fixed blocks whose count depends on the shape only (never on the
  thread count), each block by one call of the same compiled block function, then adds the block
  sums in order: loss and gradient are bitwise identical for any thread count.

Half precision: float16 arrays go to the kernels as int16 views of their bits (Numba's CPU
target has no float16), bfloat16 ones as the uint16 arrays they come as; the kernels convert
elements as they load and store them (``_numba_math._f``, ``_to``) and compute in float32 as for
float32, each kernel compiling once more per half type.

The formulas live in ``_numba_math`` (reusable from users' own ``@njit`` code). Numba compiles
lazily, on the first call of each kernel with each dtype, never at import. ``FASTLOSS_NUMBA_CACHE=1``
turns on Numba's on-disk cache (off by default: cache + parallel has segfaulted, numba #4807).

Threads: this module asks Numba for its ``omp`` threading layer first (a parallel region costs
~3 us there against 100-200 us with ``workqueue``), unless the user chose a layer through Numba's
environment variables or Numba's threads are already running. ``workqueue`` cannot run parallel
regions from two Python threads at once, so under it parallel calls are serialised by a lock.
"""

import os
import threading

import numba
import numpy as np
from numba import njit, prange

from . import KERNEL_NAMES
from . import _numba_math as fm

__all__ = list(KERNEL_NAMES) + ["fast_call"]


def _prefer_omp():
    """Put 'omp' first in Numba's threading-layer priority, if that is still ours to decide."""
    if os.environ.get("NUMBA_THREADING_LAYER") or os.environ.get("NUMBA_THREADING_LAYER_PRIORITY"):
        return
    try:
        from numba.np.ufunc import parallel as _parallel

        if getattr(_parallel, "_is_initialized", True):
            return
        if str(numba.config.THREADING_LAYER).lower() != "default":
            return
        priority = [layer for layer in numba.config.THREADING_LAYER_PRIORITY if layer != "omp"]
        numba.config.THREADING_LAYER_PRIORITY = ["omp"] + priority
    except Exception:  # pragma: no cover - a Numba without these internals: keep its default
        pass


_prefer_omp()

_CACHE = os.environ.get("FASTLOSS_NUMBA_CACHE", "") == "1"
_OPTS = dict(nogil=True, error_model="numpy", cache=_CACHE)
_MAX_THREADS = max(1, int(numba.config.NUMBA_NUM_THREADS))

BUILD_INFO = {"numba": numba.__version__, "cache": _CACHE, "max_threads": _MAX_THREADS}

# The dtypes the kernels take: float16 as int16 bits, bfloat16 as uint16 bits (see above)
_F16 = np.dtype(np.float16)
_KERNEL_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int16, np.uint16))

# Empty stand-ins for None, per kernel dtype: 1-D for vectors, (1, 0) for a 2-D gradient (its
# row 0 is an empty row, the "no gradient" signal of the row helpers).
_E1 = {dt: np.empty(0, dt) for dt in _KERNEL_DTYPES}
_E2 = {dt: np.empty((1, 0), dt) for dt in _KERNEL_DTYPES}


def _readonly(a):
    a.flags.writeable = False
    return a


# Inputs are always passed as read-only arrays (writeable ones as read-only views, which costs
# ~0.3 us): Numba types read-only and writeable arrays apart, so this halves the number of
# compilations (one specialisation serves both) and the empty stand-ins match them. The outputs
# (grad, loss_out) stay writeable. ``grad`` may still be ``x``: the kernels detect that through
# the data pointers, which views share.
_R1 = {dt: _readonly(np.empty(0, dt)) for dt in _KERNEL_DTYPES}
_R64 = _readonly(np.empty(0, np.float64))


def _kdt(x):
    """The dtype the kernels take x's values in."""
    return np.dtype(np.int16) if x.dtype == _F16 else x.dtype


def _ro(a):
    """a as a read-only array (a view of it if it is writeable), float16 as its int16 bits."""
    if a.dtype == _F16:
        a = a.view(np.int16)
    elif not a.flags.writeable:
        return a
    else:
        a = a.view()
    a.flags.writeable = False
    return a


def _ro_or(a, empty):
    return empty if a is None else _ro(a)


def _out(a, empty):
    """An output as the kernels take it: ``empty`` for None, float16 as its int16 bits."""
    if a is None:
        return empty
    return a.view(np.int16) if a.dtype == _F16 else a

# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
_needs_lock = None  # decided after Numba's threads start


def _parallel_threads(n_threads):
    """Set Numba's thread count for this Python thread; the count actually used (>= 1)."""
    global _needs_lock
    n = min(int(n_threads), _MAX_THREADS)
    if n <= 1:
        return 1
    if n != numba.get_num_threads():
        numba.set_num_threads(n)
    if _needs_lock is None:
        try:
            _needs_lock = numba.threading_layer() == "workqueue"
        except ValueError:
            _needs_lock = True
        BUILD_INFO["threading_layer"] = numba.threading_layer() if not _needs_lock else "workqueue?"
    return n


def _run(serial, parallel, n_threads, *args):
    if n_threads <= 1 or _parallel_threads(n_threads) <= 1:
        return serial(*args)
    if _needs_lock:
        with _lock:
            return parallel(*args)
    return parallel(*args)


@njit(inline="always")
def _bounds(b, n_blocks, n):
    """Items [lo, hi) of block b of n_blocks over n items."""
    return (b * n) // n_blocks, ((b + 1) * n) // n_blocks


@njit(inline="always")
def _in_order(sums):
    """The blocks' sums added in block order (the same result for any thread count)."""
    total = 0.0
    for b in range(sums.shape[0]):
        total += sums[b]
    return total


# Items per block: the block count depends on the shape only (determinism), is 1 for small
# inputs (no threading overhead there) and at most _MAX_BLOCKS (enough to balance many cores).
_MAX_BLOCKS = 256
_BLOCK_ELEMENTS = 16384


@njit
def _n_blocks(n_items, item_size):
    nb = (n_items * max(item_size, 1)) // _BLOCK_ELEMENTS
    return max(1, min(nb, _MAX_BLOCKS, n_items))


# Gradients at least this large, with rows at least this long, are written with streaming
# stores (no read for ownership; far larger than the caches, they would not stay there anyway)
# from a cache-resident scratch row. Shorter rows measured faster with the exps written straight
# into the gradient row (its read for ownership then overlaps the exps).
_NT_BYTES = 8 << 20
_NT_ROW = 8192


def _streaming(grad, row):
    return grad is not None and row >= _NT_ROW and grad.nbytes >= _NT_BYTES


def _twice(fn):
    """(serial, parallel) compilations of the same Python function."""
    return njit(**_OPTS)(fn), njit(parallel=True, **_OPTS)(fn)


def _blocked(block):
    """(serial, parallel) kernels ``(n_blocks, x, *args)`` running ``block(x, *args, lo, hi)`` on
    each of n_blocks fixed blocks of x's items and adding the blocks' sums in order."""

    def impl(n_blocks, x, *args):
        sums = np.empty(n_blocks)
        for b in prange(n_blocks):
            sums[b] = block(x, *args, *_bounds(b, n_blocks, x.shape[0]))
        return _in_order(sums)

    return _twice(impl)


# ---------------------------------------------------------------------------------------------
# softmax_xent with class indices
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _softmax_xent_block(x, labels, w, w_sum, ignore_index, eps, z, g, gscale, gscale_arr, loss_out, stream, lo, hi):
    n_classes = x.shape[1]
    write_g = g.shape[1] > 0
    has_gscale_arr = gscale_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    # stream (long rows, large gradient): the exps go to a scratch row that stays in cache, the
    # gradient is written once with streaming stores, and the next row of the block is
    # prefetched while this one's exps run. Otherwise the exps go to the gradient row (not for
    # half rows: they go to the scratch row, which keeps them in float32).
    buf = fm._scratch(n_classes if write_g and (stream or fm._is_half(x)) else 0, x)
    none = x[lo, :0]
    acc = 0.0
    for i in range(lo, hi):
        y = labels[i]
        gi = g[i] if write_g else g[0]
        if y == ignore_index:
            loss = 0.0
            for j in range(gi.shape[0]):
                gi[j] = fm._to(0.0, gi)
        elif y < 0 or y >= n_classes:  # never trusted for memory safety
            loss = np.nan
            for j in range(gi.shape[0]):
                gi[j] = fm._to(np.nan, gi)
        else:
            gs = gscale * gscale_arr[i] if has_gscale_arr else gscale
            loss = fm._softmax_xent_row(x[i], y, w, w_sum, eps, z, gi, gs, buf,
                                        x[i + 1] if stream and i + 1 < hi else none, stream)
        if has_lo:
            loss_out[i] = fm._to(loss, loss_out)
        acc += loss
    if stream:
        fm._sfence()
    return acc


_LANES_C = 16  # rows of at most this many classes go through the lane kernel
_LANES = 32  # rows side by side there, one per vector lane


@njit(**_OPTS)
def _softmax_xent_lanes_block(x, labels, w, w_sum, ignore_index, eps, z, g, gscale, gscale_arr, loss_out, stream, lo, hi):
    """_softmax_xent_block for C <= _LANES_C: _LANES rows at a time, transposed (t[c, l] holds
    x[r0 + l, c]) so that the max, the exps, sums and logs and the loss and gradient formulas
    run across rows in vector lanes; one short row at a time drowns in per-row overhead. The
    lane loops run to nl = t.shape[1], a run-time trip count, and each writes one array: LLVM
    vectorises them (a constant 32, or two arrays written, gets them unrolled and left scalar).
    (stream: unused, such rows are never streamed.)"""
    n_classes = x.shape[1]
    write_g = g.shape[1] > 0
    has_w = w.shape[0] > 0
    has_gscale_arr = gscale_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    inv_c = 1.0 / n_classes
    t = fm._scratch((n_classes, _LANES), x)  # the rows, then their exps, then the gradient
    nl = t.shape[1]
    shift = fm._scratch(nl, x)
    a_f = fm._scratch(nl, x)
    c_f = fm._scratch(nl, x)
    yl = np.empty(nl, np.int64)  # the labels (ignore_index past the block's end)
    yc = np.zeros(nl, np.int64)  # the label, or 0 where the row has none
    ok = np.zeros(nl, np.bool_)
    # float64 per row (separate arrays: rows of one 2-D array are views of unknown stride)
    fill, gs, xy, wy, sx, s = np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl)
    lse, loss, gy, ey, acc, a = np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl), np.zeros(nl)
    for l in range(nl):
        gs[l] = gscale
    for r0 in range(lo, hi, nl):
        n_rows = min(nl, hi - r0)
        if n_rows == nl:  # the common case: a plain strided loop (min() in it costs 20 %)
            for c in range(n_classes):
                for l in range(nl):
                    t[c, l] = fm._f(x[r0 + l, c])
        else:
            for c in range(n_classes):  # lanes past the block's end repeat its last row, never stored
                for l in range(nl):
                    t[c, l] = fm._f(x[r0 + min(l, n_rows - 1), c])
        for l in range(nl):
            yl[l] = labels[r0 + l] if l < n_rows else ignore_index
        n_bad = 0
        for l in range(nl):
            y = yl[l]
            ok[l] = y != ignore_index and 0 <= y < n_classes  # never trusted for memory safety
            yc[l] = y if ok[l] else 0
            n_bad += not ok[l]
        if has_gscale_arr:
            for l in range(nl):
                gs[l] = gscale * gscale_arr[r0 + l] if l < n_rows else gscale
        for l in range(nl):
            xy[l] = t[yc[l], l]
        for l in range(nl):
            wy[l] = fm._f(w[yc[l]]) if has_w else 1.0
        for l in range(nl):
            shift[l] = -np.inf
        for c in range(n_classes):
            for l in range(nl):
                v = t[c, l]
                shift[l] = v if v > shift[l] else shift[l]  # the max, NaN skipped
        for l in range(nl):
            shift[l] = shift[l] if shift[l] > -np.inf else 0.0  # all -inf: lse = -inf
        if eps != 0.0:
            for l in range(nl):
                sx[l] = 0.0
            for c in range(n_classes):
                wc = np.float64(fm._f(w[c])) if has_w else 1.0
                for l in range(nl):
                    sx[l] += wc * t[c, l] if wc != 0.0 else 0.0
        for l in range(nl):
            s[l] = 0.0
        for c in range(n_classes):  # x - max <= 0 or NaN
            for l in range(nl):
                t[c, l] = fm._exp_nonpos(t[c, l] - shift[l])
            for l in range(nl):
                s[l] += t[c, l]
        for l in range(nl):
            lse[l] = shift[l] + np.float64(fm.flog(fm._like(s[l], x)))  # in x's precision: vectorises
        for l in range(nl):
            ey[l] = t[yc[l], l]
        for l in range(nl):
            loss[l] = fm._xent_loss(lse[l], xy[l], wy[l], sx[l], w_sum, inv_c, eps, z)
        for l in range(nl):
            a[l] = gs[l] * fm._xent_coef(lse[l], wy[l], w_sum, inv_c, eps, z) / s[l]
        for l in range(nl):
            a_f[l] = a[l]
        for l in range(nl):
            gy[l] = fm._xent_grad_y(ey[l], a[l], gs[l] * eps * inv_c, wy[l], gs[l], eps)
        for l in range(nl):
            c_f[l] = gs[l] * eps * inv_c
        if n_bad:
            for l in range(nl):
                fill[l] = 0.0 if yl[l] == ignore_index else np.nan
            for l in range(nl):
                loss[l] = loss[l] if ok[l] else fill[l]
        for l in range(nl):
            acc[l] += loss[l]  # 0 past the block's end
        if has_lo:
            for l in range(n_rows):
                loss_out[r0 + l] = fm._to(loss[l], loss_out)
        if write_g:
            for c in range(n_classes):
                wc = fm._f(w[c]) if has_w and eps != 0.0 else fm._like(1.0, x)
                for l in range(nl):
                    t[c, l] = t[c, l] * a_f[l] - c_f[l] * wc
            for l in range(nl):
                t[yc[l], l] = gy[l]
            if n_bad:
                for l in range(nl):
                    if not ok[l]:
                        for c in range(n_classes):
                            t[c, l] = fill[l]
            for c in range(n_classes):
                for l in range(n_rows):
                    g[r0 + l, c] = fm._to(t[c, l], g)
    total = 0.0
    for l in range(nl):
        total += acc[l]
    return total


def _make_softmax_xent(block):
    """(serial, parallel) kernels of softmax_xent over ``block`` (the row or the lane kernel:
    each compiles only when its kind of shape first comes), in the ``_blocked`` argument order
    (``stream`` last)."""

    def impl(n_blocks, x, labels, w, ignore_index, eps, z, g, gscale, gscale_arr, loss_out, stream):
        n = x.shape[0]
        w_sum = 0.0
        if w.shape[0] > 0:
            for j in range(w.shape[0]):
                w_sum += fm._f(w[j])
        else:
            w_sum = float(x.shape[1])
        sums = np.empty(n_blocks)
        for b in prange(n_blocks):
            sums[b] = block(x, labels, w, w_sum, ignore_index, eps, z, g, gscale, gscale_arr, loss_out, stream,
                            *_bounds(b, n_blocks, n))
        return _in_order(sums)

    return _twice(impl)


_SOFTMAX_XENT = {False: _make_softmax_xent(_softmax_xent_block), True: _make_softmax_xent(_softmax_xent_lanes_block)}


def softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads):
    k = _kdt(x)
    serial, parallel = _SOFTMAX_XENT[x.shape[1] <= _LANES_C]
    return _run(serial, parallel, n_threads, _n_blocks(x.shape[0], x.shape[1]),
                _ro(x), _ro(labels), _ro_or(weight, _R1[k]), int(ignore_index), float(label_smoothing),
                float(z_loss), _out(grad, _E2[k]), float(gscale),
                _ro_or(gscale_arr, _R64), _out(loss_out, _E1[k]),
                _streaming(grad, x.shape[1]))


# ---------------------------------------------------------------------------------------------
# softmax_xent with probability targets
# ---------------------------------------------------------------------------------------------


def _target_rows_block(row):
    """The block function of a row loss with float targets of x's shape and up to three
    parameters: row i's loss is ``row(x[i], t[i], p0, p1, p2, g[i], its gradient scale, buf)``,
    buf a scratch row for half rows' exps (empty otherwise). (Three named parameters rather
    than a tuple: a parallel kernel cannot take a tuple holding an array.)"""

    @njit(**_OPTS)
    def block(x, t, p0, p1, p2, g, gscale, gscale_arr, loss_out, lo, hi):
        write_g = g.shape[1] > 0
        has_gscale_arr = gscale_arr.shape[0] > 0
        has_lo = loss_out.shape[0] > 0
        buf = fm._half_scratch(g[0], x.shape[1] if write_g else 0)
        acc = 0.0
        for i in range(lo, hi):
            gi = g[i] if write_g else g[0]
            gs = gscale * gscale_arr[i] if has_gscale_arr else gscale
            loss = row(x[i], t[i], p0, p1, p2, gi, gs, buf)
            if has_lo:
                loss_out[i] = fm._to(loss, loss_out)
            acc += loss
        return acc

    return block


_softmax_xent_probs_block = _target_rows_block(fm._softmax_xent_probs_row)
_softmax_xent_probs_s, _softmax_xent_probs_p = _blocked(_softmax_xent_probs_block)


def softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads):
    k = _kdt(x)
    return _run(_softmax_xent_probs_s, _softmax_xent_probs_p, n_threads, _n_blocks(x.shape[0], 2 * x.shape[1]),
                _ro(x), _ro(probs), _ro_or(weight, _R1[k]), float(label_smoothing), float(z_loss),
                _out(grad, _E2[k]), float(gscale), _ro_or(gscale_arr, _R64), _out(loss_out, _E1[k]))


# ---------------------------------------------------------------------------------------------
# multiclass_hinge
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _multiclass_hinge_block(x, labels, w, margin, squared, crammer_singer, g, gscale, gscale_arr,
                            loss_out, lo, hi):
    n_classes = x.shape[1]
    write_g = g.shape[1] > 0
    has_gscale_arr = gscale_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = 0.0
    for i in range(lo, hi):
        y = labels[i]
        gi = g[i] if write_g else g[0]
        if y < 0 or y >= n_classes:
            loss = np.nan
            for j in range(gi.shape[0]):
                gi[j] = fm._to(np.nan, gi)
        else:
            gs = gscale * gscale_arr[i] if has_gscale_arr else gscale
            loss = fm.multiclass_hinge_row(x[i], y, w, margin, squared, crammer_singer, gi, gs)
        if has_lo:
            loss_out[i] = fm._to(loss, loss_out)
        acc += loss
    return acc


_multiclass_hinge_s, _multiclass_hinge_p = _blocked(_multiclass_hinge_block)


def multiclass_hinge(x, labels, weight, margin, squared, crammer_singer,
                     grad, gscale, gscale_arr, loss_out, n_threads):
    k = _kdt(x)
    return _run(_multiclass_hinge_s, _multiclass_hinge_p, n_threads, _n_blocks(x.shape[0], x.shape[1]),
                _ro(x), _ro(labels), _ro_or(weight, _R1[k]), float(margin), bool(squared),
                bool(crammer_singer), _out(grad, _E2[k]), float(gscale),
                _ro_or(gscale_arr, _R64), _out(loss_out, _E1[k]))


# ---------------------------------------------------------------------------------------------
# label_weight_sum: the pre-pass over class labels
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _label_weight_sum(labels, n_classes, ignore_index, has_ignore, w):
    has_w = w.shape[0] > 0
    # four interleaved float64 partial sums (a fixed order, so deterministic), then added in order
    s0 = s1 = s2 = s3 = 0.0
    count = 0
    n = labels.shape[0]
    for i in range(n):
        y = labels[i]
        if has_ignore and y == ignore_index:
            continue
        if y < 0 or y >= n_classes:
            return 0.0, i
        count += 1
        if has_w:
            v = np.float64(fm._f(w[y]))
            k = i & 3
            if k == 0:
                s0 += v
            elif k == 1:
                s1 += v
            elif k == 2:
                s2 += v
            else:
                s3 += v
    if has_w:
        return ((s0 + s1) + (s2 + s3)), -1
    return float(count), -1


@njit(**_OPTS)
def _n_bad_labels(t, lo, hi):
    n_bad = 0
    for ii in range(lo, hi):
        v = fm._f(t[np.uint64(ii)])  # unsigned: no wraparound test, the loop vectorises
        n_bad += np.int64((v != 1) & (v != -1) & (v != 0) & (v == v))
    return n_bad


def _binary_label_check_impl(t, n_blocks):
    # a branch-free count first, in blocks (it vectorises); the position is searched only on failure
    n = t.shape[0]
    counts = np.empty(n_blocks, np.int64)
    for b in prange(n_blocks):
        counts[b] = _n_bad_labels(t, (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
    if counts.sum():
        for i in range(n):
            v = fm._f(t[i])
            if v != 1 and v != -1 and v != 0 and v == v:
                return i
    return -1


_binary_label_check_s, _binary_label_check_p = _twice(_binary_label_check_impl)


def binary_label_check(target, n_threads=1):
    """Position of the first label not in {-1, 0, +1} (NaN passes: NaN in, NaN out), or -1."""
    return int(_run(_binary_label_check_s, _binary_label_check_p, n_threads,
                    _ro(target), _n_blocks(target.shape[0], 1)))


def label_weight_sum(labels, n_classes, ignore_index, has_ignore, weight):
    w = _R64 if weight is None else _ro(weight)
    denom, bad = _label_weight_sum(_ro(labels), int(n_classes), int(ignore_index), bool(has_ignore), w)
    return float(denom), int(bad)


# ---------------------------------------------------------------------------------------------
# Elementwise losses: one block function per loss, one generic driver shape
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _prefetch_chunk(x, t, lo, hi):
    """x[lo:hi] and t[lo:hi] (the next chunk) into L2 while this chunk computes."""
    for j in range(lo, hi, fm._line_items(x)):
        fm._prefetch_l2(x, j)
        fm._prefetch_l2(t, j)


@njit(**_OPTS)
def _sigmoid_bce_block(x, t, w, pw, g, gscale, gscale_arr, loss_out, lo, hi):
    # As _make_elementwise's block (chunks of _ECHUNK items, losses into a buffer summed over 16
    # fixed lanes), in x's precision, each chunk cut where pos_weight's index wraps so that
    # inside a piece it is the item index plus a constant: the pieces vectorise.
    has_w = w.shape[0] > 0
    n_pw = pw.shape[0]
    write_g = g.shape[0] > 0
    has_gscale_arr = gscale_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    simple = write_g and not has_gscale_arr and not has_lo and not has_w
    one = fm._like(1.0, x)
    gsf = fm._like(gscale, x)
    buf = fm._scratch(_ECHUNK, x)
    k = lo % n_pw if n_pw > 0 else 0
    acc = 0.0
    for c0 in range(lo, hi, _ECHUNK):
        c1 = min(c0 + _ECHUNK, hi)
        _prefetch_chunk(x, t, c1, min(c1 + _ECHUNK, hi))
        p0 = c0
        while p0 < c1:
            p1 = min(c1, p0 + n_pw - k) if n_pw > 0 else c1
            off = np.uint64(k) - np.uint64(p0)  # pos_weight index of item i: i + off (mod 2**64)
            ub = np.uint64(c0)
            if simple and n_pw == 0:  # the plain *_and_grad case, kept free of branches
                for ii in range(p0, p1):
                    i = np.uint64(ii)
                    loss, d = fm._sigmoid_bce_x(fm._f(x[i]), fm._f(t[i]), one, one)
                    g[i] = fm._to(d * gsf, g)
                    buf[i - ub] = loss
            else:
                for ii in range(p0, p1):
                    i = np.uint64(ii)
                    loss, d = fm._sigmoid_bce_x(fm._f(x[i]), fm._f(t[i]), fm._f(w[i]) if has_w else one,
                                                fm._f(pw[i + off]) if n_pw > 0 else one)
                    if write_g:
                        g[i] = fm._to(d * (fm._like(gscale * gscale_arr[i], x) if has_gscale_arr else gsf), g)
                    if has_lo:
                        loss_out[i] = fm._to(loss, loss_out)
                    buf[i - ub] = loss
            if n_pw > 0:
                k += p1 - p0
                if k == n_pw:
                    k = 0
            p0 = p1
        acc += fm._sum16(buf, 0, c1 - c0)
    return acc


_sigmoid_bce_s, _sigmoid_bce_p = _blocked(_sigmoid_bce_block)


def sigmoid_bce(x, target, weight, pos_weight, grad, gscale, gscale_arr, loss_out, n_threads):
    k = _kdt(x)
    r1, e1 = _R1[k], _E1[k]
    return _run(_sigmoid_bce_s, _sigmoid_bce_p, n_threads, _n_blocks(x.shape[0], 8),
                _ro(x), _ro(target), _ro_or(weight, r1), _ro_or(pos_weight, r1),
                _out(grad, e1), float(gscale), _ro_or(gscale_arr, _R64), _out(loss_out, e1))


_ECHUNK = 256


def _make_elementwise(item, native=False):
    """Serial/parallel kernels of an elementwise loss whose item is item(x, t, p0, p1); native:
    the item returns (loss, d) in x's precision (float32 stays float32: twice the lanes) and is
    compute-bound (its next chunk's inputs are prefetched; measured slower for the cheap items)."""

    @njit(**_OPTS)
    def block(x, t, p0, p1, g, gscale, gscale_arr, loss_out, lo, hi):
        # Chunks of _ECHUNK items: the item loop stores the losses in a small buffer (no
        # reduction in it, unsigned indices: LLVM vectorises it), then the buffer is summed over
        # 16 fixed lanes. The order depends on the block bounds only: deterministic.
        # Half arrays go through float32 scratch chunks (fm._staged), read and written at
        # index ib + k; float arrays are used in place (ib = c0).
        write_g = g.shape[0] > 0
        has_gscale_arr = gscale_arr.shape[0] > 0
        has_lo = loss_out.shape[0] > 0
        simple = write_g and not has_gscale_arr and not has_lo
        buf = fm._scratch(_ECHUNK, x) if native else np.empty(_ECHUNK)
        xbuf, tbuf, gbuf = fm._half_scratch(x, _ECHUNK), fm._half_scratch(t, _ECHUNK), fm._half_scratch(g, _ECHUNK)
        xs, ts, gs = fm._staged(x, xbuf), fm._staged(t, tbuf), fm._staged(g, gbuf)
        gsf = fm._like(gscale, x) if native else gscale
        acc = 0.0
        for c0 in range(lo, hi, _ECHUNK):
            m = min(_ECHUNK, hi - c0)
            if native:  # compute-bound items (exp/log): their next inputs come in meanwhile
                _prefetch_chunk(x, t, c0 + m, min(c0 + m + _ECHUNK, hi))
            base = np.uint64(c0)
            ib = fm._stage_base(x, c0)
            fm._stage_in(x, c0, m, xbuf)
            fm._stage_in(t, c0, m, tbuf)
            if simple:  # the *_and_grad case, kept free of branches
                for kk in range(m):
                    k = np.uint64(kk)
                    i = ib + k
                    loss, d = item(xs[i], ts[i], p0, p1)
                    gs[i] = d * gsf
                    buf[k] = loss
            else:
                for kk in range(m):
                    k = np.uint64(kk)
                    i = ib + k
                    loss, d = item(xs[i], ts[i], p0, p1)
                    if write_g:
                        gs[i] = d * (gscale * gscale_arr[base + k] if has_gscale_arr else gscale)
                    if has_lo:
                        loss_out[base + k] = fm._to(loss, loss_out)
                    buf[k] = loss
            fm._stage_out(gbuf, g, c0, m)
            acc += fm._sum16(buf, 0, m)
        return acc

    return _blocked(block)


@njit(inline="always")
def _kl_div2(x, t, log_target, unused):
    return fm._kl_div_x(x, t, log_target)


_huber_k = _make_elementwise(fm.huber4)
_hinge_k = _make_elementwise(fm.hinge4)
_mse_k = _make_elementwise(fm.mse4)
_mae_k = _make_elementwise(fm.mae4)
_kl_div_k = _make_elementwise(_kl_div2, native=True)


def _elementwise(kernels, x, target, p0, p1, grad, gscale, gscale_arr, loss_out, n_threads):
    e1 = _E1[_kdt(x)]
    return _run(kernels[0], kernels[1], n_threads, _n_blocks(x.shape[0], 1), _ro(x), _ro(target), p0, p1,
                _out(grad, e1), float(gscale), _ro_or(gscale_arr, _R64), _out(loss_out, e1))


def huber(x, target, delta, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_huber_k, x, target, float(delta), False, grad, gscale, gscale_arr, loss_out, n_threads)


def hinge(x, target, margin, squared, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_hinge_k, x, target, float(margin), bool(squared), grad, gscale, gscale_arr,
                        loss_out, n_threads)


def mse(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_mse_k, x, target, 0.0, False, grad, gscale, gscale_arr, loss_out, n_threads)


def mae(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_mae_k, x, target, 0.0, False, grad, gscale, gscale_arr, loss_out, n_threads)


def kl_div(x, target, log_target, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_kl_div_k, x, target, bool(log_target), False, grad, gscale, gscale_arr,
                        loss_out, n_threads)


def _with_p1(item, p1):
    """``item`` with its second parameter fixed at compile time (a branch on it folds away and
    the loop vectorises): the kernels' variants of poisson_nll's mode and gamma = 2."""

    @njit(inline="always")
    def fixed(x, t, p0, unused):
        return item(x, t, p0, p1)

    return fixed


_smooth_l1_k = _make_elementwise(fm.smooth_l14, native=True)
_log_cosh_k = _make_elementwise(fm.log_cosh4, native=True)
_msle_k = _make_elementwise(fm.msle4, native=True)
# mode = log_input + 2 full; compiled on first use each
_poisson_nll_k = {mode: _make_elementwise(_with_p1(fm.poisson_nll4, mode), native=True) for mode in range(4)}
# gamma == 2 (the default): (1 - p_t)**2 a product; other gammas exp(gamma log(1 - p_t))
_sigmoid_focal_k = {True: _make_elementwise(_with_p1(fm.sigmoid_focal4, 2.0), native=True),
                    False: _make_elementwise(fm.sigmoid_focal4, native=True)}


def _poisson_mode(log_input, full):
    return int(bool(log_input)) + 2 * int(bool(full))


def smooth_l1(x, target, beta, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_smooth_l1_k, x, target, float(beta), False, grad, gscale, gscale_arr, loss_out, n_threads)


def log_cosh(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_log_cosh_k, x, target, 0.0, False, grad, gscale, gscale_arr, loss_out, n_threads)


def msle(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_msle_k, x, target, 0.0, False, grad, gscale, gscale_arr, loss_out, n_threads)


def poisson_nll(x, target, log_input, full, eps, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_poisson_nll_k[_poisson_mode(log_input, full)], x, target, float(eps), False,
                        grad, gscale, gscale_arr, loss_out, n_threads)


def sigmoid_focal(x, target, alpha, gamma, grad, gscale, gscale_arr, loss_out, n_threads):
    return _elementwise(_sigmoid_focal_k[float(gamma) == 2.0], x, target, float(alpha), float(gamma),
                        grad, gscale, gscale_arr, loss_out, n_threads)


# ---------------------------------------------------------------------------------------------
# cosine_similarity: a row loss with float targets of x's shape
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _cosine_similarity_row3(x, t, unused0, unused1, unused2, g, gscale, unused_buf):
    return fm._cosine_similarity_row(x, t, g, gscale)


_cosine_similarity_block = _target_rows_block(_cosine_similarity_row3)
_cosine_similarity_s, _cosine_similarity_p = _blocked(_cosine_similarity_block)


def cosine_similarity(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    k = _kdt(x)
    return _run(_cosine_similarity_s, _cosine_similarity_p, n_threads, _n_blocks(x.shape[0], 2 * x.shape[1]),
                _ro(x), _ro(target), _R1[k], 0.0, 0.0, _out(grad, _E2[k]), float(gscale),
                _ro_or(gscale_arr, _R64), _out(loss_out, _E1[k]))


# ---------------------------------------------------------------------------------------------
# The road's fast step (see fastloss.backends): the common small call checked in Python with a
# few attribute tests, then one compiled call that checks what needs the data (overlap of out,
# labels), computes the mean's denominator and runs the serial kernel the general road runs, with
# the same arguments and blocks: bitwise its result. Arrays go in as they come (no read-only
# views: ~0.4 us each), so this compiles its own specialisations of the kernels.
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def _apart(a, b):
    """Whether the memory of two contiguous arrays is disjoint."""
    pa, pb = a.ctypes.data, b.ctypes.data
    return pa >= pb + b.nbytes or pb >= pa + a.nbytes


# How the fast step shapes its arrays: (N, C) rows and (N,) labels or items
@njit(inline="always")
def _as_rows(a, n, n_cols):
    return a.reshape((n, n_cols))


@njit(inline="always")
def _as_items(a, n, n_cols):
    return a.reshape(n)


# ... and what the targets need first: (position of the first bad one or -1, the mean's denominator)
@njit(inline="always")
def _values(t, n, n_cols, before):
    return -1, float(n)


@njit(inline="always")
def _labels_counted(t, n, n_cols, before):  # softmax_xent: before = (weight, ignore_index, ...)
    w_sum, bad = _label_weight_sum(t, n_cols, before[1], True, before[0])
    return bad, w_sum


@njit(inline="always")
def _labels(t, n, n_cols, before):  # before = (weight, ...)
    _, bad = _label_weight_sum(t, n_cols, 0, False, before[0])
    return bad, float(n)


@njit(inline="always")
def _binary_labels(t, n, n_cols, before):
    return (-1 if _n_bad_labels(t, 0, n) == 0 else 0), float(n)


def _make_fast(serial, rows, targets, item_size):
    """The compiled half of the fast step over ``serial`` (a ``_blocked``-order kernel; ``rows``:
    a row loss; ``targets``: their check and the mean's denominator; ``item_size``: as the general
    road's ``_n_blocks``): (0, the reduced loss), or (1, 0.0) when the call must take the general
    road (out overlaps an input, a bad label), with nothing written."""
    as_x = _as_rows if rows else _as_items
    as_t = _as_items if targets in (_labels_counted, _labels) else as_x

    @njit(**_OPTS)
    def fast(x, t, g, loss_out, before, after, g0, red):
        n_cols = x.shape[-1] if rows else 1
        n = x.size // n_cols
        if g is not None:  # x itself, or apart from the inputs
            if (g.ctypes.data != x.ctypes.data and not _apart(g, x)) or not _apart(g, t):
                return 1, 0.0
        tt = as_t(t, n, n_cols)
        bad, denom = targets(tt, n, n_cols, before)
        if bad >= 0:
            return 1, 0.0
        if red == 3:  # batchmean
            denom = float(x.shape[0])
        mean = red == 0 or red == 3
        gscale = g0 / denom if mean else g0
        if g is None:
            gg = np.empty((1, 0), x.dtype) if rows else np.empty(0, x.dtype)
        else:
            gg = as_x(g, n, n_cols)
        ll = np.empty(0, x.dtype) if loss_out is None else loss_out.reshape(n)
        total = serial(_n_blocks(n, item_size * n_cols), as_x(x, n, n_cols), tt, *before, gg, gscale,
                       np.empty(0), ll, *after)
        return 0, total / denom if mean else total

    return fast


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_LABEL_DTYPES = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32))
_ENTRIES = {"loss": 0, "grad": 1, "loss_and_grad": 2}
_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2, "batchmean": 3}
_INT64_MAX = np.iinfo(np.int64).max
_ROW_LOSSES = frozenset(("softmax_xent", "multiclass_hinge", "cosine_similarity"))
_BATCHMEAN = frozenset(("kl_div",))


def _real(v):
    return type(v) is float or (type(v) is int and abs(v) < 1e300)


# each option's check on the value given (the defaults pass); an array option is checked by its loss
_OPTION_OK = {
    "weight": lambda v: v is None or type(v) is np.ndarray,
    "pos_weight": lambda v: v is None or type(v) is np.ndarray,
    "ignore_index": lambda v: type(v) is int and -_INT64_MAX - 1 <= v <= _INT64_MAX,
    "label_smoothing": lambda v: _real(v) and 0.0 <= v <= 1.0,
    "z_loss": lambda v: _real(v) and v >= 0.0,
    "delta": lambda v: _real(v) and 0.0 < v,
    "margin": lambda v: _real(v) and abs(v) < np.inf,
    "squared": lambda v: type(v) is bool,
    "log_target": lambda v: type(v) is bool,
    "mode": lambda v: v == "weston_watkins" or v == "crammer_singer",
    "beta": lambda v: _real(v) and 0.0 <= v < np.inf,
    "eps": lambda v: _real(v) and 0.0 <= v < np.inf,
    "gamma": lambda v: _real(v) and 0.0 <= v < np.inf,
    "alpha": lambda v: _real(v) and abs(v) < np.inf,
    "log_input": lambda v: type(v) is bool,
    "full": lambda v: type(v) is bool,
}


def _vector(v, dtype, shape):
    """An option array as the kernels take it: the empty stand-in for None, the array itself
    when plain and of exactly this dtype and shape, else False."""
    if v is None:
        return _R1[dtype]
    if v.dtype is dtype and v.shape == shape and v.flags.c_contiguous:
        return v
    return False


def _is_labels(t, x):
    return t.dtype in _LABEL_DTYPES and t.shape == x.shape[:-1] and t.flags.c_contiguous


def _is_values(t, x):
    return t.dtype is x.dtype and t.shape == x.shape and t.flags.c_contiguous


_NO_STREAM = (False,)  # small gradients are never streamed


def _softmax_xent_step(x, t, o):
    w = _vector(o["weight"], x.dtype, x.shape[-1:])
    if w is False or x.ndim < 2:
        return None
    if _is_labels(t, x):
        return (_FAST_SOFTMAX_XENT[x.shape[-1] <= _LANES_C],
                (w, o["ignore_index"], float(o["label_smoothing"]), float(o["z_loss"])), _NO_STREAM)
    if _is_values(t, x):
        return _FAST_SOFTMAX_XENT_PROBS, (w, float(o["label_smoothing"]), float(o["z_loss"])), ()
    return None


def _multiclass_hinge_step(x, t, o):
    w = _vector(o["weight"], x.dtype, x.shape[-1:])
    if w is False or x.ndim < 2 or not _is_labels(t, x):
        return None
    return (_FAST_MULTICLASS_HINGE,
            (w, float(o["margin"]), o["squared"], o["mode"] == "crammer_singer"), ())


def _sigmoid_bce_step(x, t, o):
    w = _vector(o["weight"], x.dtype, x.shape)  # broadcast weights take the general road
    pw = _vector(o["pos_weight"], x.dtype, x.shape[-1:])
    if w is False or pw is False or not _is_values(t, x):
        return None
    return _FAST_SIGMOID_BCE, (w.reshape(-1), pw), ()  # the kernel's items are flat


def _cosine_similarity_step(x, t, o):
    if x.ndim < 2 or not _is_values(t, x):
        return None
    return _FAST_COSINE_SIMILARITY, (_R1[x.dtype], 0.0, 0.0), ()


def _poisson_nll_step(x, t, o):
    if not _is_values(t, x):
        return None
    return _FAST_POISSON_NLL[_poisson_mode(o["log_input"], o["full"])], (float(o["eps"]), False), ()


def _sigmoid_focal_step(x, t, o):
    if not _is_values(t, x):
        return None
    gamma = float(o["gamma"])
    return _FAST_SIGMOID_FOCAL[gamma == 2.0], (float(o["alpha"]), gamma), ()


def _elementwise_step(fast, params):
    def step(x, t, o):
        return (fast, params(o), ()) if _is_values(t, x) else None
    return step


def _fast_elementwise(kernels, targets=_values):
    return _make_fast(kernels[0], False, targets, 1)


_FAST_SOFTMAX_XENT = {lanes: _make_fast(_SOFTMAX_XENT[lanes][0], True, _labels_counted, 1) for lanes in (False, True)}
_FAST_SOFTMAX_XENT_PROBS = _make_fast(_softmax_xent_probs_s, True, _values, 2)
_FAST_MULTICLASS_HINGE = _make_fast(_multiclass_hinge_s, True, _labels, 1)
_FAST_SIGMOID_BCE = _make_fast(_sigmoid_bce_s, False, _values, 8)
_FAST_COSINE_SIMILARITY = _make_fast(_cosine_similarity_s, True, _values, 2)
_FAST_POISSON_NLL = {mode: _fast_elementwise(k) for mode, k in _poisson_nll_k.items()}
_FAST_SIGMOID_FOCAL = {two: _fast_elementwise(k) for two, k in _sigmoid_focal_k.items()}

_STEPS = {
    "softmax_xent": _softmax_xent_step,
    "multiclass_hinge": _multiclass_hinge_step,
    "sigmoid_bce": _sigmoid_bce_step,
    "huber": _elementwise_step(_fast_elementwise(_huber_k), lambda o: (float(o["delta"]), False)),
    "hinge": _elementwise_step(_fast_elementwise(_hinge_k, _binary_labels), lambda o: (float(o["margin"]), o["squared"])),
    "mse": _elementwise_step(_fast_elementwise(_mse_k), lambda o: (0.0, False)),
    "mae": _elementwise_step(_fast_elementwise(_mae_k), lambda o: (0.0, False)),
    "kl_div": _elementwise_step(_fast_elementwise(_kl_div_k), lambda o: (o["log_target"], False)),
    "smooth_l1": _elementwise_step(_fast_elementwise(_smooth_l1_k), lambda o: (float(o["beta"]), False)),
    "log_cosh": _elementwise_step(_fast_elementwise(_log_cosh_k), lambda o: (0.0, False)),
    "msle": _elementwise_step(_fast_elementwise(_msle_k), lambda o: (0.0, False)),
    "poisson_nll": _poisson_nll_step,
    "sigmoid_focal": _sigmoid_focal_step,
    "cosine_similarity": _cosine_similarity_step,
}


def fast_call(loss, entry, x, target, out, reduction, grad_output, options, defaults, parallel_min):
    """The road's fast step (see fastloss.backends and the section's comment): plain C-contiguous
    float32/float64 inputs under ``parallel_min`` elements (one thread), labels of any integer
    dtype up to 32 bits and int64, options as Python scalars or arrays of their exact shape and
    dtype, a scalar grad_output, out None or a plain array; NotImplemented for anything else."""
    step = _STEPS.get(loss)
    want = _ENTRIES.get(entry)
    red = _REDUCTIONS.get(reduction)
    if step is None or want is None or red is None or type(x) is not np.ndarray or type(target) is not np.ndarray:
        return NotImplemented
    dtype = x.dtype
    if ((dtype is not _F32 and dtype is not _F64) or not 0 < x.size < parallel_min or x.ndim == 0
            or not x.flags.c_contiguous or (red == 3 and loss not in _BATCHMEAN)):
        return NotImplemented
    g0 = 1.0
    if want == 1:
        if not _real(grad_output):
            return NotImplemented
        g0 = float(grad_output)
    opts = defaults
    if options:
        opts = dict(defaults)
        for key, value in options.items():
            if key not in defaults or not _OPTION_OK[key](value):
                return NotImplemented  # an unknown option or value: the general road names it
            opts[key] = value
    plan = step(x, target, opts)
    if plan is None:
        return NotImplemented
    fast, before, after = plan
    grad = loss_out = None
    if want != 0:
        if out is None:
            grad = np.empty(x.shape, dtype)
        else:
            flags = out.flags if type(out) is np.ndarray else None
            if flags is None or out.dtype is not dtype or out.shape != x.shape or not (flags.c_contiguous and flags.writeable):
                return NotImplemented
            for a in before:  # weights (rare): apart from out
                if type(a) is np.ndarray and a.size and np.may_share_memory(a, out):
                    return NotImplemented
            grad = out
    elif out is not None:
        return NotImplemented
    if red == 2 and want != 1:
        loss_out = np.empty(x.shape[:-1] if loss in _ROW_LOSSES else x.shape, dtype)
    status, value = fast(x, target, grad, loss_out, before, after, g0, red)
    if status:
        return NotImplemented
    if want == 1:
        return grad
    value = loss_out if red == 2 else dtype.type(value)
    return value if want == 0 else (value, grad)

