# softmax_xent: fused softmax cross-entropy (sparse labels and probability targets).
#
# Per row, the logits are read from memory once:
#   pass 1  max, and what the loss needs from the raw row (x[y], sum_c w_c x_c for smoothing),
#           all read before anything is written (grad may be x itself);
#   pass 2  e_j = exp(x_j - max), stored into the grad row (still in cache) and summed in double;
#   pass 3  the grad row scaled in place to the gradient formula.
# With grad NULL nothing is written (the loss alone). The true class's gradient is recomputed in
# double from x[y] and lse, so p_y - 1 is never formed from a rounded p_y (Liger-Kernel #1329).
# Non-finite maxima follow fastloss.reference (and PyTorch): the shift is the max, or 0 when the
# max is -inf, so a row of all -inf has lse = -inf (NaN loss) and a +inf logit makes its whole
# row NaN (exp(inf - inf)); NaN anywhere in a row reaches s, lse and so everything of the row.
# p_j = e_j / s (not exp(x_j - lse), which is wrong where lse absorbs log(s), |max| ~ 1e38).
# Half inputs (half != 0, see _common.pxi): passes 1 and 2 read the half row, converting a chunk
# at a time in L1, the exps go to a float scratch row and pass 3 rounds the gradient out of it on
# its way to grad: 2 bytes an item read and written, the float code's values (the losses and sums
# are bitwise those of float32 inputs of the same values).

cdef double _softmax_xent_rows(const floating* x, const int64_t* labels, const floating* w,
                               double w_sum, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                               int64_t ignore_index, double eps, double z, floating* grad,
                               double gscale, const double* gscale_arr, floating* loss_out,
                               bint stream, int half) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating* e = NULL   # where a row's exps, then its gradient, go
    cdef int64_t y
    cdef double acc = 0.0, loss, shift, s, lse, x_y, w_y, wx_sum, gs, k, g_y
    cdef double inv_c = 1.0 / C
    cdef floating m
    cdef floating* scratch = NULL
    cdef fl_streamer st
    cdef fl_streamer* stp = NULL
    stream = stream and grad != NULL
    if stream or (half and grad != NULL):
        # stream: the gradient rows of the block are one region, written once: each row is
        # computed in a scratch row that stays in cache and streamed out (NULL: plain stores,
        # same values); half: the exps and the gradient in float there, then rounded out
        scratch = <floating*>malloc(C * sizeof(floating))
        if scratch == NULL and half:
            half_fill_rows(half, grad, loss_out, start, stop, C)
            return NAN
        if scratch != NULL and stream:
            if half:
                half_streamer_begin(&st, grad, start * C)
            else:
                streamer_begin(&st, grad + start * C)
            stp = &st
    for i in range(start, stop):
        if grad != NULL:
            e = scratch if scratch != NULL else grad + i * C
        gs = gscale * gscale_arr[i] if gscale_arr != NULL else gscale
        y = labels[i]
        if y == ignore_index or y < 0 or y >= C:
            # ignored row: loss 0, gradient 0 whatever the scale (PyTorch: an all-ignored batch
            # has a NaN mean and a zero gradient). A label outside [0, C) never gets here
            # (label_weight_sum ran first); if one did, its row gets NaN, not an out-of-bounds read.
            loss = 0.0 if y == ignore_index else <double>NAN
            if e != NULL:
                row_fill(e, C, loss)
                if half:
                    half_put(half, stp, grad, i * C, e, C)
                elif stp != NULL:
                    streamer_put(&st, scratch, C)
        else:
            # pass 1: everything read from the raw row
            x_y = xload(half, x, i * C + y)
            w_y = w[y] if w != NULL else 1.0
            m = xrow_max(half, x, i * C, C)
            wx_sum = xrow_wdot(half, w, x, i * C, C) if eps != 0 else 0.0
            shift = 0.0 if m == -INFINITY else m
            # pass 2: the exps (the next row is prefetched meanwhile)
            s = xrow_expsum(half, x, i * C, e, C, <floating>shift, i + 1 < stop)
            lse = shift + log(s)
            loss = softmax_xent_loss(lse, x_y, w_y, eps, inv_c, w_sum, wx_sum, z)
            # pass 3: grad_j = (p_j A - eps w_j / C) gs, the true class in double (streamed:
            # computed on the way out of the scratch row)
            if e != NULL:
                # p_j = e_j / s, exact even where lse absorbs log(s) (|max| ~ 1e38)
                k = softmax_xent_coef(lse, w_y, eps, inv_c, w_sum, z) * (1.0 / s) * gs
                g_y = softmax_xent_grad_y(fl_exp(x_y - shift), s, lse, w_y, eps, inv_c, w_sum, z) * gs
                if half:
                    half_put_scaled(half, stp, grad, i * C, e, C, k, w, eps * inv_c * gs, y, g_y)
                elif stp != NULL:
                    streamer_put_scaled(&st, scratch, C, k, w, eps * inv_c * gs, y, g_y)
                else:
                    row_scale_sub(e, C, k, w, eps * inv_c * gs)
                    e[y] = <floating>g_y
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
            streamer_end(&st, scratch)
        fl_sfence()
    free(scratch)
    return acc


