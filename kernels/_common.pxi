# Shared pieces of every kernel: the C headers' declarations, their fused front-ends, pointer
# helpers and the deterministic blocking of items. The formulas come from fastloss.formulas
# (fastloss/include/fl_formulas.h).

cimport numpy as cnp
from libc.stdint cimport uint16_t

cdef extern from "fastloss/include/fl_platform.h":
    int FL_HAVE_OPENMP
    const char* FL_ISA_NAME
    int fl_cpu_has_avx2_fma()
    int fl_cpu_has_avx512()

cdef extern from "fastloss/include/fl_vecmath.h" nogil:
    double fl_exp(double x)
    float fl_expf_nonpos(float x)
    double fl_exp_nonpos(double x)
    double fl_log(double x)

cdef extern from "fl_stream.h" nogil:
    ctypedef struct fl_streamer:
        pass
    void fl_streamer_begin_f(fl_streamer* s, float* dst)
    void fl_streamer_begin_d(fl_streamer* s, double* dst)
    void fl_streamer_begin_h(fl_streamer* s, uint16_t* dst)
    void fl_streamer_end_h(fl_streamer* s)
    void fl_streamer_put_f(fl_streamer* s, const float* src, Py_ssize_t n)
    void fl_streamer_put_d(fl_streamer* s, const double* src, Py_ssize_t n)
    void fl_streamer_put_scaled_f(fl_streamer* s, const float* e, Py_ssize_t n, float k,
                                  const float* w, float k2, Py_ssize_t y, float gy)
    void fl_streamer_put_scaled_d(fl_streamer* s, const double* e, Py_ssize_t n, double k,
                                  const double* w, double k2, Py_ssize_t y, double gy)
    void fl_streamer_end_f(fl_streamer* s)
    void fl_streamer_end_d(fl_streamer* s)
    void fl_sfence()
    void prefetch_l1 "fl_prefetch_l1"(const void* p, Py_ssize_t bytes)

cdef extern from "fl_rows.h" nogil:
    float fl_row_max_f(const float* x, Py_ssize_t n)
    double fl_row_max_d(const double* x, Py_ssize_t n)
    double fl_row_expsum_f(const float* x, float* g, Py_ssize_t n, float shift, const float* pf)
    double fl_row_expsum_d(const double* x, double* g, Py_ssize_t n, double shift, const double* pf)
    void fl_row_scale_f(float* g, Py_ssize_t n, float k)
    void fl_row_scale_d(double* g, Py_ssize_t n, double k)
    void fl_row_scale_sub_f(float* g, Py_ssize_t n, float k, const float* w, float k2)
    void fl_row_scale_sub_d(double* g, Py_ssize_t n, double k, const double* w, double k2)
    double fl_row_sum_f(const float* x, Py_ssize_t n)
    double fl_row_sum_d(const double* x, Py_ssize_t n)
    double fl_row_dot_f(const float* w, const float* x, Py_ssize_t n)
    double fl_row_dot_d(const double* w, const double* x, Py_ssize_t n)
    void fl_row_sq_dot_f(const float* x, const float* t, Py_ssize_t n, double* sxx, double* stt, double* sxt)
    void fl_row_sq_dot_d(const double* x, const double* t, Py_ssize_t n, double* sxx, double* stt, double* sxt)
    void fl_row_cosine_grad_f(float* g, fl_streamer* st, const float* t, const float* x, Py_ssize_t n,
                              double nn, double k, double gs)
    void fl_row_cosine_grad_d(double* g, fl_streamer* st, const double* t, const double* x, Py_ssize_t n,
                              double nn, double k, double gs)

    # half rows (x: float16 / bfloat16 bits), converted as they are read
    float fl_row_max_hx(int kind, const uint16_t* x, Py_ssize_t n)
    double fl_row_wdot_hx(int kind, const float* w, const uint16_t* x, Py_ssize_t n)
    double fl_row_expsum_hx(int kind, const uint16_t* x, float* g, Py_ssize_t n, float shift,
                            const uint16_t* pf)

cdef extern from "fl_lanes.h" nogil:
    enum: FL_LANES
    enum: FL_LANES_C
    void fl_lanes_load_f(const float* xb, Py_ssize_t C, Py_ssize_t R, float* t, float* m)
    void fl_lanes_load_d(const double* xb, Py_ssize_t C, Py_ssize_t R, double* t, double* m)
    void fl_lanes_store_f(const float* t, Py_ssize_t C, Py_ssize_t R, float* gb)
    void fl_lanes_store_d(const double* t, Py_ssize_t C, Py_ssize_t R, double* gb)

