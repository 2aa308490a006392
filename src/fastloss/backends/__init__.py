"""Backends: every module here exports the same kernel names with the same signatures.

The dispatch layer (``fastloss._dispatch``) has already validated and normalised every argument
when a kernel runs, so kernels never check arguments; they only compute. The contract:

Arrays
    ``x`` is C-contiguous float32, float64, float16 or bfloat16. Every other float array
    (targets, weights, ``grad``, ``loss_out``) has the dtype of ``x`` and is C-contiguous, except
    ``gscale_arr``, which is float64. ``labels`` is C-contiguous int64.

Half precision
    float16 arrives as ``np.float16``; bfloat16 as ``np.uint16`` holding its bits (NumPy has no
    bfloat16: the road views an ``ml_dtypes.bfloat16`` array or a torch tensor that way, so no
    backend needs ml_dtypes). A kernel converts half values as it loads them (no float32 copy of
    an array: registers, or scratch of a few rows per thread), computes items and rows in
    float32, sums in float64 over the same fixed blocks as for float32, and rounds ``grad`` and
    ``loss_out`` once from float32 to the half type: nearest-even, beyond the range to +-inf,
    NaN stays NaN, subnormals kept. ``grad`` may be ``x`` as for any dtype.

Row losses (class axis last), ``x`` of shape ``(N, C)``::

    softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads) -> float
    softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads) -> float
    multiclass_hinge(x, labels, weight, margin, squared, crammer_singer,
                     grad, gscale, gscale_arr, loss_out, n_threads) -> float
    cosine_similarity(x, target, grad, gscale, gscale_arr, loss_out, n_threads) -> float
    label_weight_sum(labels, n_classes, ignore_index, has_ignore, weight) -> (float, int)
    binary_label_check(target, n_threads) -> int
                                           (hinge: first label not in {-1, 0, +1}, NaN passes; or -1)

Elementwise losses, ``x`` flattened to shape ``(n,)``::

    sigmoid_bce(x, target, weight, pos_weight, grad, gscale, gscale_arr, loss_out, n_threads)
    huber(x, target, delta, grad, gscale, gscale_arr, loss_out, n_threads)
    hinge(x, target, margin, squared, grad, gscale, gscale_arr, loss_out, n_threads)
    mse(x, target, grad, gscale, gscale_arr, loss_out, n_threads)
    mae(x, target, grad, gscale, gscale_arr, loss_out, n_threads)
    kl_div(x, target, log_target, grad, gscale, gscale_arr, loss_out, n_threads)
    smooth_l1(x, target, beta, grad, gscale, gscale_arr, loss_out, n_threads)
    log_cosh(x, target, grad, gscale, gscale_arr, loss_out, n_threads)
    msle(x, target, grad, gscale, gscale_arr, loss_out, n_threads)
    poisson_nll(x, target, log_input, full, eps, grad, gscale, gscale_arr, loss_out, n_threads)
    sigmoid_focal(x, target, alpha, gamma, grad, gscale, gscale_arr, loss_out, n_threads)

Arguments common to every loss kernel
    ``weight``      ``(C,)`` class weights (row losses), ``(n,)`` element weights (sigmoid_bce,
                    already broadcast), or ``None``.
    ``pos_weight``  ``(P,)`` or ``None``; element ``i`` uses ``pos_weight[i % P]`` (the last axis).
    ``grad``        output of the shape of ``x``, or ``None`` for the loss alone. It may be ``x``
                    itself (in place): a kernel reads everything it needs from a row/element
                    before it writes that row/element's gradient.
    ``gscale``      float: the gradient is d(item loss)/dx times ``gscale`` (``grad_output``
                    divided by the mean's denominator) ...
    ``gscale_arr``  ... times ``gscale_arr[i]`` for item ``i`` when not ``None`` (the per-item
                    ``grad_output`` of ``reduction="none"``; float64, one value per row or
                    element).
    ``loss_out``    ``(N,)`` (row losses) or ``(n,)`` (elementwise), or ``None``: receives each
                    item's loss, weights applied (``reduction="none"``).
    ``n_threads``   CPU threads to use (1 = serial); backends without threads ignore it.
    return          the sum of every item's (weighted) loss as a Python float, accumulated in
                    float64 over fixed blocks of items and then over the blocks in order, so the
                    result is bitwise identical for any thread count.

Item losses (per row or element) are exactly the formulas of API.md; ``fastloss.reference``
holds them in float64. ``label_weight_sum`` is the pre-pass over class labels: it returns the
mean's denominator (the sum of ``weight[y]``, or the count, over rows whose label is not
``ignore_index`` when ``has_ignore``) and the position of the first label outside ``[0, C)``
that is not ignored, or -1. It writes nothing; the dispatch layer raises on a bad label before
any loss kernel runs, so loss kernels may trust their labels.

The road's fast step (optional)
    ``fast_call(loss, entry, x, target, out, reduction, grad_output, options, defaults,
    parallel_min)``: the dispatch layer offers every host call to it first, before any
    validation (``entry`` is 'loss', 'grad' or 'loss_and_grad', ``options`` the options given,
    ``defaults`` the loss's options with their defaults). Below ``parallel_min`` input elements
    it returns the public entry point's result where it can check the whole call cheaply,
    running the kernels above on one thread, and ``NotImplemented`` for anything else, which the
    general road then validates. It must return exactly (bitwise) what the general road returns.
    The hot-loop call (32 x 10) is mostly this.

The ``cuda`` backend (``numba_cuda``, with its kernels in ``cuda_kernels``) takes device arrays
and keeps its own conventions: ``fastloss._device`` validates and allocates, then calls its
``launch`` with the kernel name and the loss-specific arguments above.
"""

KERNEL_NAMES = (
    "softmax_xent",
    "softmax_xent_probs",
    "multiclass_hinge",
    "label_weight_sum",
    "binary_label_check",
    "sigmoid_bce",
    "huber",
    "hinge",
    "mse",
    "mae",
    "kl_div",
    "smooth_l1",
    "log_cosh",
    "msle",
    "poisson_nll",
    "sigmoid_focal",
    "cosine_similarity",
)
