# The road's checks in C for the common small host call of every loss (fewer elements than use
# threads; the hot loop): plain (C-contiguous, aligned, native) float32/float64 arrays, class labels of any integer width
# (float targets of the input's shape and dtype for the elementwise losses, softmax_xent's probabilities and
# cosine_similarity, whose integer targets the general road converts), each option of the loss as a
# Python scalar or a plain array of its exact shape, any reduction, a scalar grad_output, out None
# or a plain array. Such a call runs the kernels of the general road with the same arguments (the
# same blocks, one thread, as the general road at that size), so its results are bitwise the general road's. Anything
# else (another layout, dtype or broadcast, an array grad_output, a bad label, any error) returns
# NotImplemented, and the general road checks it in Python and raises where the call is wrong.

cimport numpy as cnp
import numpy as np
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, uint32_t, uint64_t, INT64_MAX

cnp.import_array()
_np_float32, _np_float64 = np.float32, np.float64

cdef enum Loss:
    L_SOFTMAX_XENT
    L_SOFTMAX_XENT_PROBS
    L_MULTICLASS_HINGE
    L_COSINE_SIMILARITY
    L_ELEMENTWISE

_LOSSES = {"softmax_xent": L_SOFTMAX_XENT, "multiclass_hinge": L_MULTICLASS_HINGE,
           "cosine_similarity": L_COSINE_SIMILARITY,
           "sigmoid_bce": L_ELEMENTWISE, "huber": L_ELEMENTWISE, "hinge": L_ELEMENTWISE,
           "mse": L_ELEMENTWISE, "mae": L_ELEMENTWISE, "kl_div": L_ELEMENTWISE,
           "smooth_l1": L_ELEMENTWISE, "log_cosh": L_ELEMENTWISE, "msle": L_ELEMENTWISE,
           "poisson_nll": L_ELEMENTWISE, "sigmoid_focal": L_ELEMENTWISE}
_EW_KINDS = {"sigmoid_bce": EW_SIGMOID_BCE, "huber": EW_HUBER, "hinge": EW_HINGE, "mse": EW_MSE,
             "mae": EW_MAE, "kl_div": EW_KL_DIV, "smooth_l1": EW_SMOOTH_L1, "log_cosh": EW_LOG_COSH,
             "msle": EW_MSLE, "poisson_nll": EW_POISSON_NLL, "sigmoid_focal": EW_SIGMOID_FOCAL}
_ENTRIES = {"loss": 0, "grad": 1, "loss_and_grad": 2}
_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2, "batchmean": 3}


cdef struct Call:
    # one validated call, as the kernels take it (fast_call's and the XLA FFI handler's)
    Loss loss
    EwKind kind
    EwParams prm              # elementwise: a, b, flag, n_pw
    Py_ssize_t N, C           # rows and classes (elementwise: N = n elements, C = 1)
    const void* x
    const void* t             # float targets, or NULL
    const int64_t* lab        # class labels, or NULL
    const void* w
    const void* pw
    double w_sum, eps, z, a, b
    int64_t ignore_index
    bint squared, crammer_singer
    bint f32                  # float32 (and half) arrays, else float64
    int half                  # 0, HALF_F16 or HALF_BF16: the arrays hold that type's bits
    double batch              # 'batchmean' divides by this (the input's first dim)
    void* g
    double gscale
    const double* gscale_arr  # per-item grad_output, or NULL
    void* lo
    int n_threads


cdef double _run_call(Call* c) noexcept nogil:
    if c.f32:
        return _run_typed[float](c, <float*>NULL)
    return _run_typed[double](c, <double*>NULL)


cdef double _run_typed(Call* c, floating* typed) noexcept nogil:
    cdef const floating* x = <const floating*>c.x
    if c.loss == L_SOFTMAX_XENT:
        return _softmax_xent_all(x, c.lab, <const floating*>c.w, c.w_sum, c.N, c.C, c.ignore_index,
                                 c.eps, c.z, <floating*>c.g, c.gscale, c.gscale_arr, <floating*>c.lo,
                                 c.n_threads, c.half)
    if c.loss == L_SOFTMAX_XENT_PROBS:
        return _softmax_xent_probs_all(x, <const floating*>c.t, <const floating*>c.w, c.N, c.C, c.eps,
                                       c.z, <floating*>c.g, c.gscale, c.gscale_arr, <floating*>c.lo,
                                       c.n_threads, c.half)
    if c.loss == L_MULTICLASS_HINGE:
        return _multiclass_hinge_all(x, c.lab, <const floating*>c.w, c.N, c.C, c.a, c.squared,
                                     c.crammer_singer, <floating*>c.g, c.gscale, c.gscale_arr,
                                     <floating*>c.lo, c.n_threads, c.half)
    if c.loss == L_COSINE_SIMILARITY:
        return _cosine_similarity_all(x, <const floating*>c.t, c.N, c.C, <floating*>c.g, c.gscale,
                                      c.gscale_arr, <floating*>c.lo, c.n_threads, c.half)
    return _elementwise_all(c.kind, x, <const floating*>c.t, <const floating*>c.w, <const floating*>c.pw,
                            c.prm, c.N, <floating*>c.g, c.gscale, c.gscale_arr, <floating*>c.lo,
                            c.n_threads, c.half)


