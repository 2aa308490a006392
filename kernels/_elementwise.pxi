# The elementwise losses share one driver: a block function that runs one loss's item formula
# over a range of elements. The loops live in fl_elementwise.h (fl_ew_block_*): vectorised loops
# over the item formulas of fl_formulas.h, the block's losses summed in fixed double lanes. Items
# are computed in double (float32 inputs are widened exactly; for them the losses with exp/log --
# sigmoid_bce, kl_div, log_cosh, msle, poisson_nll, sigmoid_focal -- use the float variants of
# fl_formulas.h), the gradient is rounded once. Half inputs run the float code, a chunk converted
# at a time (fl_elementwise.h).

cdef struct EwParams:
    double a          # huber: delta; hinge: margin; smooth_l1: beta; poisson_nll: eps;
                      # sigmoid_focal: alpha
    double b          # sigmoid_focal: gamma
    int flag          # hinge: squared; kl_div: log_target; poisson_nll: EW_LOG_INPUT | EW_FULL bits
    Py_ssize_t n_pw   # sigmoid_bce: length of pos_weight (0: none)


cdef inline double _ew_block(EwKind kind, const floating* x, const floating* t, const floating* w,
                             const floating* pw, EwParams prm, Py_ssize_t start, Py_ssize_t stop,
                             floating* g, double gscale, const double* gscale_arr, floating* lo,
                             bint stream, int half) noexcept nogil:
    if floating is float:
        if half == HALF_F16:
            return fl_ew_block_h(<int>kind, <const uint16_t*>x, <const uint16_t*>t, <const uint16_t*>w,
                                 <const uint16_t*>pw, prm.n_pw, prm.a, prm.b, prm.flag, start, stop,
                                 <uint16_t*>g, gscale, gscale_arr, <uint16_t*>lo, stream)
        if half == HALF_BF16:
            return fl_ew_block_b(<int>kind, <const uint16_t*>x, <const uint16_t*>t, <const uint16_t*>w,
                                 <const uint16_t*>pw, prm.n_pw, prm.a, prm.b, prm.flag, start, stop,
                                 <uint16_t*>g, gscale, gscale_arr, <uint16_t*>lo, stream)
        return fl_ew_block_f(<int>kind, x, t, w, pw, prm.n_pw, prm.a, prm.b, prm.flag, start, stop,
                             g, gscale, gscale_arr, lo, stream)
    else:
        return fl_ew_block_d(<int>kind, x, t, w, pw, prm.n_pw, prm.a, prm.b, prm.flag, start, stop,
                             g, gscale, gscale_arr, lo, stream)


