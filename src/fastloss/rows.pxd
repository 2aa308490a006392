# cython: language_level=3
"""Row-level fastloss kernels for ``cimport`` by other Cython extensions (float64, nogil).

    from fastloss.rows cimport softmax_xent_row

Call them inside your own ``prange``: each touches only its own row. They are built from the
formulas of ``fastloss.formulas`` (the same ones the compiled kernels use) and follow
``fastloss.reference``: -inf logits are masks, a +inf logit or a NaN makes the row NaN.
Build as ``fastloss.formulas`` says: ``include_path`` and ``include_dirs`` both
``[fastloss.get_include()]``.
"""

from libc.math cimport exp, log, INFINITY
from fastloss.formulas cimport softmax_xent_loss, softmax_xent_coef


cdef inline double softmax_xent_row(const double* x, Py_ssize_t n_classes, Py_ssize_t y,
                                    double label_smoothing, double z_loss, double* grad) noexcept nogil:
    """Cross-entropy lse(x) - x[y] (+ smoothing and z-loss) of one row, without class weights;
    writes d(loss)/dx into ``grad`` when it is not NULL (``grad`` may be ``x``). 0 <= y < C."""
    cdef Py_ssize_t j
    cdef double m = x[0], s = 0.0, lse, x_y = x[y], x_sum = 0.0, inv_c = 1.0 / n_classes, coef
    for j in range(1, n_classes):
        if x[j] > m or x[j] != x[j]:
            m = x[j]
    if m == -INFINITY:
        m = 0.0
    for j in range(n_classes):
        s += exp(x[j] - m)
        if label_smoothing != 0:
            x_sum += x[j]
    lse = m + log(s)
    coef = softmax_xent_coef(lse, 1.0, label_smoothing, inv_c, n_classes, z_loss)
    if grad != NULL:
        for j in range(n_classes):
            grad[j] = exp(x[j] - m) / s * coef - label_smoothing * inv_c
        grad[y] -= 1.0 - label_smoothing
    return softmax_xent_loss(lse, x_y, 1.0, label_smoothing, inv_c, n_classes, x_sum, z_loss)