cdef enum:
    LANES_C = FL_LANES_C  # rows of at most this many classes go through the lane kernel
    LANES = FL_LANES      # rows side by side there, one per vector lane
    LANES_AHEAD = 2 * FL_LANES  # rows prefetched ahead of the lane kernel


cdef double _softmax_xent_lanes(const floating* x, const int64_t* labels, const floating* w,
                                     double w_sum, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                                     int64_t ignore_index, double eps, double z, floating* grad,
                                     double gscale, const double* gscale_arr, floating* loss_out,
                                     bint stream, int half) noexcept nogil:
    """_softmax_xent_rows for C <= LANES_C, LANES (32) rows at a time, transposed so that lane l
    holds row r0 + l: the max, the exps, the sums and logs, the loss and gradient formulas all run
    as vector loops across rows (one short row at a time drowns in per-row overhead at 1M x 10;
    32 rather than 16 rows share each block's fixed cost: 1.3x faster). The same formulas and
    the same order of operations per row as _softmax_xent_rows; the losses are summed per lane.
    The logits and labels are prefetched two blocks ahead; with stream, each block's gradient
    rows are put together in a tile that stays in cache and streamed out (no read for
    ownership). Half rows are converted into a float tile of rows first and their gradient rows
    rounded out of one."""
    cdef floating t[LANES_C * LANES]   # t[c * LANES + l] = x[r0 + l, c]; then e; then the gradient
    cdef floating rows[LANES_C * LANES]  # the block's gradient rows, in order, when streamed (or half)
    cdef floating xin[LANES_C * LANES]   # half: the block's rows, converted
    cdef fl_streamer st
    cdef floating m[LANES]
    cdef floating shf[LANES]
    cdef floating k[LANES]
    cdef floating k2[LANES]
    cdef double s[LANES]
    cdef double lse[LANES]
    cdef double xy[LANES]
    cdef double ey[LANES]
    cdef double wy[LANES]
    cdef double wx[LANES]
    cdef double gs[LANES]
    cdef double loss[LANES]
    cdef double gy[LANES]
    cdef double fill[LANES]             # an ignored row's loss and gradient (0), a bad label's (NaN)
    cdef double acc[LANES]              # each lane's sum of losses
    cdef int64_t yl[LANES]              # the labels (ignore_index past the block's end)
    cdef int64_t yc[LANES]              # the label, or 0 where the row has no valid label
    cdef char ok[LANES]
    cdef Py_ssize_t r0, R, c, l, n_bad
    cdef const floating* xb
    cdef floating e
    cdef double inv_c = 1.0 / C, total = 0.0
    memset(&st, 0, sizeof(st))   # (only used with stream; set: no maybe-uninitialized warning)
    stream = stream and grad != NULL
    if stream:
        if half:
            half_streamer_begin(&st, grad, start * C)
        else:
            streamer_begin(&st, grad + start * C)
    for l in range(LANES):
        acc[l] = 0.0
        gs[l] = gscale
    r0 = start
    while r0 < stop:
        R = stop - r0 if stop - r0 < LANES else LANES
        if half:
            prefetch_l1(<const uint16_t*>x + (r0 + LANES_AHEAD) * C, LANES * C * 2)
            half_load(half, x, r0 * C, xin, R * C)
            xb = xin
        else:
            xb = x + r0 * C
            prefetch_l1(xb + LANES_AHEAD * C, LANES * C * sizeof(floating))
        prefetch_l1(labels + r0 + LANES_AHEAD, LANES * sizeof(int64_t))
        lanes_load(xb, C, R, t, m)   # lanes past the block's end repeat its last row, never stored
        # each loop below is a vector loop across the rows (lanes)
        if R == LANES:
            for l in range(LANES):
                yl[l] = labels[r0 + l]
        else:
            for l in range(LANES):
                yl[l] = labels[r0 + l] if l < R else ignore_index
        n_bad = 0
        for l in range(LANES):
            ok[l] = yl[l] != ignore_index and yl[l] >= 0 and yl[l] < C
            yc[l] = yl[l] if ok[l] else 0
            n_bad += not ok[l]
        if gscale_arr != NULL:
            for l in range(LANES):
                gs[l] = gscale * gscale_arr[r0 + l] if l < R else gscale
        for l in range(LANES):
            xy[l] = t[yc[l] * LANES + l]
            wy[l] = w[yc[l]] if w != NULL else 1.0
        for l in range(LANES):
            shf[l] = 0 if m[l] == -INFINITY else m[l]
            s[l] = 0.0
            wx[l] = 0.0
        if eps != 0:
            for c in range(C):
                for l in range(LANES):
                    wx[l] += t[c * LANES + l] if w == NULL else (0.0 if w[c] == 0 else <double>w[c] * t[c * LANES + l])
        for c in range(C):
            for l in range(LANES):
                e = exp_nonpos(t[c * LANES + l] - shf[l])
                t[c * LANES + l] = e
                s[l] += e
        for l in range(LANES):
            # fl_log where _softmax_xent_rows has libm's log: it vectorises across the lanes
            lse[l] = shf[l] + fl_log(s[l])
        for l in range(LANES):
            ey[l] = t[yc[l] * LANES + l]   # e_y as summed into s: p_y - 1 = (e_y - s) / s exactly
        for l in range(LANES):
            loss[l] = softmax_xent_loss(lse[l], xy[l], wy[l], eps, inv_c, w_sum, wx[l], z)
            k[l] = <floating>(softmax_xent_coef(lse[l], wy[l], eps, inv_c, w_sum, z) * (1.0 / s[l]) * gs[l])
            k2[l] = <floating>(eps * inv_c * gs[l])
            gy[l] = softmax_xent_grad_y(ey[l], s[l], lse[l], wy[l], eps, inv_c, w_sum, z) * gs[l]
        if n_bad:
            for l in range(LANES):
                fill[l] = 0.0 if yl[l] == ignore_index else <double>NAN
                loss[l] = loss[l] if ok[l] else fill[l]
        for l in range(LANES):
            acc[l] += loss[l]   # 0 past the block's end
        if loss_out != NULL:
            if half:
                for l in range(R):
                    half_store1(half, loss_out, r0 + l, loss[l])
            else:
                for l in range(R):
                    loss_out[r0 + l] = <floating>loss[l]
        if grad != NULL:
            if eps == 0:   # one loop per case: each vectorises
                for c in range(C):
                    for l in range(LANES):
                        t[c * LANES + l] = t[c * LANES + l] * k[l]
            elif w == NULL:
                for c in range(C):
                    for l in range(LANES):
                        t[c * LANES + l] = t[c * LANES + l] * k[l] - k2[l]
            else:
                for c in range(C):
                    for l in range(LANES):
                        t[c * LANES + l] = t[c * LANES + l] * k[l] - w[c] * k2[l]
            for l in range(LANES):
                t[yc[l] * LANES + l] = <floating>gy[l]
            if n_bad:
                for l in range(LANES):
                    if not ok[l]:
                        for c in range(C):
                            t[c * LANES + l] = <floating>fill[l]
            if half:
                lanes_store(t, C, R, rows)
                half_put(half, &st if stream else NULL, grad, r0 * C, rows, R * C)
            elif stream:
                lanes_store(t, C, R, rows)
                streamer_put(&st, rows, R * C)
            else:
                lanes_store(t, C, R, grad + r0 * C)
        r0 += R
    if stream:
        if half:
            fl_streamer_end_h(&st)
        else:
            streamer_end(&st, grad)
        fl_sfence()
    for l in range(LANES):
        total += acc[l]
    return total