cdef enum:
    CALL_DONE = -1
    CALL_NO_MEMORY = -2


cdef Py_ssize_t _checked_run(Call* c, int red, double g0, double* value) noexcept nogil:
    """The general road's label and binary-label pre-passes, the mean's denominator and the
    kernels, for a Call with N >= 1 whose w_sum, gscale and n_threads are still to be set:
    CALL_DONE with value[0] the reduced loss ('sum': the total, 'mean'/'batchmean': divided),
    the position of the first bad label (nothing written), or CALL_NO_MEMORY."""
    cdef double denom = <double>c.N, v
    cdef Py_ssize_t y
    cdef bint has_ignore
    cdef float* wf = NULL
    if c.lab != NULL:
        has_ignore = c.loss == L_SOFTMAX_XENT
        if c.f32:
            v, y = _label_weight_sum[float](c.lab, c.N, c.C, c.ignore_index, has_ignore, <const float*>c.w, c.half)
        else:
            v, y = _label_weight_sum[double](c.lab, c.N, c.C, c.ignore_index, has_ignore, <const double*>c.w, 0)
        if y >= 0:
            return y
        if has_ignore:
            denom = v
    if c.loss == L_ELEMENTWISE and c.kind == EW_HINGE:
        y = (_first_bad_label[float](<const float*>c.t, c.N, c.n_threads, c.half) if c.f32
             else _first_bad_label[double](<const double*>c.t, c.N, c.n_threads, 0))
        if y >= 0:
            return y
    if red == 3:
        denom = c.batch
    if c.half and c.w != NULL and c.loss != L_ELEMENTWISE:
        # the row kernels take half class weights as one float row
        wf = <float*>malloc(c.C * sizeof(float))
        if wf == NULL:
            return CALL_NO_MEMORY
        fl_half_load(c.half, <const uint16_t*>c.w, wf, c.C)
        c.w = wf
    c.w_sum = <double>c.C
    if c.w != NULL and c.loss == L_SOFTMAX_XENT:
        c.w_sum = row_total[float](<const float*>c.w, c.C) if c.f32 else row_total[double](<const double*>c.w, c.C)
    c.gscale = g0 / denom if (red == 0 or red == 3) else g0
    v = _run_call(c)
    free(wf)
    value[0] = v / denom if (red == 0 or red == 3) else v
    return CALL_DONE


cdef inline bint _plain(object a, int typenum, bint writeable) noexcept:
    """``a`` is exactly an ndarray of this type: C-contiguous, aligned, native byte order."""
    cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if type(a) is not cnp.ndarray:
        return False
    if writeable:
        flags |= cnp.NPY_ARRAY_WRITEABLE
    return (cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and (cnp.PyArray_FLAGS(<cnp.ndarray>a) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline bint _shape_is(object a, int ndim, const cnp.npy_intp* dims) noexcept:
    cdef int k
    if cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim:
        return False
    for k in range(ndim):
        if cnp.PyArray_DIMS(<cnp.ndarray>a)[k] != dims[k]:
            return False
    return True


cdef inline bint _overlap(object a, object b) noexcept:
    """Whether the memory of two contiguous arrays overlaps."""
    cdef char* pa = <char*>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef char* pb = <char*>cnp.PyArray_DATA(<cnp.ndarray>b)
    return pa < pb + cnp.PyArray_NBYTES(<cnp.ndarray>b) and pb < pa + cnp.PyArray_NBYTES(<cnp.ndarray>a)


cdef inline bint _real(object v, double* out) noexcept:
    """A Python float or int (not bool) as a double; False for anything else."""
    if type(v) is float:
        out[0] = <double>v
        return True
    if type(v) is int:
        try:
            out[0] = <double>v
        except OverflowError:
            return False
        return True
    return False


cdef object _int64_labels(object labels, Py_ssize_t n):
    """Integer labels as a C-contiguous int64 array (the array itself when it is one), or None
    for another dtype or a uint64 label beyond int64."""
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>labels)
    cdef cnp.npy_intp dims[1]
    cdef int64_t* dst
    cdef void* src = cnp.PyArray_DATA(<cnp.ndarray>labels)
    cdef Py_ssize_t i
    if typenum == cnp.NPY_INT64 or (typenum == cnp.NPY_LONGLONG and sizeof(long long) == 8):
        return labels
    dims[0] = n
    if typenum == cnp.NPY_UINT64 or (typenum == cnp.NPY_ULONGLONG and sizeof(long long) == 8):
        for i in range(n):
            if (<uint64_t*>src)[i] > <uint64_t>INT64_MAX:
                return None
    converted = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
    dst = <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>converted)
    if typenum == cnp.NPY_INT32:
        for i in range(n):
            dst[i] = (<int32_t*>src)[i]
    elif typenum == cnp.NPY_UINT32:
        for i in range(n):
            dst[i] = (<uint32_t*>src)[i]
    elif typenum == cnp.NPY_INT16:
        for i in range(n):
            dst[i] = (<int16_t*>src)[i]
    elif typenum == cnp.NPY_UINT16:
        for i in range(n):
            dst[i] = (<uint16_t*>src)[i]
    elif typenum == cnp.NPY_INT8:
        for i in range(n):
            dst[i] = (<int8_t*>src)[i]
    elif typenum == cnp.NPY_UINT8:
        for i in range(n):
            dst[i] = (<uint8_t*>src)[i]
    elif typenum == cnp.NPY_UINT64 or typenum == cnp.NPY_ULONGLONG:
        for i in range(n):
            dst[i] = <int64_t>(<uint64_t*>src)[i]
    else:
        return None
    return converted