cdef extern from "fl_elementwise.h" nogil:
    ctypedef enum EwKind "fl_ew_kind":
        EW_SIGMOID_BCE "FL_EW_SIGMOID_BCE"
        EW_HUBER "FL_EW_HUBER"
        EW_HINGE "FL_EW_HINGE"
        EW_MSE "FL_EW_MSE"
        EW_MAE "FL_EW_MAE"
        EW_KL_DIV "FL_EW_KL_DIV"
        EW_SMOOTH_L1 "FL_EW_SMOOTH_L1"
        EW_LOG_COSH "FL_EW_LOG_COSH"
        EW_MSLE "FL_EW_MSLE"
        EW_POISSON_NLL "FL_EW_POISSON_NLL"
        EW_SIGMOID_FOCAL "FL_EW_SIGMOID_FOCAL"
    enum:
        EW_LOG_INPUT "FL_EW_LOG_INPUT"
        EW_FULL "FL_EW_FULL"
    double fl_ew_block_f(int kind, const float* x, const float* t, const float* w, const float* pw,
                         Py_ssize_t n_pw, double a, double b, int flag, Py_ssize_t start, Py_ssize_t stop,
                         float* g, double gscale, const double* gscale_arr, float* lo, int stream)
    double fl_ew_block_d(int kind, const double* x, const double* t, const double* w, const double* pw,
                         Py_ssize_t n_pw, double a, double b, int flag, Py_ssize_t start, Py_ssize_t stop,
                         double* g, double gscale, const double* gscale_arr, double* lo, int stream)
    # float16 (h) and bfloat16 (b) bits
    double fl_ew_block_h(int kind, const uint16_t* x, const uint16_t* t, const uint16_t* w, const uint16_t* pw,
                         Py_ssize_t n_pw, double a, double b, int flag, Py_ssize_t start, Py_ssize_t stop,
                         uint16_t* g, double gscale, const double* gscale_arr, uint16_t* lo, int stream)
    double fl_ew_block_b(int kind, const uint16_t* x, const uint16_t* t, const uint16_t* w, const uint16_t* pw,
                         Py_ssize_t n_pw, double a, double b, int flag, Py_ssize_t start, Py_ssize_t stop,
                         uint16_t* g, double gscale, const double* gscale_arr, uint16_t* lo, int stream)

cdef extern from "fl_half.h" nogil:
    enum:
        HALF_F16 "FL_HALF_F16"
        HALF_BF16 "FL_HALF_BF16"
    float fl_half_to_float(int kind, uint16_t h)
    uint16_t fl_float_to_half(int kind, float f)
    uint16_t fl_double_to_half(int kind, double d)
    void fl_half_load(int kind, const uint16_t* src, float* dst, Py_ssize_t n)
    void fl_half_put(int kind, fl_streamer* st, uint16_t* dst, const float* src, Py_ssize_t n)
    void fl_half_put_scaled(int kind, fl_streamer* st, uint16_t* dst, const float* e, Py_ssize_t n, float k,
                            const float* w, float k2, Py_ssize_t y, float gy)


# ---- fused front-ends of the C row primitives ---------------------------------------------------

cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fl_row_max_f(x, n)
    else:
        return fl_row_max_d(x, n)


cdef inline double row_expsum(const floating* x, floating* g, Py_ssize_t n, floating shift,
                              const floating* pf) noexcept nogil:
    """sum_j exp(x_j - shift) in double; exps stored to g when g != NULL (g may be x); the n
    values at pf (the next row, or NULL) are prefetched into L2 meanwhile."""
    if floating is float:
        return fl_row_expsum_f(x, g, n, shift, pf)
    else:
        return fl_row_expsum_d(x, g, n, shift, pf)


cdef inline void row_scale_sub(floating* g, Py_ssize_t n, double k, const floating* w, double k2) noexcept nogil:
    """g_j = g_j k - w_j k2 (w NULL: - k2; k2 == 0: g_j k)."""
    if k2 == 0:
        if floating is float:
            fl_row_scale_f(g, n, <float>k)
        else:
            fl_row_scale_d(g, n, k)
    elif floating is float:
        fl_row_scale_sub_f(g, n, <float>k, w, <float>k2)
    else:
        fl_row_scale_sub_d(g, n, k, w, k2)


cdef inline void streamer_begin(fl_streamer* st, floating* dst) noexcept nogil:
    """Start streaming a contiguous region at dst (see fl_stream.h: full 64-byte lines, non-temporal)."""
    if floating is float:
        fl_streamer_begin_f(st, dst)
    else:
        fl_streamer_begin_d(st, dst)