cdef double _softmax_xent_all(const floating* xp, const int64_t* lab, const floating* wp, double w_sum,
                              Py_ssize_t N, Py_ssize_t C, int64_t ignore_index, double eps, double z,
                              floating* gp, double gscale, const double* gscale_arr, floating* lp,
                              int n_threads, int half) noexcept nogil:
    """Every row (N >= 1, C >= 1) in the fixed blocks on n_threads threads: the sum of the losses
    (half: x, grad and loss_out hold that half type's bits, the weights are floats)."""
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t nb, b
    # streaming stores for a gradient that is not the logits and too big to stay in cache
    cdef bint stream = (gp != NULL and <const floating*>gp != xp
                        and N * C * (2 if half else sizeof(floating)) >= STREAM_MIN_BYTES)
    # the lane kernel computes LANES rows at a time: blocks of at least that many rows
    nb = n_blocks_for((N + LANES - 1) // LANES) if C <= LANES_C else item_blocks(N, C)
    for b in prange(nb, schedule='static', num_threads=n_threads):
        if C <= LANES_C:
            sums[b] = _softmax_xent_lanes(xp, lab, wp, w_sum,
                                               block_start(b, nb, N), block_start(b + 1, nb, N), C,
                                               ignore_index, eps, z, gp, gscale, gscale_arr, lp, stream, half)
        else:
            sums[b] = _softmax_xent_rows(xp, lab, wp, w_sum,
                                         block_start(b, nb, N), block_start(b + 1, nb, N), C,
                                         ignore_index, eps, z, gp, gscale, gscale_arr, lp, stream, half)
    return sum_blocks(sums, nb)


cdef double _softmax_xent(const floating[:, ::1] x, const int64_t[::1] labels,
                          const floating[::1] weight, int64_t ignore_index, double eps, double z,
                          floating[:, ::1] grad, double gscale, const double[::1] gscale_arr,
                          floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double w_sum = C, total
    cdef const floating* wp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gscale_ptr = NULL
    if labels.shape[0] != N:
        raise ValueError(f"softmax_xent: {labels.shape[0]} labels for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("softmax_xent: no classes")
    if weight is not None:
        wp = &weight[0]
        w_sum = row_total(wp, C)
    if grad is not None:
        gp = &grad[0, 0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _softmax_xent_all(&x[0, 0], &labels[0], wp, w_sum, N, C, ignore_index, eps, z,
                                  gp, gscale, gscale_ptr, lp, n_threads, 0)
    return total


cdef double _softmax_xent_half(x, const int64_t[::1] labels, weight, int64_t ignore_index, double eps,
                               double z, grad, double gscale, const double[::1] gscale_arr, loss_out,
                               int n_threads, int half) except? -1:
    """_softmax_xent for half logits: their data, checked, to the float kernels in half mode."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const void* xp = half_ptr(x, x, N * C, False, "x")
    cdef void* gp = half_ptr(grad, x, N * C, True, "grad")
    cdef void* lp = half_ptr(loss_out, x, N, True, "loss_out")
    cdef const double* gscale_ptr = NULL
    cdef float* wf
    if labels.shape[0] != N:
        raise ValueError(f"softmax_xent: {labels.shape[0]} labels for {N} rows")
    if gscale_arr is not None and gscale_arr.shape[0] != N:
        raise ValueError(f"softmax_xent: gscale_arr of {gscale_arr.shape[0]} for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("softmax_xent: no classes")
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    wf = half_weights(half, weight, x, C)
    try:
        with nogil:
            total = _softmax_xent_all[float](<const float*>xp, &labels[0], wf,
                                             row_total(wf, C) if wf != NULL else <double>C, N, C,
                                             ignore_index, eps, z, <float*>gp, gscale, gscale_ptr,
                                             <float*>lp, n_threads, half)
    finally:
        free(wf)
    return total


def softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads):
    """Sparse-label softmax cross-entropy; see fastloss.backends for the contract."""
    labels, gscale_arr, loss_out = flat(labels), flat(gscale_arr), flat(loss_out)
    threads = clamp_threads(n_threads)
    half = half_kind(x)
    if half:
        return _softmax_xent_half(x, labels, weight, ignore_index, label_smoothing, z_loss, grad, gscale,
                                  gscale_arr, loss_out, threads, half)
    if is_f32(x):
        return _softmax_xent[float](x, labels, weight, ignore_index, label_smoothing, z_loss,
                                    rows2d(grad, x.shape[0], x.shape[1]), gscale, gscale_arr, loss_out, threads)
    return _softmax_xent[double](x, labels, weight, ignore_index, label_smoothing, z_loss,
                                 rows2d(grad, x.shape[0], x.shape[1]), gscale, gscale_arr, loss_out, threads)


# ---- probability targets ------------------------------------------------------------------------

cdef double _softmax_xent_probs_rows(const floating* x, const floating* t, const floating* w,
                                     Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                                     double eps, double z, floating* grad, double gscale,
                                     const double* gscale_arr, floating* loss_out, int half) noexcept nogil:
    cdef Py_ssize_t i, c
    cdef const floating* xr
    cdef const floating* tr
    cdef floating* gr = NULL
    cdef double acc = 0.0, loss, shift, s, lse, gs, a, r, tx_sum, k
    cdef double keep = 1.0 - eps, spread = eps / C
    cdef floating m
    cdef floating* scratch = NULL   # half: the row of x (then its gradient) and the row of t
    if half:
        scratch = <floating*>malloc(2 * C * sizeof(floating))
        if scratch == NULL:
            half_fill_rows(half, grad, loss_out, start, stop, C)
            return NAN
    for i in range(start, stop):
        if half:
            half_load(half, x, i * C, scratch, C)
            half_load(half, t, i * C, scratch + C, C)
            xr = scratch
            tr = scratch + C
            if grad != NULL:
                gr = scratch
        else:
            xr = x + i * C
            tr = t + i * C
            if grad != NULL:
                gr = grad + i * C
        gs = gscale * gscale_arr[i] if gscale_arr != NULL else gscale
        # pass 1: a_c = w_c t'_c, r = sum a_c, sum a_c x_c (a_c == 0 terms are 0 even at x_c = -inf)
        m = row_max(xr, C)
        r = 0.0
        tx_sum = 0.0
        for c in range(C):
            a = keep * tr[c] + spread
            if w != NULL:
                a = w[c] * a
            r += a
            if a != 0:
                tx_sum += a * xr[c]
        shift = 0.0 if m == -INFINITY else m
        # pass 2
        s = row_expsum(xr, gr, C, <floating>shift, xr + C if i + 1 < stop and not half else NULL)
        lse = shift + log(s)
        loss = softmax_xent_probs_loss(lse, r, tx_sum, z)
        if loss_out != NULL:
            if half:
                half_store1(half, loss_out, i, loss)
            else:
                loss_out[i] = <floating>loss
        acc += loss
        # pass 3: grad_j = (p_j (r + 2 z r lse) - a_j) gs, in double
        if gr != NULL:
            k = (r + 2.0 * z * r * lse if z != 0 else r) / s
            for c in range(C):
                a = keep * tr[c] + spread
                if w != NULL:
                    a = w[c] * a
                gr[c] = <floating>((gr[c] * k - a) * gs)
            if half:
                half_put(half, NULL, grad, i * C, gr, C)
    free(scratch)
    return acc


cdef double _softmax_xent_probs(const floating[:, ::1] x, const floating[:, ::1] t,
                                const floating[::1] weight, double eps, double z,
                                floating[:, ::1] grad, double gscale, const double[::1] gscale_arr,
                                floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const floating* xp
    cdef const floating* tp
    cdef const floating* wp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gscale_ptr = NULL
    if t.shape[0] != N or t.shape[1] != C:
        raise ValueError("softmax_xent_probs: targets and logits differ in shape")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("softmax_xent_probs: no classes")
    xp = &x[0, 0]
    tp = &t[0, 0]
    if weight is not None:
        wp = &weight[0]
    if grad is not None:
        gp = &grad[0, 0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    with nogil:
        total = _softmax_xent_probs_all(xp, tp, wp, N, C, eps, z, gp, gscale, gscale_ptr, lp, n_threads, 0)
    return total


cdef double _softmax_xent_probs_half(x, t, weight, double eps, double z, grad, double gscale,
                                     const double[::1] gscale_arr, loss_out, int n_threads,
                                     int half) except? -1:
    """_softmax_xent_probs for half logits: their data, checked, to the float kernels in half mode."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef double total
    cdef const void* xp = half_ptr(x, x, N * C, False, "x")
    cdef const void* tp = half_ptr(t, x, N * C, False, "probs")
    cdef void* gp = half_ptr(grad, x, N * C, True, "grad")
    cdef void* lp = half_ptr(loss_out, x, N, True, "loss_out")
    cdef const double* gscale_ptr = NULL
    cdef float* wf
    if gscale_arr is not None and gscale_arr.shape[0] != N:
        raise ValueError(f"softmax_xent_probs: gscale_arr of {gscale_arr.shape[0]} for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("softmax_xent_probs: no classes")
    if gscale_arr is not None:
        gscale_ptr = &gscale_arr[0]
    wf = half_weights(half, weight, x, C)
    try:
        with nogil:
            total = _softmax_xent_probs_all[float](<const float*>xp, <const float*>tp, wf, N, C, eps, z,
                                                   <float*>gp, gscale, gscale_ptr, <float*>lp, n_threads, half)
    finally:
        free(wf)
    return total


cdef double _softmax_xent_probs_all(const floating* xp, const floating* tp, const floating* wp,
                                    Py_ssize_t N, Py_ssize_t C, double eps, double z, floating* gp,
                                    double gscale, const double* gscale_arr, floating* lp,
                                    int n_threads, int half) noexcept nogil:
    """Every row (N >= 1, C >= 1) in the fixed blocks on n_threads threads: the sum of the losses
    (half: x, the targets, grad and loss_out hold that half type's bits, the weights are floats)."""
    cdef double sums[MAX_BLOCKS]
    cdef Py_ssize_t nb = item_blocks(N, C), b
    for b in prange(nb, schedule='static', num_threads=n_threads):
        sums[b] = _softmax_xent_probs_rows(xp, tp, wp, block_start(b, nb, N), block_start(b + 1, nb, N),
                                           C, eps, z, gp, gscale, gscale_arr, lp, half)
    return sum_blocks(sums, nb)


def softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads):
    """Softmax cross-entropy against probability targets; see fastloss.backends."""
    gscale_arr, loss_out = flat(gscale_arr), flat(loss_out)
    threads = clamp_threads(n_threads)
    N, C = x.shape[0], x.shape[1]
    half = half_kind(x)
    if half:
        return _softmax_xent_probs_half(x, probs, weight, label_smoothing, z_loss, grad, gscale, gscale_arr,
                                        loss_out, threads, half)
    if is_f32(x):
        return _softmax_xent_probs[float](x, rows2d(probs, N, C), weight, label_smoothing, z_loss,
                                          rows2d(grad, N, C), gscale, gscale_arr, loss_out, threads)
    return _softmax_xent_probs[double](x, rows2d(probs, N, C), weight, label_smoothing, z_loss,
                                       rows2d(grad, N, C), gscale, gscale_arr, loss_out, threads)


# ---- label pre-pass -----------------------------------------------------------------------------

cdef inline (double, Py_ssize_t) _label_weight_sum(const int64_t* labels, Py_ssize_t n, int64_t C,
                                                   int64_t ignore_index, bint has_ignore,
                                                   const floating* w, int half) noexcept nogil:
    """(half: w holds that half type's bits, each converted as it is read)"""
    cdef Py_ssize_t i
    cdef int64_t y
    cdef double total = 0.0
    for i in range(n):
        y = labels[i]
        if has_ignore and y == ignore_index:
            continue
        if y < 0 or y >= C:
            return total, i
        if w == NULL:
            total += 1.0
        elif half:
            total += fl_half_to_float(half, (<const uint16_t*>w)[y])
        else:
            total += w[y]
    return total, -1


def label_weight_sum(labels, n_classes, ignore_index, has_ignore, weight):
    """(sum of weight[y] -- or the count -- over rows not ignored, first bad position or -1)."""
    cdef const int64_t[::1] lab = flat(labels)
    cdef const float[::1] wf
    cdef const double[::1] wd
    cdef Py_ssize_t n = lab.shape[0], pos
    cdef int64_t C = n_classes, ign = ignore_index
    cdef bint hi = has_ignore
    cdef double total
    cdef const int64_t* lp = &lab[0] if n > 0 else NULL
    cdef const void* wh
    cdef int half = 0 if weight is None else half_kind(weight)
    if weight is not None and weight.shape[0] != C:
        raise ValueError(f"label_weight_sum: weight has {weight.shape[0]} entries for {C} classes")
    if half:
        wh = half_ptr(weight, weight, C, False, "weight")
        with nogil:
            total, pos = _label_weight_sum[float](lp, n, C, ign, hi, <const float*>wh if C > 0 else NULL, half)
    elif weight is not None and weight.dtype.char == 'f':
        wf = weight
        with nogil:
            total, pos = _label_weight_sum[float](lp, n, C, ign, hi, &wf[0] if C > 0 else NULL, 0)
    elif weight is not None:
        wd = weight
        with nogil:
            total, pos = _label_weight_sum[double](lp, n, C, ign, hi, &wd[0] if C > 0 else NULL, 0)
    else:
        with nogil:
            total, pos = _label_weight_sum[double](lp, n, C, ign, hi, NULL, 0)
    return float(total), int(pos)
