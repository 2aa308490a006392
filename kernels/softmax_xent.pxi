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

cdef double _softmax_xent_rows(const floating* x, const int64_t* labels, const floating* w,
                               double w_sum, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                               int64_t ignore_index, double eps, double z, floating* grad,
                               double gscale, const double* gsa, floating* loss_out,
                               bint stream) noexcept nogil:
    cdef Py_ssize_t i
    cdef const floating* xr
    cdef floating* gr = NULL
    cdef int64_t y
    cdef double acc = 0.0, loss, shift, s, lse, x_y, w_y, wx_sum, gs, coef
    cdef double inv_c = 1.0 / C
    cdef floating m
    cdef floating* scratch = NULL
    if stream and grad != NULL:
        scratch = <floating*>malloc(C * sizeof(floating))  # NULL: plain stores, same values
    for i in range(start, stop):
        xr = x + i * C
        if grad != NULL:
            gr = grad + i * C
        gs = gscale * gsa[i] if gsa != NULL else gscale
        y = labels[i]
        if y == ignore_index or y < 0 or y >= C:
            # ignored row: loss 0, gradient 0 whatever the scale (PyTorch: an all-ignored batch
            # has a NaN mean and a zero gradient). A label outside [0, C) never gets here
            # (label_weight_sum ran first); if one did, its row gets NaN, not an out-of-bounds read.
            loss = 0.0 if y == ignore_index else <double>NAN
            if gr != NULL:
                row_fill(gr, C, loss)
            if loss_out != NULL:
                loss_out[i] = <floating>loss
            acc += loss
            continue
        # pass 1: everything read from the raw row
        x_y = xr[y]
        w_y = w[y] if w != NULL else 1.0
        m = row_max(xr, C)
        wx_sum = row_wdot(w, xr, C) if eps != 0 else 0.0
        shift = 0.0 if m == -INFINITY else m
        # pass 2 (streaming: the exps go to a per-block scratch row that stays in cache, and
        # pass 3 writes the gradient from it with non-temporal stores, so the gradient's memory
        # is written once and never read)
        s = row_expsum(xr, scratch if scratch != NULL else gr, C, <floating>shift,
                       xr + C if i + 1 < stop else NULL)
        lse = shift + log(s)
        loss = softmax_xent_loss(lse, x_y, w_y, eps, inv_c, w_sum, wx_sum, z)
        if loss_out != NULL:
            loss_out[i] = <floating>loss
        acc += loss
        # pass 3: grad_j = (p_j A - eps w_j / C) gs, then the true class in double
        if gr != NULL:
            coef = softmax_xent_coef(lse, w_y, eps, inv_c, w_sum, z)
            # p_j = e_j / s, exact even where lse absorbs log(s) (|max| ~ 1e38)
            if scratch != NULL:
                row_scale_stream(scratch, gr, C, coef / s * gs, w, eps * inv_c * gs)
            else:
                row_scale_sub(gr, C, coef / s * gs, w, eps * inv_c * gs)
            gr[y] = <floating>(softmax_xent_grad_y(fl_exp(x_y - shift), s, lse, w_y, eps, inv_c,
                                                   w_sum, z) * gs)
    if scratch != NULL:
        fl_sfence()
        free(scratch)
    return acc


cdef enum:
    SMALL_C = 16        # rows of at most this many classes go through the tiled kernel
    TILE_ROWS = 64      # rows per tile there