cdef inline void streamer_put(fl_streamer* st, const floating* src, Py_ssize_t n) noexcept nogil:
    """Append src[0:n] to the region."""
    if floating is float:
        fl_streamer_put_f(st, src, n)
    else:
        fl_streamer_put_d(st, src, n)


cdef inline void streamer_put_scaled(fl_streamer* st, const floating* e, Py_ssize_t n, double k,
                                     const floating* w, double k2, Py_ssize_t y, double gy) noexcept nogil:
    """Append e_j k - w_j k2 (w NULL: - k2; k2 == 0: e_j k), with gy as item y (row_scale_sub's
    values), computed a chunk at a time on the way out."""
    if floating is float:
        fl_streamer_put_scaled_f(st, e, n, <float>k, w, <float>k2, y, <float>gy)
    else:
        fl_streamer_put_scaled_d(st, e, n, k, w, k2, y, gy)


cdef inline void streamer_end(fl_streamer* st, const floating* region) noexcept nogil:
    """Write what is carried over (then fl_sfence() before the data is read); ``region`` is the
    region's start (it only selects the element type)."""
    if floating is float:
        fl_streamer_end_f(st)
    else:
        fl_streamer_end_d(st)


cdef inline void lanes_load(const floating* xb, Py_ssize_t C, Py_ssize_t R, floating* t,
                            floating* m) noexcept nogil:
    """Rows xb[0:R] (C <= FL_LANES_C classes) side by side: t[c * FL_LANES + l] = xb[l, c] (lanes
    l >= R repeat row R - 1), m[l] = max_c xb[l, c] (NaN skipped; -inf for none)."""
    if floating is float:
        fl_lanes_load_f(xb, C, R, t, m)
    else:
        fl_lanes_load_d(xb, C, R, t, m)


cdef inline void lanes_store(const floating* t, Py_ssize_t C, Py_ssize_t R, floating* gb) noexcept nogil:
    """The tile t back into rows gb[0:R]."""
    if floating is float:
        fl_lanes_store_f(t, C, R, gb)
    else:
        fl_lanes_store_d(t, C, R, gb)


cdef inline floating exp_nonpos(floating x) noexcept nogil:
    """exp(x) for x <= 0 (or NaN), vectorisable."""
    if floating is float:
        return fl_expf_nonpos(x)
    else:
        return fl_exp_nonpos(x)


cdef inline double row_wdot(const floating* w, const floating* x, Py_ssize_t n) noexcept nogil:
    """sum_j w_j x_j (w NULL: sum_j x_j) in double; terms with w_j == 0 are 0."""
    if w == NULL:
        if floating is float:
            return fl_row_sum_f(x, n)
        else:
            return fl_row_sum_d(x, n)
    if floating is float:
        return fl_row_dot_f(w, x, n)
    else:
        return fl_row_dot_d(w, x, n)


cdef inline void row_sq_dot(const floating* x, const floating* t, Py_ssize_t n, double* sxx, double* stt,
                            double* sxt) noexcept nogil:
    """sum_j x_j^2, sum_j t_j^2 and sum_j x_j t_j in double lanes (the order fixed by n alone)."""
    if floating is float:
        fl_row_sq_dot_f(x, t, n, sxx, stt, sxt)
    else:
        fl_row_sq_dot_d(x, t, n, sxx, stt, sxt)


cdef inline void row_cosine_grad(floating* g, fl_streamer* st, const floating* t, const floating* x,
                                 Py_ssize_t n, double nn, double k, double gs) noexcept nogil:
    """g_j = (-t_j / nn - k x_j) gs, computed in double and rounded once (g may be x: same index
    only); with st (not NULL) the values are appended to its region instead (g unused)."""
    if floating is float:
        fl_row_cosine_grad_f(g, st, t, x, n, nn, k, gs)
    else:
        fl_row_cosine_grad_d(g, st, t, x, n, nn, k, gs)


cdef inline double row_total(const floating* w, Py_ssize_t n) noexcept nogil:
    """sum of w[0:n] in double, in order (the class weights' W)."""
    cdef double total = 0.0
    cdef Py_ssize_t j
    for j in range(n):
        total += w[j]
    return total


cdef inline void row_fill(floating* g, Py_ssize_t n, double v) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating fv = <floating>v
    for j in range(n):
        g[j] = fv


