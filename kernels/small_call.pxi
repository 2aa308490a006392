# The hot-loop call: fastloss.softmax_xent* on a small host problem with the default options,
# checked in C (no memoryviews, no Python-level validation) and run on one thread by the same
# row kernel and blocks as the general path, so the results are bitwise the same. Anything
# that is not the plain case returns NotImplemented, and the general path then validates (and
# raises where the call is wrong).

cimport numpy as cnp
import numpy as np

cnp.import_array()
_np_float32, _np_float64 = np.float32, np.float64


cdef inline bint _plain(object a, int typenum, int ndim, bint writeable) noexcept:
    """``a`` is exactly an ndarray of this type and rank: C-contiguous, aligned, native order."""
    cdef int flags = cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
    if type(a) is not cnp.ndarray:
        return False
    if writeable:
        flags |= cnp.NPY_ARRAY_WRITEABLE
    return (cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and (cnp.PyArray_FLAGS(<cnp.ndarray>a) & flags) == flags
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline bint _overlap(object a, object b) noexcept:
    """Whether the memory of two contiguous arrays overlaps."""
    cdef char* pa = <char*>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef char* pb = <char*>cnp.PyArray_DATA(<cnp.ndarray>b)
    return pa < pb + cnp.PyArray_NBYTES(<cnp.ndarray>b) and pb < pa + cnp.PyArray_NBYTES(<cnp.ndarray>a)


def softmax_xent_small(x, labels, out, reduction, entry, grad_output, dict defaults,
                       Py_ssize_t max_items):
    """softmax_xent ``entry`` ('loss', 'grad', 'loss_and_grad') with the default options, for
    2-D logits of at most ``max_items`` elements and labels in [0, C) or ``ignore_index``, with
    reduction 'mean' or 'sum', a float ``grad_output`` and ``out`` None or a plain array;
    NotImplemented for any other call."""
    cdef cnp.npy_intp dims[2]
    cdef Py_ssize_t N, C, i
    cdef int typenum
    cdef const int64_t* lab
    cdef int64_t y, ignore_index = defaults["ignore_index"]
    cdef double eps = defaults["label_smoothing"], z = defaults["z_loss"]
    cdef double count = 0.0, gscale, total
    cdef bint mean = reduction == "mean"
    cdef int want = 0 if entry == "loss" else (1 if entry == "grad" else 2)
    cdef object grad = None
    if not (mean or reduction == "sum") or type(grad_output) is not float or defaults["weight"] is not None:
        return NotImplemented
    if _plain(x, cnp.NPY_FLOAT32, 2, False):
        typenum = cnp.NPY_FLOAT32
    elif _plain(x, cnp.NPY_FLOAT64, 2, False):
        typenum = cnp.NPY_FLOAT64
    else:
        return NotImplemented
    N = cnp.PyArray_DIMS(<cnp.ndarray>x)[0]
    C = cnp.PyArray_DIMS(<cnp.ndarray>x)[1]
    if N == 0 or C == 0 or N * C > max_items or not _plain(labels, cnp.NPY_INT64, 1, False) \
            or cnp.PyArray_DIMS(<cnp.ndarray>labels)[0] != N:
        return NotImplemented
    if want != 0:
        if out is None:
            dims[0] = N
            dims[1] = C
            grad = cnp.PyArray_EMPTY(2, dims, typenum, 0)
        elif (_plain(out, typenum, 2, True) and cnp.PyArray_DIMS(<cnp.ndarray>out)[0] == N
              and cnp.PyArray_DIMS(<cnp.ndarray>out)[1] == C and not _overlap(out, labels)
              and (cnp.PyArray_DATA(<cnp.ndarray>out) == cnp.PyArray_DATA(<cnp.ndarray>x)
                   or not _overlap(out, x))):  # x itself, or apart from it (else the road raises)
            grad = out
        else:
            return NotImplemented
    elif out is not None:
        return NotImplemented
    lab = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>labels)
    for i in range(N):
        y = lab[i]
        if y != ignore_index:
            if y < 0 or y >= C:
                return NotImplemented
            count += 1.0
    gscale = <double>grad_output if want == 1 else 1.0
    if mean:
        gscale = gscale / count   # IEEE: inf or NaN when every row is ignored, as the general path
    if typenum == cnp.NPY_FLOAT32:
        total = _softmax_xent_all[float](<const float*>cnp.PyArray_DATA(<cnp.ndarray>x), lab, NULL, C, N, C,
                                         ignore_index, eps, z,
                                         <float*>cnp.PyArray_DATA(<cnp.ndarray>grad) if want else NULL,
                                         gscale, NULL, NULL, 1)
    else:
        total = _softmax_xent_all[double](<const double*>cnp.PyArray_DATA(<cnp.ndarray>x), lab, NULL, C, N, C,
                                          ignore_index, eps, z,
                                          <double*>cnp.PyArray_DATA(<cnp.ndarray>grad) if want else NULL,
                                          gscale, NULL, NULL, 1)
    if want == 1:
        return grad
    if mean:
        total = total / count
    value = (_np_float32 if typenum == cnp.NPY_FLOAT32 else _np_float64)(total)
    return value if want == 0 else (value, grad)
