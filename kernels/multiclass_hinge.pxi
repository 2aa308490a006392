# multiclass_hinge: Weston-Watkins (PyTorch multi_margin_loss) and Crammer-Singer.
# Each row is read completely (s_y, the margins or the max) before its gradient is written.
# Half inputs: each row converted into a float scratch row, its gradient computed there (in place)
# and rounded out.

cdef double _multiclass_hinge_rows(const floating* x, const int64_t* labels, const floating* w,
                                   Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C, double margin,
                                   bint squared, bint crammer_singer, floating* grad, double gscale,
                                   const double* gscale_arr, floating* loss_out, int half) noexcept nogil:
    cdef Py_ssize_t i
    cdef const floating* xr
    cdef floating* gr = NULL
    cdef int64_t y
    cdef double acc = 0.0, loss, gs
    cdef floating* scratch = NULL   # half: the row, then its gradient
    if half:
        scratch = <floating*>malloc(C * sizeof(floating))
        if scratch == NULL:
            half_fill_rows(half, grad, loss_out, start, stop, C)
            return NAN
    for i in range(start, stop):
        if half:
            half_load(half, x, i * C, scratch, C)
            xr = scratch
            if grad != NULL:
                gr = scratch
        else:
            xr = x + i * C
            if grad != NULL:
                gr = grad + i * C
        gs = gscale * gscale_arr[i] if gscale_arr != NULL else gscale
        y = labels[i]
        if y < 0 or y >= C:  # never happens after label_weight_sum; no out-of-bounds access if it does
            loss = NAN
            if gr != NULL:
                row_fill(gr, C, loss)
        else:
            loss = _multiclass_hinge_row(xr, y, w, C, margin, squared, crammer_singer, gr, gs)
        if half and gr != NULL:
            half_put(half, NULL, grad, i * C, gr, C)
        if loss_out != NULL:
            if half:
                half_store1(half, loss_out, i, loss)
            else:
                loss_out[i] = <floating>loss
        acc += loss
    free(scratch)
    return acc


cdef inline double _multiclass_hinge_row(const floating* xr, int64_t y, const floating* w, Py_ssize_t C,
                                         double margin, bint squared, bint crammer_singer, floating* gr,
                                         double gs) noexcept nogil:
    """One row's loss (label y in [0, C)) and, where gr is not NULL, its gradient into gr (which
    may be xr)."""
    cdef Py_ssize_t j, jb
    cdef double loss, s_y, w_y, f, zz, h, d, total, gsum, best, v
    cdef bint has_nan
    s_y = xr[y]
    w_y = w[y] if w != NULL else 1.0
    if not crammer_singer:
        # w_y / C * sum_{j != y} max(0, margin - s_y + s_j)^p
        f = w_y / C
        total = 0.0
        gsum = 0.0
        for j in range(C):
            if j == y:
                continue
            zz = margin - s_y + xr[j]
            h = relu_keep_nan(zz)
            total += h * h if squared else h
            if gr != NULL:
                d = hinge_power_grad(zz, h, squared) * f
                gsum += d
                gr[j] = <floating>(d * gs)
        loss = w_y * total / C
        if gr != NULL:
            gr[y] = <floating>(-gsum * gs)
    else:
        # w_y * max(0, margin + max_{j != y} s_j - s_y)^p, gradient to the first maximal j
        best = -INFINITY
        jb = -1
        has_nan = False
        for j in range(C):
            if j == y:
                continue
            v = xr[j]
            if v > best:
                best = v
                jb = j
            elif v != v:
                has_nan = True
        if C == 1:
            zz = -INFINITY
        else:
            zz = (<double>NAN if has_nan else margin + best) - s_y
        h = relu_keep_nan(zz)
        loss = w_y * (h * h if squared else h)
        if gr != NULL:
            d = hinge_power_grad(zz, h, squared) * w_y
            row_fill(gr, C, 0.0 * gs)
            if jb >= 0:
                gr[jb] = <floating>(d * gs)
            gr[y] = <floating>(-d * gs)
    return loss