# ---- half precision: the row kernels' conversions ----------------------------------------------
# With half (HALF_F16 or HALF_BF16; 0: none), a kernel's float pointers x, targets, grad and
# loss_out hold the half type's bits (uint16_t; element offsets count those). A row is read
# converted (the x* front-ends: softmax_xent's passes read the half row itself, a chunk in L1 at
# a time), or converted into a float scratch row as it is loaded; the float code computes, and
# the results are rounded out once. Class weights arrive converted to float (one row of scratch
# per call). Only the float specialisations ever run with half != 0.

cdef inline void half_load(int half, const floating* src, Py_ssize_t off, floating* dst,
                           Py_ssize_t n) noexcept nogil:
    """dst[0:n] = the half values of src[off:off + n]."""
    if floating is float:
        fl_half_load(half, <const uint16_t*>src + off, dst, n)


cdef inline floating xload(int half, const floating* x, Py_ssize_t i) noexcept nogil:
    """x[i] (half: converted)."""
    if half:
        return fl_half_to_float(half, (<const uint16_t*>x)[i])
    return x[i]


cdef inline floating xrow_max(int half, const floating* x, Py_ssize_t off, Py_ssize_t n) noexcept nogil:
    """row_max of x[off:off + n], a half row read directly."""
    if floating is float:
        if half:
            return fl_row_max_hx(half, <const uint16_t*>x + off, n)
    return row_max(x + off, n)


cdef inline double xrow_wdot(int half, const floating* w, const floating* x, Py_ssize_t off,
                             Py_ssize_t n) noexcept nogil:
    """row_wdot(w, x[off:off + n]), a half row read directly (w float)."""
    if floating is float:
        if half:
            return fl_row_wdot_hx(half, w, <const uint16_t*>x + off, n)
    return row_wdot(w, x + off, n)


cdef inline double xrow_expsum(int half, const floating* x, Py_ssize_t off, floating* g, Py_ssize_t n,
                               floating shift, bint prefetch) noexcept nogil:
    """row_expsum of x[off:off + n], the next row prefetched meanwhile where asked, a half row
    read directly."""
    if floating is float:
        if half:
            return fl_row_expsum_hx(half, <const uint16_t*>x + off, g, n, shift,
                                    <const uint16_t*>x + off + n if prefetch else NULL)
    return row_expsum(x + off, g, n, shift, x + off + n if prefetch else NULL)


cdef inline void half_put(int half, fl_streamer* st, floating* dst, Py_ssize_t off, const floating* src,
                          Py_ssize_t n) noexcept nogil:
    """src[0:n] rounded to dst[off:off + n], or appended to st's region (st not NULL)."""
    if floating is float:
        fl_half_put(half, st, <uint16_t*>dst + off, src, n)


cdef inline void half_put_scaled(int half, fl_streamer* st, floating* dst, Py_ssize_t off,
                                 const floating* e, Py_ssize_t n, double k, const floating* w,
                                 double k2, Py_ssize_t y, double gy) noexcept nogil:
    """streamer_put_scaled's values (in float) rounded to dst[off:off + n] or st's region."""
    if floating is float:
        fl_half_put_scaled(half, st, <uint16_t*>dst + off, e, n, <float>k, w, <float>k2, y, <float>gy)


cdef inline void half_store1(int half, floating* dst, Py_ssize_t i, double v) noexcept nogil:
    """dst[i] = v, rounded to float, then to the half type."""
    (<uint16_t*>dst)[i] = fl_float_to_half(half, <float>v)


cdef inline void half_streamer_begin(fl_streamer* st, floating* dst, Py_ssize_t off) noexcept nogil:
    fl_streamer_begin_h(st, <uint16_t*>dst + off)


cdef inline void half_fill_rows(int half, floating* grad, floating* loss_out, Py_ssize_t start,
                                Py_ssize_t stop, Py_ssize_t C) noexcept nogil:
    """NaN into rows [start, stop) of grad and loss_out (either may be NULL): a half row kernel
    that could not get its scratch row."""
    cdef uint16_t nan = fl_float_to_half(half, <float>NAN)
    cdef Py_ssize_t j
    if grad != NULL:
        for j in range(start * C, stop * C):
            (<uint16_t*>grad)[j] = nan
    if loss_out != NULL:
        for j in range(start, stop):
            (<uint16_t*>loss_out)[j] = nan


# ---- blocks: the partition of items that makes sums independent of the thread count ------------

cdef enum:
    MAX_BLOCKS = 256   # items are cut into min(n_items, MAX_BLOCKS) equal blocks


