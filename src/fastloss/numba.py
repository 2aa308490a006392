"""Numba callers: fastloss's row and item formulas as ``@njit`` functions to call from your own
``@njit`` (or ``parallel=True``) code, with no Python in between. They are the very functions the
numba backend is built from; dtype-generic (float32 or float64 arrays, float64 results).

Rows (class axis last; ``w`` is an empty array for no class weights, ``g`` an empty array for
the loss alone, or the gradient row to write, which may be ``x`` itself)::

    softmax_xent_row(x, y, w, w_sum, label_smoothing, z_loss, g, gscale) -> loss
    softmax_xent_probs_row(x, t, w, label_smoothing, z_loss, g, gscale) -> loss
    multiclass_hinge_row(x, y, w, margin, squared, crammer_singer, g, gscale) -> loss
    cosine_similarity_row(x, t, g, gscale) -> loss

``w_sum`` is ``w.sum()`` (``C`` without weights); the gradient written is ``gscale`` times
d(loss)/dx. Items (one element each) return ``(loss, dloss/dx)``::

    sigmoid_bce_item(x, t, w, pos_weight)   huber_item(x, t, delta)   hinge_item(x, t, margin, squared)
    mse_item(x, t)   mae_item(x, t)   kl_div_item(x, t, log_target)   smooth_l1_item(x, t, beta)
    log_cosh_item(x, t)   msle_item(x, t)   poisson_nll_item(x, t, log_input, full, eps)
    sigmoid_focal_item(x, t, alpha, gamma)

All return float64; huber, hinge, mse and mae compute in float64, the others in the precision of
``x`` (float32 math for a float32 ``x``, ``t`` converted to it), as the kernels do.

Example::

    from numba import njit, prange
    from fastloss.numba import softmax_xent_row

    @njit(parallel=True)
    def my_step(logits, labels, grad):
        no_weights = np.empty(0, logits.dtype)
        total = 0.0
        for i in prange(logits.shape[0]):
            total += softmax_xent_row(logits[i], labels[i], no_weights, logits.shape[1], 0.0, 0.0,
                                      grad[i], 1.0 / logits.shape[0])
        return total / logits.shape[0]
"""

from .backends._numba_math import (  # noqa: F401
    cosine_similarity_row,
    hinge_item,
    huber_item,
    kl_div_item,
    log_cosh_item,
    mae_item,
    mse_item,
    msle_item,
    multiclass_hinge_row,
    poisson_nll_item,
    sigmoid_bce_item,
    sigmoid_focal_item,
    smooth_l1_item,
    softmax_xent_probs_row,
    softmax_xent_row,
)

__all__ = ["softmax_xent_row", "softmax_xent_probs_row", "multiclass_hinge_row", "cosine_similarity_row",
           "sigmoid_bce_item", "huber_item", "hinge_item", "mse_item", "mae_item", "kl_div_item",
           "smooth_l1_item", "log_cosh_item", "msle_item", "poisson_nll_item", "sigmoid_focal_item"]