cdef object _scalar_options(Call* c, str loss, dict options, dict defaults):
    """Set c's option fields from ``options`` (the rest from ``defaults``, the loss's options),
    each of the exact type the general road converts; (weight, pos_weight) as given (unchecked),
    or None for anything else (an unknown option, a value of another type or out of range)."""
    cdef Py_ssize_t matched = 0
    weight = pos_weight = None
    c.eps = c.z = c.a = c.b = 0.0  # every field set: options the loss lacks stay zero
    c.ignore_index = 0
    c.squared = c.crammer_singer = False
    c.prm.flag = 0
    c.prm.n_pw = 0
    c.loss = <Loss><int>_LOSSES[loss]
    c.kind = <EwKind><int>_EW_KINDS.get(loss, 0)
    for key, value in defaults.items():
        if key in options:
            value = options[key]
            matched += 1
        if key == "weight":
            weight = value
        elif key == "pos_weight":
            pos_weight = value
        elif key == "ignore_index":
            if type(value) is not int:
                return None
            try:
                c.ignore_index = value
            except OverflowError:
                return None
        elif key == "label_smoothing":
            if not _real(value, &c.eps) or not (0.0 <= c.eps <= 1.0):
                return None
        elif key == "z_loss":
            if not _real(value, &c.z) or not c.z >= 0.0:
                return None
        elif key == "delta":
            if not _real(value, &c.a) or not (0.0 < c.a <= INFINITY):
                return None
        elif key == "margin" or key == "alpha":
            if not _real(value, &c.a) or not isfinite(c.a):
                return None
        elif key == "beta" or key == "eps":
            if not _real(value, &c.a) or not (0.0 <= c.a < INFINITY):
                return None
        elif key == "gamma":
            if not _real(value, &c.b) or not (0.0 <= c.b < INFINITY):
                return None
        elif key == "squared" or key == "log_target":
            if type(value) is not bool:
                return None
            c.squared = value
            c.prm.flag = 1 if value else 0
        elif key == "log_input" or key == "full":
            if type(value) is not bool:
                return None
            if value:
                c.prm.flag |= EW_LOG_INPUT if key == "log_input" else EW_FULL
        elif key == "mode":
            if value != "crammer_singer" and value != "weston_watkins":
                return None
            c.crammer_singer = value == "crammer_singer"
        else:
            return None
    if matched != len(options):  # an unknown option: the general road names it
        return None
    c.prm.a = c.a
    c.prm.b = c.b
    return weight, pos_weight


