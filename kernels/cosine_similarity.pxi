# cosine_similarity: Keras' CosineSimilarity loss per row, -sum_c x_c t_c / (nx nt) with
# n = sqrt(max(sum_c v_c^2, 1e-12)); float targets of the input's shape.
#
# Per row, two passes over x and t (a row of both stays in cache between them):
#   pass 1  sum x^2, sum t^2 and sum x t in double lanes (fixed order: the row's length alone),
#           everything read before anything is written (grad may be x itself);
#   pass 2  grad_c = (-t_c / nn - k x_c) gs in double, rounded once (nn, k from
#           fl_cosine_similarity_loss; -t_c (1 / nn) but for one class, see fl_row_cosine_grad),
#           straight into the grad row or, with stream, streamed out through one fl_streamer
#           per block (the block's gradient rows are one region).
# NaN anywhere in a row reaches its sums and so its loss and every gradient entry.
# Half inputs: each row of x and t converted into float scratch rows, the gradient computed in
# place there (same index only) and rounded out (or streamed) from it.

cdef double _cosine_similarity_rows(const floating* x, const floating* t, Py_ssize_t start,
                                    Py_ssize_t stop, Py_ssize_t C, floating* grad, double gscale,
                                    const double* gscale_arr, floating* loss_out,
                                    bint stream, int half) noexcept nogil:
    cdef Py_ssize_t i
    cdef const floating* xr
    cdef const floating* tr
    cdef double acc = 0.0, loss, gs, sxx, stt, sxt, nn, k
    cdef fl_streamer st
    cdef fl_streamer* stp = NULL
    cdef floating* scratch = NULL   # half: the row of x (then its gradient) and the row of t
    if half:
        scratch = <floating*>malloc(2 * C * sizeof(floating))
        if scratch == NULL:
            half_fill_rows(half, grad, loss_out, start, stop, C)
            return NAN
    if stream and grad != NULL:
        if half:
            half_streamer_begin(&st, grad, start * C)
        else:
            streamer_begin(&st, grad + start * C)
        stp = &st
    for i in range(start, stop):
        if half:
            half_load(half, x, i * C, scratch, C)
            half_load(half, t, i * C, scratch + C, C)
            xr = scratch
            tr = scratch + C
        else:
            xr = x + i * C
            tr = t + i * C
        row_sq_dot(xr, tr, C, &sxx, &stt, &sxt)
        loss = cosine_similarity_loss(sxx, stt, sxt, &nn, &k)
        if grad != NULL:
            gs = gscale * gscale_arr[i] if gscale_arr != NULL else gscale
            if half:
                row_cosine_grad(scratch, NULL, tr, xr, C, nn, k, gs)
                half_put(half, stp, grad, i * C, scratch, C)
            else:
                row_cosine_grad(grad + i * C, stp, tr, xr, C, nn, k, gs)
        if loss_out != NULL:
            if half:
                half_store1(half, loss_out, i, loss)
            else:
                loss_out[i] = <floating>loss
        acc += loss
    if stp != NULL:
        if half:
            fl_streamer_end_h(stp)
        else:
            streamer_end(&st, grad)
        fl_sfence()
    free(scratch)
    return acc


cdef double _cosine_similarity_all(const floating* xp, const floating* tp, Py_ssize_t N, Py_ssize_t C,
                                   floating* gp, double gscale, const double* gscale_arr, floating* lp,
                                   int n_threads, int half) noexcept nogil:
    """Every row (N >= 1, C >= 1) in the fixed blocks on n_threads threads: the sum of the losses
    (half: every array holds that half type's bits)."""
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t nb = item_blocks(N, C), b
    # streaming stores for a gradient that is not the input and too big to stay in cache
    cdef bint stream = (gp != NULL and <const floating*>gp != xp
                        and N * C * (2 if half else sizeof(floating)) >= STREAM_MIN_BYTES)
    for b in prange(nb, schedule='static', num_threads=n_threads):
        sums[b] = _cosine_similarity_rows(xp, tp, block_start(b, nb, N), block_start(b + 1, nb, N), C,
                                          gp, gscale, gscale_arr, lp, stream, half)
    return sum_blocks(sums, nb)


cdef double _cosine_similarity(const floating[:, ::1] x, const floating[:, ::1] t,
                               floating[:, ::1] grad, double gscale, const double[::1] gscale_arr,
                               floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gscale_ptr = NULL
    if t.shape[0] != N or t.shape[1] != C:
        raise ValueError("cosine_similarity: targets and predictions differ in shape")
    if grad is not None and (grad.shape[0] != N or grad.shape[1] != C):
        raise ValueError("cosine_similarity: grad and predictions differ in shape")
    if loss_out is not None and loss_out.shape[0] != N:
        raise ValueError(f"cosine_similarity: loss_out of {loss_out.shape[0]} for {N} rows")
    if gscale_arr is not None and gscale_arr.shape[0] != N:
        raise ValueError(f"cosine_similarity: gscale_arr of {gscale_arr.shape[0]} for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("cosine_similarity: no classes")
    if grad is not None:
        gp = &grad[0, 0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _cosine_similarity_all(&x[0, 0], &t[0, 0], N, C, gp, gscale, gscale_ptr, lp, n_threads, 0)
    return total


cdef double _cosine_similarity_half(x, t, grad, double gscale, const double[::1] gscale_arr, loss_out,
                                    int n_threads, int half) except? -1:
    """_cosine_similarity for half inputs: their data, checked, to the float kernels in half mode."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const void* xp = half_ptr(x, x, N * C, False, "x")
    cdef const void* tp = half_ptr(t, x, N * C, False, "target")
    cdef void* gp = half_ptr(grad, x, N * C, True, "grad")
    cdef void* lp = half_ptr(loss_out, x, N, True, "loss_out")
    cdef const double* gscale_ptr = NULL
    if gscale_arr is not None and gscale_arr.shape[0] != N:
        raise ValueError(f"cosine_similarity: gscale_arr of {gscale_arr.shape[0]} for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("cosine_similarity: no classes")
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _cosine_similarity_all[float](<const float*>xp, <const float*>tp, N, C, <float*>gp, gscale,
                                              gscale_ptr, <float*>lp, n_threads, half)
    return total


def cosine_similarity(x, target, grad, gscale, gscale_arr, loss_out, n_threads):
    """Cosine similarity loss over the last axis (Keras' CosineSimilarity); see fastloss.backends."""
    gscale_arr, loss_out = flat(gscale_arr), flat(loss_out)
    threads = clamp_threads(n_threads)
    N, C = x.shape[0], x.shape[1]
    half = half_kind(x)
    if half:
        return _cosine_similarity_half(x, target, grad, gscale, gscale_arr, loss_out, threads, half)
    if is_f32(x):
        return _cosine_similarity[float](x, rows2d(target, N, C), rows2d(grad, N, C), gscale, gscale_arr,
                                         loss_out, threads)
    return _cosine_similarity[double](x, rows2d(target, N, C), rows2d(grad, N, C), gscale, gscale_arr,
                                      loss_out, threads)