cdef double _softmax_xent_rows_small(const floating* x, const int64_t* labels, const floating* w,
                                     double w_sum, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                                     int64_t ignore_index, double eps, double z, floating* grad,
                                     double gscale, const double* gsa, floating* loss_out) noexcept nogil:
    """_softmax_xent_rows for C <= SMALL_C: the same formulas, but a tile of TILE_ROWS rows at a
    time, so that the exps, the logs and the scaling run as flat vector loops over the tile
    instead of one short row at a time (1M x 10)."""
    cdef floating sb[TILE_ROWS * SMALL_C]
    cdef floating kb[TILE_ROWS * SMALL_C]
    cdef floating eb[TILE_ROWS * SMALL_C]
    cdef double ss[TILE_ROWS]
    cdef double lg[TILE_ROWS]
    cdef double shv[TILE_ROWS]
    cdef double xyv[TILE_ROWS]
    cdef double wxv[TILE_ROWS]
    cdef double sv[TILE_ROWS]
    cdef Py_ssize_t r0, r, R, c, i, n
    cdef const floating* xt
    cdef const floating* xr
    cdef floating* dst
    cdef floating* gr
    cdef int64_t y
    cdef double acc = 0.0, loss, shift, s, lse, w_y, gs, coef, k
    cdef double inv_c = 1.0 / C
    cdef floating m, fs, fk
    r0 = start
    while r0 < stop:
        R = stop - r0 if stop - r0 < TILE_ROWS else TILE_ROWS
        n = R * C
        xt = x + r0 * C
        dst = grad + r0 * C if grad != NULL else eb
        # pass 1, row by row: everything read from the raw rows
        for r in range(R):
            xr = xt + r * C
            y = labels[r0 + r]
            xyv[r] = xr[y] if (y != ignore_index and y >= 0 and y < C) else 0.0
            m = row_max(xr, C)
            wxv[r] = row_wdot(w, xr, C) if eps != 0 else 0.0
            shift = 0.0 if m == -INFINITY else m
            shv[r] = shift
            fs = <floating>shift
            for c in range(C):
                sb[r * C + c] = fs
        # pass 2 over the tile
        tile_expsub(xt, sb, dst, n)
        for r in range(R):
            s = 0.0
            for c in range(C):
                s += <double>dst[r * C + c]
            ss[r] = s
        fl_log_arr(ss, lg, R)
        # losses, and the scale of every row
        for r in range(R):
            i = r0 + r
            y = labels[i]
            gs = gscale * gsa[i] if gsa != NULL else gscale
            if y == ignore_index or y < 0 or y >= C:
                loss = 0.0 if y == ignore_index else <double>NAN
                k = 0.0
            else:
                w_y = w[y] if w != NULL else 1.0
                lse = shv[r] + lg[r]
                loss = softmax_xent_loss(lse, xyv[r], w_y, eps, inv_c, w_sum, wxv[r], z)
                coef = softmax_xent_coef(lse, w_y, eps, inv_c, w_sum, z)
                k = coef / ss[r] * gs
                xyv[r] = dst[r * C + y]   # from here on: the row's e_y
            sv[r] = k
            if loss_out != NULL:
                loss_out[i] = <floating>loss
            acc += loss
            fk = <floating>k
            for c in range(C):
                kb[r * C + c] = fk
        # pass 3
        if grad != NULL:
            if eps == 0:
                tile_mul(dst, kb, n)
            for r in range(R):
                i = r0 + r
                y = labels[i]
                gr = dst + r * C
                if y == ignore_index or y < 0 or y >= C:
                    row_fill(gr, C, 0.0 if y == ignore_index else <double>NAN)
                    continue
                gs = gscale * gsa[i] if gsa != NULL else gscale
                w_y = w[y] if w != NULL else 1.0
                if eps != 0:
                    row_scale_sub(gr, C, sv[r], w, eps * inv_c * gs)
                # e_y as stored in the tile and summed into s: p_y - 1 = (e_y - s) / s exactly
                gr[y] = <floating>(softmax_xent_grad_y(xyv[r], ss[r], shv[r] + lg[r],
                                                       w_y, eps, inv_c, w_sum, z) * gs)
        r0 += R
    return acc


cdef double _softmax_xent(const floating[:, ::1] x, const int64_t[::1] labels,
                          const floating[::1] weight, int64_t ignore_index, double eps, double z,
                          floating[:, ::1] grad, double gscale, const double[::1] gscale_arr,
                          floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], nb, b, c
    cdef double sums[MAX_BLOCKS]
    cdef double w_sum = C
    cdef const floating* xp
    cdef const floating* wp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gsa = NULL
    cdef const int64_t* lab
    cdef bint stream
    if labels.shape[0] != N:
        raise ValueError(f"softmax_xent: {labels.shape[0]} labels for {N} rows")
    if N == 0:
        return 0.0
    if C == 0:
        raise ValueError("softmax_xent: no classes")
    xp = &x[0, 0]
    lab = &labels[0]
    if weight is not None:
        wp = &weight[0]
        w_sum = 0.0
        for c in range(C):
            w_sum += weight[c]
    if grad is not None:
        gp = &grad[0, 0]
    if loss_out is not None:
        lp = &loss_out[0]
    if gscale_arr is not None:
        gsa = &gscale_arr[0]
    # streaming stores for a gradient that is not the logits, too big to stay in cache, in long
    # rows (measured: with rows of ~4 KB the plain stores of the partial lines at the row ends
    # make streaming slower than write-allocate; 65536 x 1000 loses ~30%)
    stream = (gp != NULL and <const floating*>gp != xp and N * C * sizeof(floating) >= STREAM_MIN_BYTES
              and C * sizeof(floating) >= STREAM_MIN_ROW_BYTES)
    nb = n_blocks_for(N)
    with nogil:
        for b in prange(nb, schedule='static', num_threads=n_threads):
            if C <= SMALL_C:
                sums[b] = _softmax_xent_rows_small(xp, lab, wp, w_sum,
                                                   block_start(b, nb, N), block_start(b + 1, nb, N), C,
                                                   ignore_index, eps, z, gp, gscale, gsa, lp)
            else:
                sums[b] = _softmax_xent_rows(xp, lab, wp, w_sum,
                                             block_start(b, nb, N), block_start(b + 1, nb, N), C,
                                             ignore_index, eps, z, gp, gscale, gsa, lp, stream)
    return sum_blocks(sums, nb)


def softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads):
    """Sparse-label softmax cross-entropy; see fastloss.backends for the contract."""
    labels, gscale_arr, loss_out = flat(labels), flat(gscale_arr), flat(loss_out)
    nt = clamp_threads(n_threads)
    if is_f32(x):
        return _softmax_xent[float](x, labels, weight, ignore_index, label_smoothing, z_loss,
                                    rows2d(grad, x.shape[0], x.shape[1]), gscale, gscale_arr, loss_out, nt)
    return _softmax_xent[double](x, labels, weight, ignore_index, label_smoothing, z_loss,
                                 rows2d(grad, x.shape[0], x.shape[1]), gscale, gscale_arr, loss_out, nt)


# ---- probability targets ------------------------------------------------------------------------

cdef double _softmax_xent_probs_rows(const floating* x, const floating* t, const floating* w,
                                     Py_ssize_t start, Py_ssize_t stop, Py_ssize_t C,
                                     double eps, double z, floating* grad, double gscale,
                                     const double* gsa, floating* loss_out) noexcept nogil:
    cdef Py_ssize_t i, c
    cdef const floating* xr
    cdef const floating* tr
    cdef floating* gr = NULL
    cdef double acc = 0.0, loss, shift, s, lse, gs, a, r, tx_sum, k
    cdef double keep = 1.0 - eps, spread = eps / C
    cdef floating m
    for i in range(start, stop):
        xr = x + i * C
        tr = t + i * C
        if grad != NULL:
            gr = grad + i * C
        gs = gscale * gsa[i] if gsa != NULL else gscale
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
        s = row_expsum(xr, gr, C, <floating>shift, xr + C if i + 1 < stop else NULL)
        lse = shift + log(s)
        loss = softmax_xent_probs_loss(lse, r, tx_sum, z)
        if loss_out != NULL:
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
    return acc


cdef double _softmax_xent_probs(const floating[:, ::1] x, const floating[:, ::1] t,
                                const floating[::1] weight, double eps, double z,
                                floating[:, ::1] grad, double gscale, const double[::1] gscale_arr,
                                floating[::1] loss_out, int n_threads) except? -1:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], nb, b
    cdef double sums[MAX_BLOCKS]
    cdef const floating* xp
    cdef const floating* tp
    cdef const floating* wp = NULL
    cdef floating* gp = NULL
    cdef floating* lp = NULL
    cdef const double* gsa = NULL
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
        gsa = &gscale_arr[0]
    nb = n_blocks_for(N)
    with nogil:
        for b in prange(nb, schedule='static', num_threads=n_threads):
            sums[b] = _softmax_xent_probs_rows(xp, tp, wp, block_start(b, nb, N), block_start(b + 1, nb, N),
                                               C, eps, z, gp, gscale, gsa, lp)
    return sum_blocks(sums, nb)


def softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads):
    """Softmax cross-entropy against probability targets; see fastloss.backends."""
    gscale_arr, loss_out = flat(gscale_arr), flat(loss_out)
    nt = clamp_threads(n_threads)
    N, C = x.shape[0], x.shape[1]
    if is_f32(x):
        return _softmax_xent_probs[float](x, rows2d(probs, N, C), weight, label_smoothing, z_loss,
                                          rows2d(grad, N, C), gscale, gscale_arr, loss_out, nt)
    return _softmax_xent_probs[double](x, rows2d(probs, N, C), weight, label_smoothing, z_loss,
                                       rows2d(grad, N, C), gscale, gscale_arr, loss_out, nt)


# ---- label pre-pass -----------------------------------------------------------------------------

cdef inline (double, Py_ssize_t) _label_weight_sum(const int64_t* labels, Py_ssize_t n, int64_t C,
                                                   int64_t ignore_index, bint has_ignore,
                                                   const floating* w) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t y
    cdef double total = 0.0
    for i in range(n):
        y = labels[i]
        if has_ignore and y == ignore_index:
            continue
        if y < 0 or y >= C:
            return total, i
        total += w[y] if w != NULL else 1.0
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
    if weight is not None and weight.shape[0] != C:
        raise ValueError(f"label_weight_sum: weight has {weight.shape[0]} entries for {C} classes")
    if weight is not None and weight.dtype.char == 'f':
        wf = weight
        with nogil:
            total, pos = _label_weight_sum[float](lp, n, C, ign, hi, &wf[0] if C > 0 else NULL)
    elif weight is not None:
        wd = weight
        with nogil:
            total, pos = _label_weight_sum[double](lp, n, C, ign, hi, &wd[0] if C > 0 else NULL)
    else:
        with nogil:
            total, pos = _label_weight_sum[double](lp, n, C, ign, hi, NULL)
    return float(total), int(pos)