def fast_call(str loss, str entry, x, target, out, str reduction, grad_output, dict options,
              dict defaults, Py_ssize_t parallel_min):
    """The public entry point's result for the common host call of ``loss`` with ``options``
    (``defaults``: the loss's options and their defaults; see the top of this file) on fewer
    than ``parallel_min`` elements, run on one thread; NotImplemented for any other call, which
    the general road then checks."""
    cdef Call c
    cdef object lid = _LOSSES.get(loss)
    cdef object eid = _ENTRIES.get(entry)
    cdef object rid = _REDUCTIONS.get(reduction)
    cdef int typenum, ndim, want, red, item_ndim
    cdef Py_ssize_t n
    cdef const cnp.npy_intp* dims
    cdef double g0 = 1.0, total
    cdef bint f32, rows
    cdef object labels = None, grad = None, loss_out = None
    if lid is None or eid is None or rid is None or type(x) is not cnp.ndarray:
        return NotImplemented
    if _plain(x, cnp.NPY_FLOAT32, False):
        typenum, f32 = cnp.NPY_FLOAT32, True
    elif _plain(x, cnp.NPY_FLOAT64, False):
        typenum, f32 = cnp.NPY_FLOAT64, False
    else:
        return NotImplemented
    c.loss, want, red = <Loss><int>lid, <int>eid, <int>rid
    rows = c.loss != L_ELEMENTWISE
    ndim = cnp.PyArray_NDIM(<cnp.ndarray>x)
    dims = cnp.PyArray_DIMS(<cnp.ndarray>x)
    n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    # below parallel_min elements only, on one thread: above, the general road's checks cost
    # nothing next to the kernel (and its label pre-pass measured 4x faster than this one's)
    if n == 0 or n >= parallel_min or (rows and ndim == 0) or (red == 3 and loss != "kl_div"):
        return NotImplemented
    c.C = dims[ndim - 1] if rows else 1
    c.N = n // c.C
    item_ndim = ndim - 1 if rows else ndim
    if want == 1:
        if not _real(grad_output, &g0):
            return NotImplemented

    # options: each one of the loss (its defaults), of the exact type the general road converts
    arrays = _scalar_options(&c, loss, options, defaults)
    if arrays is None:
        return NotImplemented
    weight, pos_weight = arrays
    if weight is not None:
        if not _plain(weight, typenum, False):
            return NotImplemented
        if not (_shape_is(weight, 1, dims + ndim - 1) if rows else _shape_is(weight, ndim, dims)):
            return NotImplemented
    if pos_weight is not None:
        if ndim == 0 or not _plain(pos_weight, typenum, False) or not _shape_is(pos_weight, 1, dims + ndim - 1):
            return NotImplemented
        c.prm.n_pw = dims[ndim - 1]

    # targets: class labels of the batch shape, or floats of the input's shape and dtype
    if type(target) is not cnp.ndarray:
        return NotImplemented
    if (rows and c.loss != L_COSINE_SIMILARITY and cnp.PyArray_ISINTEGER(<cnp.ndarray>target)
            and not cnp.PyArray_ISBOOL(<cnp.ndarray>target)):
        if not _plain(target, cnp.PyArray_TYPE(<cnp.ndarray>target), False) or not _shape_is(target, ndim - 1, dims):
            return NotImplemented
        labels = _int64_labels(target, c.N)
        if labels is None:
            return NotImplemented
        c.lab = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>labels)
        c.t = NULL
    elif c.loss != L_MULTICLASS_HINGE and _plain(target, typenum, False) and _shape_is(target, ndim, dims):
        if c.loss == L_SOFTMAX_XENT:
            c.loss = L_SOFTMAX_XENT_PROBS
        c.t = cnp.PyArray_DATA(<cnp.ndarray>target)
        c.lab = NULL
    else:
        return NotImplemented

    # out: the gradient (x itself, or apart from every input); the loss entry takes none here
    if out is not None:
        if want == 0 or not _plain(out, typenum, True) or not _shape_is(out, ndim, dims):
            return NotImplemented
        if cnp.PyArray_DATA(<cnp.ndarray>out) != cnp.PyArray_DATA(<cnp.ndarray>x) and _overlap(out, x):
            return NotImplemented
        for other in (target, weight, pos_weight):
            if other is not None and _overlap(out, other):
                return NotImplemented

    # allocate, then the pre-passes (a bad label: the general road raises; nothing was written),
    # the mean's denominator and the kernels, as the general road runs them
    c.w = NULL if weight is None else cnp.PyArray_DATA(<cnp.ndarray>weight)
    c.pw = NULL if pos_weight is None else cnp.PyArray_DATA(<cnp.ndarray>pos_weight)
    c.f32, c.half, c.n_threads, c.gscale_arr = f32, 0, 1, NULL
    c.batch = <double>dims[0] if ndim else 1.0
    c.g = c.lo = NULL
    if want != 0:
        grad = out if out is not None else cnp.PyArray_EMPTY(ndim, <cnp.npy_intp*>dims, typenum, 0)
        c.g = cnp.PyArray_DATA(<cnp.ndarray>grad)
    if red == 2 and want != 1:
        loss_out = cnp.PyArray_EMPTY(item_ndim, <cnp.npy_intp*>dims, typenum, 0)
        c.lo = cnp.PyArray_DATA(<cnp.ndarray>loss_out)
    c.x = cnp.PyArray_DATA(<cnp.ndarray>x)
    if _checked_run(&c, red, g0, &total) != CALL_DONE:
        return NotImplemented
    if want == 1:
        return grad
    value = loss_out if red == 2 else (_np_float32 if f32 else _np_float64)(total)
    return value if want == 0 else (value, grad)
