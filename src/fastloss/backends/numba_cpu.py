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

__all__ = list(KERNEL_NAMES)


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

# Empty stand-ins for None, per dtype: 1-D for vectors, (1, 0) for a 2-D gradient (its row 0 is
# an empty row, the "no gradient" signal of the row helpers).
_E1 = {4: np.empty(0, np.float32), 8: np.empty(0, np.float64)}
_E2 = {4: np.empty((1, 0), np.float32), 8: np.empty((1, 0), np.float64)}


def _readonly(a):
    a.flags.writeable = False
    return a


# Inputs are always passed as read-only arrays (writeable ones as read-only views, which costs
# ~0.3 us): Numba types read-only and writeable arrays apart, so this halves the number of
# compilations (one specialisation serves both) and the empty stand-ins match them. The outputs
# (grad, loss_out) stay writeable. ``grad`` may still be ``x``: the kernels detect that through
# the data pointers, which views share.
_R1 = {4: _readonly(np.empty(0, np.float32)), 8: _readonly(np.empty(0, np.float64))}
_R64 = _readonly(np.empty(0, np.float64))


def _ro(a):
    """a as a read-only array (a view of it if it is writeable)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _ro_or(a, empty):
    return empty if a is None else _ro(a)

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


# Items per block: the block count depends on the shape only (determinism), is 1 for small
# inputs (no threading overhead there) and at most _MAX_BLOCKS (enough to balance many cores).
_MAX_BLOCKS = 256
_BLOCK_ELEMENTS = 16384


def _n_blocks(n_items, item_size):
    nb = (n_items * max(item_size, 1)) // _BLOCK_ELEMENTS
    return max(1, min(nb, _MAX_BLOCKS, n_items))


def _twice(fn):
    """(serial, parallel) compilations of the same Python function."""
    return njit(**_OPTS)(fn), njit(parallel=True, **_OPTS)(fn)


# ---------------------------------------------------------------------------------------------
# softmax_xent with class indices
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _softmax_xent_block(x, labels, w, w_sum, ignore_index, eps, z, g, gscale, gs_arr, loss_out, lo, hi):
    n_classes = x.shape[1]
    write_g = g.shape[1] > 0
    has_gs = gs_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = 0.0
    for i in range(lo, hi):
        y = labels[i]
        gi = g[i] if write_g else g[0]
        if y == ignore_index:
            loss = 0.0
            for j in range(gi.shape[0]):
                gi[j] = 0.0
        elif y < 0 or y >= n_classes:  # never trusted for memory safety
            loss = np.nan
            for j in range(gi.shape[0]):
                gi[j] = np.nan
        else:
            gs = gscale * gs_arr[i] if has_gs else gscale
            loss = fm.softmax_xent_row(x[i], y, w, w_sum, eps, z, gi, gs)
        if has_lo:
            loss_out[i] = loss
        acc += loss
    return acc


def _softmax_xent_impl(x, labels, w, ignore_index, eps, z, g, gscale, gs_arr, loss_out, n_blocks):
    n = x.shape[0]
    w_sum = 0.0
    if w.shape[0] > 0:
        for j in range(w.shape[0]):
            w_sum += w[j]
    else:
        w_sum = float(x.shape[1])
    sums = np.empty(n_blocks)
    for b in prange(n_blocks):
        sums[b] = _softmax_xent_block(x, labels, w, w_sum, ignore_index, eps, z, g, gscale, gs_arr,
                                      loss_out, (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
    total = 0.0
    for b in range(n_blocks):
        total += sums[b]
    return total


_softmax_xent_s, _softmax_xent_p = _twice(_softmax_xent_impl)


def softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads):
    k = x.dtype.itemsize
    return _run(_softmax_xent_s, _softmax_xent_p, n_threads,
                _ro(x), _ro(labels), _ro_or(weight, _R1[k]), int(ignore_index), float(label_smoothing),
                float(z_loss), _E2[k] if grad is None else grad, float(gscale),
                _ro_or(gscale_arr, _R64), _E1[k] if loss_out is None else loss_out,
                _n_blocks(x.shape[0], x.shape[1]))


# ---------------------------------------------------------------------------------------------
# softmax_xent with probability targets
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _softmax_xent_probs_block(x, t, w, eps, z, g, gscale, gs_arr, loss_out, lo, hi):
    write_g = g.shape[1] > 0
    has_gs = gs_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = 0.0
    for i in range(lo, hi):
        gi = g[i] if write_g else g[0]
        gs = gscale * gs_arr[i] if has_gs else gscale
        loss = fm.softmax_xent_probs_row(x[i], t[i], w, eps, z, gi, gs)
        if has_lo:
            loss_out[i] = loss
        acc += loss
    return acc


def _softmax_xent_probs_impl(x, t, w, eps, z, g, gscale, gs_arr, loss_out, n_blocks):
    n = x.shape[0]
    sums = np.empty(n_blocks)
    for b in prange(n_blocks):
        sums[b] = _softmax_xent_probs_block(x, t, w, eps, z, g, gscale, gs_arr, loss_out,
                                            (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
    total = 0.0
    for b in range(n_blocks):
        total += sums[b]
    return total


_softmax_xent_probs_s, _softmax_xent_probs_p = _twice(_softmax_xent_probs_impl)


def softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads):
    k = x.dtype.itemsize
    return _run(_softmax_xent_probs_s, _softmax_xent_probs_p, n_threads,
                _ro(x), _ro(probs), _ro_or(weight, _R1[k]), float(label_smoothing), float(z_loss),
                _E2[k] if grad is None else grad, float(gscale),
                _ro_or(gscale_arr, _R64), _E1[k] if loss_out is None else loss_out,
                _n_blocks(x.shape[0], 2 * x.shape[1]))


# ---------------------------------------------------------------------------------------------
# multiclass_hinge
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _multiclass_hinge_block(x, labels, w, margin, squared, crammer_singer, g, gscale, gs_arr,
                            loss_out, lo, hi):
    n_classes = x.shape[1]
    write_g = g.shape[1] > 0
    has_gs = gs_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    acc = 0.0
    for i in range(lo, hi):
        y = labels[i]
        gi = g[i] if write_g else g[0]
        if y < 0 or y >= n_classes:
            loss = np.nan
            for j in range(gi.shape[0]):
                gi[j] = np.nan
        else:
            gs = gscale * gs_arr[i] if has_gs else gscale
            loss = fm.multiclass_hinge_row(x[i], y, w, margin, squared, crammer_singer, gi, gs)
        if has_lo:
            loss_out[i] = loss
        acc += loss
    return acc


def _multiclass_hinge_impl(x, labels, w, margin, squared, crammer_singer, g, gscale, gs_arr,
                           loss_out, n_blocks):
    n = x.shape[0]
    sums = np.empty(n_blocks)
    for b in prange(n_blocks):
        sums[b] = _multiclass_hinge_block(x, labels, w, margin, squared, crammer_singer, g, gscale,
                                          gs_arr, loss_out, (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
    total = 0.0
    for b in range(n_blocks):
        total += sums[b]
    return total


_multiclass_hinge_s, _multiclass_hinge_p = _twice(_multiclass_hinge_impl)


def multiclass_hinge(x, labels, weight, margin, squared, crammer_singer,
                     grad, gscale, gscale_arr, loss_out, n_threads):
    k = x.dtype.itemsize
    return _run(_multiclass_hinge_s, _multiclass_hinge_p, n_threads,
                _ro(x), _ro(labels), _ro_or(weight, _R1[k]), float(margin), bool(squared),
                bool(crammer_singer), _E2[k] if grad is None else grad, float(gscale),
                _ro_or(gscale_arr, _R64), _E1[k] if loss_out is None else loss_out,
                _n_blocks(x.shape[0], x.shape[1]))


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
            v = np.float64(w[y])
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
def _binary_label_check(t):
    # a branch-free count first (it vectorises); the position is searched only on failure
    n_bad = 0
    for i in range(t.shape[0]):
        v = t[i]
        n_bad += (v != 1) & (v != -1) & (v != 0) & (v == v)
    if n_bad:
        for i in range(t.shape[0]):
            v = t[i]
            if v != 1 and v != -1 and v != 0 and v == v:
                return i
    return -1


def binary_label_check(target):
    """Position of the first label not in {-1, 0, +1} (NaN passes: NaN in, NaN out), or -1."""
    return int(_binary_label_check(_ro(target)))


def label_weight_sum(labels, n_classes, ignore_index, has_ignore, weight):
    w = _R64 if weight is None else _ro(weight)
    denom, bad = _label_weight_sum(_ro(labels), int(n_classes), int(ignore_index), bool(has_ignore), w)
    return float(denom), int(bad)


# ---------------------------------------------------------------------------------------------
# Elementwise losses: one block function per loss, one generic driver shape
# ---------------------------------------------------------------------------------------------


@njit(**_OPTS)
def _sigmoid_bce_block(x, t, w, pw, g, gscale, gs_arr, loss_out, lo, hi):
    has_w = w.shape[0] > 0
    n_pw = pw.shape[0]
    write_g = g.shape[0] > 0
    has_gs = gs_arr.shape[0] > 0
    has_lo = loss_out.shape[0] > 0
    k = lo % n_pw if n_pw > 0 else 0
    acc = 0.0
    for i in range(lo, hi):
        wi = np.float64(w[i]) if has_w else 1.0
        pwi = 1.0
        if n_pw > 0:
            pwi = np.float64(pw[k])
            k += 1
            if k == n_pw:
                k = 0
        loss, d = fm.sigmoid_bce_item(x[i], t[i], wi, pwi)
        if write_g:
            g[i] = d * (gscale * gs_arr[i] if has_gs else gscale)
        if has_lo:
            loss_out[i] = loss
        acc += loss
    return acc


def _sigmoid_bce_impl(x, t, w, pw, g, gscale, gs_arr, loss_out, n_blocks):
    n = x.shape[0]
    sums = np.empty(n_blocks)
    for b in prange(n_blocks):
        sums[b] = _sigmoid_bce_block(x, t, w, pw, g, gscale, gs_arr, loss_out,
                                     (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
    total = 0.0
    for b in range(n_blocks):
        total += sums[b]
    return total


_sigmoid_bce_s, _sigmoid_bce_p = _twice(_sigmoid_bce_impl)


def sigmoid_bce(x, target, weight, pos_weight, grad, gscale, gscale_arr, loss_out, n_threads):
    k = x.dtype.itemsize
    r1, e1 = _R1[k], _E1[k]
    return _run(_sigmoid_bce_s, _sigmoid_bce_p, n_threads,
                _ro(x), _ro(target), _ro_or(weight, r1), _ro_or(pos_weight, r1),
                e1 if grad is None else grad, float(gscale), _ro_or(gscale_arr, _R64),
                e1 if loss_out is None else loss_out, _n_blocks(x.shape[0], 8))


_ECHUNK = 256


def _make_elementwise(item):
    """Serial/parallel kernels of an elementwise loss whose item is item(x, t, p0, p1)."""

    @njit(**_OPTS)
    def block(x, t, p0, p1, g, gscale, gs_arr, loss_out, lo, hi):
        # Chunks of _ECHUNK items: the item loop stores the losses in a small buffer (no
        # reduction in it, unsigned indices: LLVM vectorises it), then the buffer is summed over
        # 16 fixed lanes. The order depends on the block bounds only: deterministic.
        write_g = g.shape[0] > 0
        has_gs = gs_arr.shape[0] > 0
        has_lo = loss_out.shape[0] > 0
        simple = write_g and not has_gs and not has_lo
        buf = np.empty(_ECHUNK)
        acc = 0.0
        for c0 in range(lo, hi, _ECHUNK):
            m = min(_ECHUNK, hi - c0)
            base = np.uint64(c0)
            if simple:  # the *_and_grad case, kept free of branches
                for kk in range(m):
                    k = np.uint64(kk)
                    i = base + k
                    loss, d = item(x[i], t[i], p0, p1)
                    g[i] = d * gscale
                    buf[k] = loss
            else:
                for kk in range(m):
                    k = np.uint64(kk)
                    i = base + k
                    loss, d = item(x[i], t[i], p0, p1)
                    if write_g:
                        g[i] = d * (gscale * gs_arr[i] if has_gs else gscale)
                    if has_lo:
                        loss_out[i] = loss
                    buf[k] = loss
            acc += fm._sum16(buf, 0, m)
        return acc

    def impl(x, t, p0, p1, g, gscale, gs_arr, loss_out, n_blocks):
        n = x.shape[0]
        sums = np.empty(n_blocks)
        for b in prange(n_blocks):
            sums[b] = block(x, t, p0, p1, g, gscale, gs_arr, loss_out,
                            (b * n) // n_blocks, ((b + 1) * n) // n_blocks)
        total = 0.0
        for b in range(n_blocks):
            total += sums[b]
        return total

    return _twice(impl)


@njit(inline="always")
def _huber2(x, t, delta, unused):
    return fm.huber_item(x, t, delta)


@njit(inline="always")
def _hinge2(x, t, margin, squared):
    return fm.hinge_item(x, t, margin, squared)


@njit(inline="always")
def _mse2(x, t, a, b):
    return fm.mse_item(x, t)


@njit(inline="always")
def _mae2(x, t, a, b):
    return fm.mae_item(x, t)


@njit(inline="always")
def _kl_div2(x, t, log_target, unused):
    return fm.kl_div_item(x, t, log_target)


_huber_k = _make_elementwise(_huber2)
_hinge_k = _make_elementwise(_hinge2)
_mse_k = _make_elementwise(_mse2)
_mae_k = _make_elementwise(_mae2)
_kl_div_k = _make_elementwise(_kl_div2)


def _elementwise(kernels, x, target, p0, p1, grad, gscale, gscale_arr, loss_out, n_threads):
    e1 = _E1[x.dtype.itemsize]
    return _run(kernels[0], kernels[1], n_threads, _ro(x), _ro(target), p0, p1,
                e1 if grad is None else grad, float(gscale), _ro_or(gscale_arr, _R64),
                e1 if loss_out is None else loss_out, _n_blocks(x.shape[0], 1))


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