cdef enum:
    STREAM_MIN_BYTES = 8 << 20   # gradients at least this big are written with streaming stores


cdef enum:
    BLOCK_MIN = 1024   # elements a block holds at least (whole rows), where there are that many:
                       # a block's fixed cost outweighs a few items' work (320 elements in 256
                       # blocks: 3 us, in 1: 0.3 us)


cdef inline Py_ssize_t item_blocks(Py_ssize_t n_items, Py_ssize_t item_size) noexcept nogil:
    """Blocks for n_items items of item_size elements: at most MAX_BLOCKS, each at least
    BLOCK_MIN elements of whole items; depends on the shape only (determinism)."""
    cdef Py_ssize_t by_size = (n_items * item_size) // BLOCK_MIN
    return n_blocks_for(n_items if by_size > n_items else (by_size if by_size > 1 else 1))


cdef inline Py_ssize_t n_blocks_for(Py_ssize_t n_items) noexcept nogil:
    return n_items if n_items < MAX_BLOCKS else MAX_BLOCKS


cdef inline Py_ssize_t block_start(Py_ssize_t b, Py_ssize_t nb, Py_ssize_t n_items) noexcept nogil:
    return <Py_ssize_t>((<long long>b * n_items) // nb)


cdef inline double sum_blocks(const double* sums, Py_ssize_t nb) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t b
    for b in range(nb):
        total += sums[b]
    return total


cdef inline int clamp_threads(object n_threads) except -1:
    cdef long n = 1 if n_threads is None else int(n_threads)
    return <int>(n if n > 1 else 1)


# ---- argument helpers (Python level, run with the GIL before the kernels) ------------------------

cdef inline int half_kind(object x) except -1:
    """HALF_F16 for float16 arrays, HALF_BF16 for bfloat16 bits (uint16; or an ml_dtypes
    bfloat16 array), 0 for float32 and float64."""
    cdef str ch = x.dtype.char
    if ch == 'f' or ch == 'd':
        return 0
    if ch == 'e':
        return HALF_F16
    if ch == 'H' or x.dtype.name == 'bfloat16':
        return HALF_BF16
    raise TypeError(f"fastloss._kernels: expected float32, float64, float16 or bfloat16 arrays, got dtype {x.dtype}")


cdef void* half_ptr(object a, object x, Py_ssize_t size, bint out, str what) except? NULL:
    """The data of ``a`` (NULL for None), an array of x's (half) dtype: C-contiguous, aligned,
    native (writeable for an output) and of ``size`` elements, else TypeError / ValueError."""
    cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if a is None:
        return NULL
    if not cnp.PyArray_Check(a) or cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.PyArray_TYPE(<cnp.ndarray>x):
        raise TypeError(f"fastloss._kernels: {what} must be an array of the input's dtype {x.dtype}")
    if out:
        flags |= cnp.NPY_ARRAY_WRITEABLE
    if (cnp.PyArray_FLAGS(<cnp.ndarray>a) & flags) != flags or not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a):
        raise ValueError(f"fastloss._kernels: {what} must be C-contiguous, aligned, native"
                         + (" and writeable" if out else ""))
    if cnp.PyArray_SIZE(<cnp.ndarray>a) != size:
        raise ValueError(f"fastloss._kernels: {what} has {a.size} elements, expected {size}")
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef float* half_weights(int half, object weight, object x, Py_ssize_t C) except? NULL:
    """Class weights (C,) of x's half dtype converted to a malloc'ed float row (free() it), or
    NULL for None."""
    cdef const uint16_t* src = <const uint16_t*>half_ptr(weight, x, C, False, "weight")
    cdef float* wf
    if src == NULL:
        return NULL
    wf = <float*>malloc((C if C > 0 else 1) * sizeof(float))
    if wf == NULL:
        raise MemoryError()
    fl_half_load(half, src, wf, C)
    return wf


cdef inline bint is_f32(object x) except -1:
    cdef str ch = x.dtype.char
    if ch == 'f':
        return True
    if ch == 'd':
        return False
    raise TypeError(f"fastloss._kernels: expected float32 or float64 arrays, got dtype {x.dtype}")


cdef inline object flat(object a):
    """a 1-D view of a C-contiguous array (labels, loss_out and gscale_arr may carry the batch shape)."""
    if a is None or a.ndim == 1:
        return a
    return a.reshape(-1)


cdef inline object rows2d(object a, Py_ssize_t n, Py_ssize_t c):
    if a is None or a.ndim == 2:
        return a
    return a.reshape(n, c)