cdef double _elementwise(EwKind kind, const floating[::1] x, const floating[::1] t,
                         const floating[::1] weight, const floating[::1] pos_weight, EwParams prm,
                         floating[::1] grad, double gscale, const double[::1] gscale_arr,
                         floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t n = x.shape[0]
    cdef double total
    cdef const floating* xp
    cdef const floating* tp
    cdef const floating* wp = NULL
    cdef const floating* pwp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gscale_ptr = NULL
    if t.shape[0] != n:
        raise ValueError(f"elementwise loss: {t.shape[0]} targets for {n} inputs")
    if weight is not None and weight.shape[0] != n:
        raise ValueError(f"elementwise loss: {weight.shape[0]} weights for {n} inputs")
    if grad is not None and grad.shape[0] != n:
        raise ValueError(f"elementwise loss: grad of {grad.shape[0]} for {n} inputs")
    if loss_out is not None and loss_out.shape[0] != n:
        raise ValueError(f"elementwise loss: loss_out of {loss_out.shape[0]} for {n} inputs")
    if gscale_arr is not None and gscale_arr.shape[0] != n:
        raise ValueError(f"elementwise loss: gscale_arr of {gscale_arr.shape[0]} for {n} inputs")
    if n == 0:
        return 0.0
    xp = &x[0]
    tp = &t[0]
    if weight is not None:
        wp = &weight[0]
    prm.n_pw = 0
    if pos_weight is not None and pos_weight.shape[0] > 0:
        pwp = &pos_weight[0]
        prm.n_pw = pos_weight.shape[0]
    if grad is not None:
        gp = &grad[0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _elementwise_all(kind, xp, tp, wp, pwp, prm, n, gp, gscale, gscale_ptr, lp, n_threads, 0)
    return total


cdef double _elementwise_half(EwKind kind, x, t, weight, pos_weight, EwParams prm, grad, double gscale,
                              const double[::1] gscale_arr, loss_out, int n_threads, int half) except? -1:
    """_elementwise for half arrays (float16, or bfloat16 bits): their data, checked, to the
    float kernels in half mode."""
    cdef Py_ssize_t n = x.size
    cdef double total
    cdef const double* gscale_ptr = NULL
    cdef const void* xp = half_ptr(x, x, n, False, "x")
    cdef const void* tp = half_ptr(t, x, n, False, "target")
    cdef const void* wp = half_ptr(weight, x, n, False, "weight")
    cdef const void* pwp = NULL
    cdef void* gp = half_ptr(grad, x, n, True, "grad")
    cdef void* lp = half_ptr(loss_out, x, n, True, "loss_out")
    if gscale_arr is not None:
        if gscale_arr.shape[0] != n:
            raise ValueError(f"elementwise loss: gscale_arr of {gscale_arr.shape[0]} for {n} inputs")
        gscale_ptr = &gscale_arr[0] if n > 0 else NULL
    prm.n_pw = 0
    if pos_weight is not None and pos_weight.size > 0:
        pwp = half_ptr(pos_weight, x, pos_weight.size, False, "pos_weight")
        prm.n_pw = pos_weight.size
    if n == 0:
        return 0.0
    with nogil:
        total = _elementwise_all[float](kind, <const float*>xp, <const float*>tp, <const float*>wp,
                                        <const float*>pwp, prm, n, <float*>gp, gscale, gscale_ptr,
                                        <float*>lp, n_threads, half)
    return total


cdef double _elementwise_all(EwKind kind, const floating* xp, const floating* tp, const floating* wp,
                             const floating* pwp, EwParams prm, Py_ssize_t n, floating* gp,
                             double gscale, const double* gscale_arr, floating* lp, int n_threads,
                             int half) noexcept nogil:
    """Every element (n >= 1) in the fixed blocks on n_threads threads: the sum of the losses
    (half: the arrays hold that half type's bits)."""
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t nb = item_blocks(n, 1), b
    # streaming stores for a gradient that is not the input and too big to stay in cache
    cdef bint stream = (gp != NULL and <const floating*>gp != xp
                        and n * (2 if half else sizeof(floating)) >= STREAM_MIN_BYTES)
    for b in prange(nb, schedule='static', num_threads=n_threads):
        sums[b] = _ew_block(kind, xp, tp, wp, pwp, prm, block_start(b, nb, n),
                            block_start(b + 1, nb, n), gp, gscale, gscale_arr, lp, stream, half)
    return sum_blocks(sums, nb)


cdef object _run_elementwise(EwKind kind, x, target, weight, pos_weight, double a, int flag,
                             grad, gscale, gscale_arr, loss_out, n_threads, double b=0.0):
    cdef EwParams prm
    prm.a = a
    prm.b = b
    prm.flag = flag
    prm.n_pw = 0
    x, target, weight, pos_weight = flat(x), flat(target), flat(weight), flat(pos_weight)
    grad, gscale_arr, loss_out = flat(grad), flat(gscale_arr), flat(loss_out)
    threads = clamp_threads(n_threads)
    half = half_kind(x)
    if half:
        return _elementwise_half(kind, x, target, weight, pos_weight, prm, grad, gscale, gscale_arr,
                                 loss_out, threads, half)
    if is_f32(x):
        return _elementwise[float](kind, x, target, weight, pos_weight, prm, grad, gscale,
                                   gscale_arr, loss_out, threads)
    return _elementwise[double](kind, x, target, weight, pos_weight, prm, grad, gscale,
                                gscale_arr, loss_out, threads)


def sigmoid_bce(x, target, weight, pos_weight, grad, gscale, gscale_arr, loss_out, n_threads):
    """Binary cross-entropy with logits (stable); see fastloss.backends."""
    return _run_elementwise(EW_SIGMOID_BCE, x, target, weight, pos_weight, 0.0, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def huber(x, target, delta, grad, gscale, gscale_arr, loss_out, n_threads):
    """Huber loss; see fastloss.backends."""
    return _run_elementwise(EW_HUBER, x, target, None, None, delta, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def hinge(x, target, margin, squared, grad, gscale, gscale_arr, loss_out, n_threads):
    """Binary hinge (squared on request); see fastloss.backends."""
    return _run_elementwise(EW_HINGE, x, target, None, None, margin, bool(squared),
                            grad, gscale, gscale_arr, loss_out, n_threads)


def mse(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    """Squared error; see fastloss.backends."""
    return _run_elementwise(EW_MSE, x, target, None, None, 0.0, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def mae(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    """Absolute error; see fastloss.backends."""
    return _run_elementwise(EW_MAE, x, target, None, None, 0.0, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def kl_div(x, target, log_target, grad, gscale, gscale_arr, loss_out, n_threads):
    """Pointwise KL divergence; see fastloss.backends."""
    return _run_elementwise(EW_KL_DIV, x, target, None, None, 0.0, bool(log_target),
                            grad, gscale, gscale_arr, loss_out, n_threads)


def smooth_l1(x, target, beta, grad, gscale, gscale_arr, loss_out, n_threads):
    """Smooth L1 (beta = 0: L1); see fastloss.backends."""
    return _run_elementwise(EW_SMOOTH_L1, x, target, None, None, beta, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def log_cosh(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    """log(cosh(x - target)), stable for any difference; see fastloss.backends."""
    return _run_elementwise(EW_LOG_COSH, x, target, None, None, 0.0, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def msle(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    """Mean squared logarithmic error (Keras' clamp at 1e-7); see fastloss.backends."""
    return _run_elementwise(EW_MSLE, x, target, None, None, 0.0, False,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def poisson_nll(x, target, log_input, full, eps, grad, gscale, gscale_arr, loss_out, n_threads):
    """Poisson negative log-likelihood (PyTorch's poisson_nll_loss); see fastloss.backends."""
    cdef int flag = (EW_LOG_INPUT if log_input else 0) | (EW_FULL if full else 0)
    return _run_elementwise(EW_POISSON_NLL, x, target, None, None, eps, flag,
                            grad, gscale, gscale_arr, loss_out, n_threads)


def sigmoid_focal(x, target, alpha, gamma, grad, gscale, gscale_arr, loss_out, n_threads):
    """Sigmoid focal loss (torchvision's sigmoid_focal_loss); see fastloss.backends."""
    return _run_elementwise(EW_SIGMOID_FOCAL, x, target, None, None, alpha, False,
                            grad, gscale, gscale_arr, loss_out, n_threads, gamma)


cdef inline Py_ssize_t _n_bad_labels(const floating* t, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i, n_bad = 0
    cdef floating v
    for i in range(start, stop):
        v = t[i]
        n_bad += (v != 1) & (v != -1) & (v != 0) & (v == v)
    return n_bad


cdef Py_ssize_t _n_bad_half_labels(const uint16_t* t, Py_ssize_t start, Py_ssize_t stop, int half) noexcept nogil:
    """_n_bad_labels of half labels, converted a chunk at a time."""
    cdef float buf[256]
    cdef Py_ssize_t m, n_bad = 0
    while start < stop:
        m = stop - start if stop - start < 256 else 256
        fl_half_load(half, t + start, buf, m)
        n_bad += _n_bad_labels[float](buf, 0, m)
        start += m
    return n_bad


cdef Py_ssize_t _first_bad_label(const floating* t, Py_ssize_t n, int threads, int half) noexcept nogil:
    """Position of the first of n labels not in {-1, 0, +1} (NaN passes: NaN in, NaN out), or
    -1 (half: t holds that half type's bits). A branch-free count runs first, in blocks on
    ``threads`` threads (it vectorises); the position is searched only on failure."""
    cdef Py_ssize_t i, b, nb = item_blocks(n, 1), n_bad = 0
    cdef Py_ssize_t counts[MAX_BLOCKS]
    cdef floating v
    for b in prange(nb, schedule='static', num_threads=threads):
        if half:
            counts[b] = _n_bad_half_labels(<const uint16_t*>t, block_start(b, nb, n), block_start(b + 1, nb, n), half)
        else:
            counts[b] = _n_bad_labels(t, block_start(b, nb, n), block_start(b + 1, nb, n))
    for b in range(nb):
        n_bad += counts[b]
    if n_bad:
        for i in range(n):
            v = fl_half_to_float(half, (<const uint16_t*>t)[i]) if half else t[i]
            if v != 1 and v != -1 and v != 0 and v == v:
                return i
    return -1


def binary_label_check(t, n_threads=1):
    """Position of the first label not in {-1, 0, +1} (NaN passes), or -1."""
    cdef Py_ssize_t first, n
    cdef int threads = clamp_threads(n_threads)
    cdef int half = half_kind(t)
    cdef const float[::1] tf
    cdef const double[::1] td
    cdef const void* tp
    t = flat(t)
    if half:
        n = t.size
        tp = half_ptr(t, t, n, False, "target")
        if n == 0:
            return -1
        with nogil:
            first = _first_bad_label[float](<const float*>tp, n, threads, half)
    elif is_f32(t):
        tf = t
        if tf.shape[0] == 0:
            return -1
        with nogil:
            first = _first_bad_label[float](&tf[0], tf.shape[0], threads, 0)
    else:
        td = t
        if td.shape[0] == 0:
            return -1
        with nogil:
            first = _first_bad_label[double](&td[0], td.shape[0], threads, 0)
    return first
