# cython: language_level=3, boundscheck=False, wraparound=False
"""A user extension built on fastloss's Cython API.

``fastloss.rows`` and ``fastloss.formulas`` export fastloss's per-row and per-item loss formulas
as ``nogil`` C functions (float64), the very ones fastloss's compiled kernels run. Here they go
inside this extension's own ``prange`` loops, fused with work fastloss does not do for you:

* ``xent_and_accuracy``: softmax cross-entropy, its gradient and the top-1 accuracy of a batch of
  logits in one parallel pass over the rows;
* ``masked_huber``: the Huber loss and gradient of the elements where a mask is set (0 elsewhere).
"""

from cython.parallel cimport prange

from fastloss.formulas cimport huber_item
from fastloss.rows cimport softmax_xent_row


cdef inline Py_ssize_t argmax(const double* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j, best = 0
    for j in range(1, n):
        if x[j] > x[best]:
            best = j
    return best


def xent_and_accuracy(const double[:, ::1] logits, const long long[::1] labels, double label_smoothing,
                      double[:, ::1] grad):
    """(sum of the rows' cross-entropy, number of rows whose argmax is the label); writes the
    gradient of the summed loss into ``grad`` (which may be ``logits`` itself)."""
    cdef Py_ssize_t i, n = logits.shape[0], c = logits.shape[1]
    cdef double total = 0.0
    cdef Py_ssize_t correct = 0
    if labels.shape[0] != n or grad.shape[0] != n or grad.shape[1] != c:
        raise ValueError("logits (N, C), labels (N,) and grad (N, C) must agree")
    for i in range(n):
        if not 0 <= labels[i] < c:
            raise ValueError(f"labels[{i}] = {labels[i]} is not a class index in [0, {c})")
    for i in prange(n, nogil=True, schedule="static"):
        correct += argmax(&logits[i, 0], c) == labels[i]  # read before grad may overwrite the row
        total += softmax_xent_row(&logits[i, 0], c, labels[i], label_smoothing, 0.0, &grad[i, 0])
    return total, correct


def masked_huber(const double[::1] pred, const double[::1] target, const unsigned char[::1] mask,
                 double delta, double[::1] grad):
    """Sum of the Huber losses where ``mask`` is set; writes their gradient into ``grad`` (0 where
    the mask is not set)."""
    cdef Py_ssize_t i, n = pred.shape[0]
    cdef double total = 0.0
    if target.shape[0] != n or mask.shape[0] != n or grad.shape[0] != n:
        raise ValueError("pred, target, mask and grad must have the same length")
    for i in prange(n, nogil=True, schedule="static"):
        if mask[i]:
            total += huber_item(pred[i] - target[i], delta, &grad[i])
        else:
            grad[i] = 0.0
    return total