cdef double _multiclass_hinge(const floating[:, ::1] x, const int64_t[::1] labels,
                              const floating[::1] weight, double margin, bint squared,
                              bint crammer_singer, floating[:, ::1] grad, double gscale,
                              const double[::1] gscale_arr, floating[::1] loss_out,
                              int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const floating* xp
    cdef const int64_t* lab
    cdef const floating* wp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gscale_ptr = NULL
    if labels.shape[0] != N:
        raise ValueError(f"multiclass_hinge: {labels.shape[0]} labels for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("multiclass_hinge: no classes")
    xp = &x[0, 0]
    lab = &labels[0]
    if weight is not None:
        wp = &weight[0]
    if grad is not None:
        gp = &grad[0, 0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _multiclass_hinge_all(xp, lab, wp, N, C, margin, squared, crammer_singer, gp, gscale,
                                      gscale_ptr, lp, n_threads, 0)
    return total


cdef double _multiclass_hinge_half(x, const int64_t[::1] labels, weight, double margin, bint squared,
                                   bint crammer_singer, grad, double gscale, const double[::1] gscale_arr,
                                   loss_out, int n_threads, int half) except? -1:
    """_multiclass_hinge for half inputs: their data, checked, to the float kernels in half mode."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const void* xp = half_ptr(x, x, N * C, False, "x")
    cdef void* gp = half_ptr(grad, x, N * C, True, "grad")
    cdef void* lp = half_ptr(loss_out, x, N, True, "loss_out")
    cdef const double* gscale_ptr = NULL
    cdef float* wf
    if labels.shape[0] != N:
        raise ValueError(f"multiclass_hinge: {labels.shape[0]} labels for {N} rows")
    if gscale_arr is not None and gscale_arr.shape[0] != N:
        raise ValueError(f"multiclass_hinge: gscale_arr of {gscale_arr.shape[0]} for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("multiclass_hinge: no classes")
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    wf = half_weights(half, weight, x, C)
    try:
        with nogil:
            total = _multiclass_hinge_all[float](<const float*>xp, &labels[0], wf, N, C, margin, squared,
                                                 crammer_singer, <float*>gp, gscale, gscale_ptr, <float*>lp,
                                                 n_threads, half)
    finally:
        free(wf)
    return total


cdef double _multiclass_hinge_all(const floating* xp, const int64_t* lab, const floating* wp,
                                  Py_ssize_t N, Py_ssize_t C, double margin, bint squared,
                                  bint crammer_singer, floating* gp, double gscale, const double* gscale_arr,
                                  floating* lp, int n_threads, int half) noexcept nogil:
    """Every row (N >= 1, C >= 1) in the fixed blocks on n_threads threads: the sum of the losses
    (half: x, grad and loss_out hold that half type's bits, the weights are floats)."""
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t nb = item_blocks(N, C), b
    for b in prange(nb, schedule='static', num_threads=n_threads):
        sums[b] = _multiclass_hinge_rows(xp, lab, wp, block_start(b, nb, N), block_start(b + 1, nb, N),
                                         C, margin, squared, crammer_singer, gp, gscale, gscale_arr, lp, half)
    return sum_blocks(sums, nb)


def multiclass_hinge(x, labels, weight, margin, squared, crammer_singer,
                     grad, gscale, gscale_arr, loss_out, n_threads):
    """Multiclass hinge (Weston-Watkins or Crammer-Singer); see fastloss.backends."""
    labels, gscale_arr, loss_out = flat(labels), flat(gscale_arr), flat(loss_out)
    threads = clamp_threads(n_threads)
    N, C = x.shape[0], x.shape[1]
    half = half_kind(x)
    if half:
        return _multiclass_hinge_half(x, labels, weight, margin, bool(squared), bool(crammer_singer), grad,
                                      gscale, gscale_arr, loss_out, threads, half)
    if is_f32(x):
        return _multiclass_hinge[float](x, labels, weight, margin, bool(squared), bool(crammer_singer),
                                        rows2d(grad, N, C), gscale, gscale_arr, loss_out, threads)
    return _multiclass_hinge[double](x, labels, weight, margin, bool(squared), bool(crammer_singer),
                                     rows2d(grad, N, C), gscale, gscale_arr, loss_out, threads)
