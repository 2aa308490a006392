# The XLA FFI handler of fastloss.jax: XLA calls it with its own input and output buffers on the
# host (no copy, no Python, no GIL), and it runs the same Call as fast_call, so its results are
# bitwise the NumPy API's. fastloss.jax registers it once (jax.ffi.register_ffi_target) and
# lowers every loss to a custom call of it; the call's attributes (ffi_attributes) carry the
# loss, entry, reduction and options that fast_call's option decoding sets.
#
# Operands: x, target, then weight, pos_weight and grad_output where the bits of attribute
# ``has`` say so (1, 2, 4). Results: the loss (entry 'loss'), the gradient ('grad'), or both.
# Under vmap every operand carries the same leading batch dims (vmap_method="broadcast_all");
# attribute ``x_rank`` is the input's rank without them, and each batch member is a call of its
# own (its own mean), run one after the other in C.

from cpython.pycapsule cimport PyCapsule_New
from libc.stdio cimport snprintf

cdef extern from "fl_xla_ffi.h" nogil:
    enum:
        FL_XLA_FFI_MAJOR
        FL_XLA_FFI_MINOR
    ctypedef enum XLA_FFI_Extension_Type:
        XLA_FFI_Extension_Metadata
    ctypedef struct XLA_FFI_Extension_Base:
        XLA_FFI_Extension_Type type
    ctypedef enum XLA_FFI_DataType:
        XLA_FFI_DataType_PRED
        XLA_FFI_DataType_S8
        XLA_FFI_DataType_S16
        XLA_FFI_DataType_S32
        XLA_FFI_DataType_S64
        XLA_FFI_DataType_U8
        XLA_FFI_DataType_U16
        XLA_FFI_DataType_U32
        XLA_FFI_DataType_U64
        XLA_FFI_DataType_F16
        XLA_FFI_DataType_F32
        XLA_FFI_DataType_F64
        XLA_FFI_DataType_BF16
    ctypedef struct XLA_FFI_Buffer:
        XLA_FFI_DataType dtype
        void* data
        int64_t rank
        int64_t* dims
    ctypedef enum XLA_FFI_AttrType:
        XLA_FFI_AttrType_SCALAR
    ctypedef struct XLA_FFI_ByteSpan:
        const char* ptr
        size_t len
    ctypedef struct XLA_FFI_Scalar:
        XLA_FFI_DataType dtype
        void* value
    ctypedef enum XLA_FFI_ExecutionStage:
        XLA_FFI_ExecutionStage_EXECUTE
    ctypedef struct XLA_FFI_Args:
        int64_t size
        void** args
    ctypedef struct XLA_FFI_Rets:
        int64_t size
        void** rets
    ctypedef struct XLA_FFI_Attrs:
        int64_t size
        XLA_FFI_AttrType* types
        XLA_FFI_ByteSpan** names
        void** attrs
    ctypedef struct XLA_FFI_Error:
        pass
    ctypedef struct XLA_FFI_Api_Version:
        int major_version
        int minor_version
    ctypedef struct XLA_FFI_Metadata:
        XLA_FFI_Api_Version api_version
        uint32_t traits
    ctypedef struct XLA_FFI_Metadata_Extension:
        XLA_FFI_Metadata* metadata
    ctypedef struct XLA_FFI_CallFrame:
        XLA_FFI_Extension_Base* extension_start
        XLA_FFI_ExecutionStage stage
        XLA_FFI_Args args
        XLA_FFI_Rets rets
        XLA_FFI_Attrs attrs
    XLA_FFI_Error* fl_xla_error(XLA_FFI_CallFrame* frame, const char* message)
    bint fl_xla_name_is(const XLA_FFI_ByteSpan* name, const char* want)


# the threads of a call, as _threads.threads_for decides them (fastloss.jax keeps these current)
cdef int _xla_threads = 1
cdef Py_ssize_t _xla_parallel_min = 1 << 15


def set_xla_threads(int n_threads, Py_ssize_t parallel_min):
    """The threads the XLA handler runs a call of at least ``parallel_min`` elements on."""
    global _xla_threads, _xla_parallel_min
    _xla_threads = n_threads if n_threads > 1 else 1
    _xla_parallel_min = parallel_min


def xla_handler():
    """The XLA FFI handler, a PyCapsule for ``jax.ffi.register_ffi_target(..., platform="cpu")``."""
    return PyCapsule_New(<void*>_xla_handler, NULL, NULL)


def xla_attributes(str loss, dict options, dict defaults):
    """The custom call's attributes of ``loss`` with checked ``options`` (Python scalars, as
    ``_validation.check_options`` gives them; weight/pos_weight are operands), as NumPy scalars."""
    cdef Call c
    if _scalar_options(&c, loss, {k: v for k, v in options.items() if k not in ("weight", "pos_weight")},
                       {k: v for k, v in defaults.items() if k not in ("weight", "pos_weight")}) is None:
        raise ValueError(f"fastloss.jax: {loss}: options {options!r} are not the checked options")
    i64, f64 = np.int64, np.float64
    return dict(loss=i64(<int>c.loss), kind=i64(<int>c.kind), flag=i64(c.prm.flag),
                ignore_index=i64(c.ignore_index), squared=i64(c.squared),
                crammer_singer=i64(c.crammer_singer), a=f64(c.a), b=f64(c.b), eps=f64(c.eps), z=f64(c.z))


cdef XLA_FFI_Error* _xla_handler(XLA_FFI_CallFrame* f) noexcept nogil:
    cdef XLA_FFI_Metadata* meta
    if f.extension_start != NULL and f.extension_start.type == XLA_FFI_Extension_Metadata:
        # XLA asks which FFI API version the handler was built for (on registration)
        meta = (<XLA_FFI_Metadata_Extension*>f.extension_start).metadata
        meta.api_version.major_version = FL_XLA_FFI_MAJOR
        meta.api_version.minor_version = FL_XLA_FFI_MINOR
        meta.traits = 0
        return NULL
    if f.stage != XLA_FFI_ExecutionStage_EXECUTE:
        return NULL
    return _xla_execute(f)


cdef struct _Attrs:
    int64_t loss, kind, flag, ignore_index, squared, crammer_singer, entry, reduction, has, x_rank
    double a, b, eps, z


cdef inline Py_ssize_t _size(const XLA_FFI_Buffer* buf, int64_t first, int64_t stop) noexcept nogil:
    """The product of buf's dims first..stop-1."""
    cdef Py_ssize_t n = 1
    cdef int64_t k
    for k in range(first, stop):
        n *= buf.dims[k]
    return n


cdef inline int _float_kind(XLA_FFI_DataType dt, bint* f32, int* half) noexcept nogil:
    """The Call's f32/half of a float buffer type; the element size in bytes, or 0 (f32 and half
    then read False, 0: every path sets them, which the compiler can see)."""
    f32[0], half[0] = False, 0
    if dt == XLA_FFI_DataType_F32:
        f32[0] = True
        return 4
    if dt == XLA_FFI_DataType_F64:
        return 8
    if dt == XLA_FFI_DataType_F16:
        f32[0], half[0] = True, HALF_F16
        return 2
    if dt == XLA_FFI_DataType_BF16:
        f32[0], half[0] = True, HALF_BF16
        return 2
    return 0


cdef double _read_real(const XLA_FFI_Buffer* buf, Py_ssize_t i) noexcept nogil:
    """Element i of a float buffer as a double."""
    cdef bint f32
    cdef int half
    _float_kind(buf.dtype, &f32, &half)
    if half:
        return fl_half_to_float(half, (<const uint16_t*>buf.data)[i])
    return (<const float*>buf.data)[i] if f32 else (<const double*>buf.data)[i]


cdef bint _labels_to_int64(const XLA_FFI_Buffer* buf, Py_ssize_t off, Py_ssize_t n, int64_t* dst,
                           Py_ssize_t* bad) noexcept nogil:
    """Labels off..off+n of an integer buffer as int64 in dst; False for another type. A uint64
    label beyond int64 sets bad[0] to its position (the rest is then left unconverted)."""
    cdef Py_ssize_t i
    cdef const char* p = <const char*>buf.data
    cdef XLA_FFI_DataType dt = buf.dtype
    if dt == XLA_FFI_DataType_S32:
        for i in range(n):
            dst[i] = (<const int32_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_S64:
        for i in range(n):
            dst[i] = (<const int64_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_U32:
        for i in range(n):
            dst[i] = (<const uint32_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_S16:
        for i in range(n):
            dst[i] = (<const int16_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_U16:
        for i in range(n):
            dst[i] = (<const uint16_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_S8:
        for i in range(n):
            dst[i] = (<const int8_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_U8:
        for i in range(n):
            dst[i] = (<const uint8_t*>p)[off + i]
    elif dt == XLA_FFI_DataType_U64:
        for i in range(n):
            if (<const uint64_t*>p)[off + i] > <uint64_t>INT64_MAX:
                bad[0] = i
                return True
            dst[i] = <int64_t>(<const uint64_t*>p)[off + i]
    else:
        return False
    return True


cdef XLA_FFI_Error* _xla_execute(XLA_FFI_CallFrame* f) noexcept nogil:
    cdef _Attrs at
    cdef Call c
    cdef XLA_FFI_Scalar* sc
    cdef const XLA_FFI_ByteSpan* name
    cdef const XLA_FFI_Buffer* x
    cdef const XLA_FFI_Buffer* t
    cdef const XLA_FFI_Buffer* w = NULL
    cdef const XLA_FFI_Buffer* pw = NULL
    cdef const XLA_FFI_Buffer* go = NULL
    cdef const XLA_FFI_Buffer* lo = NULL
    cdef const XLA_FFI_Buffer* g = NULL
    cdef Py_ssize_t i, k, B, n, n_w = 0, n_pw = 0, n_go = 0, bad
    cdef int64_t iv
    cdef double dv, value, g0
    cdef bint f32, t_f32, labels, rows
    cdef int half, esize, t_half
    cdef int64_t* lab = NULL
    cdef double* gs = NULL
    cdef XLA_FFI_Error* err = NULL
    memset(&at, 0, sizeof(at))
    for i in range(f.attrs.size):
        if f.attrs.types[i] != XLA_FFI_AttrType_SCALAR:
            continue
        name = f.attrs.names[i]
        sc = <XLA_FFI_Scalar*>f.attrs.attrs[i]
        iv, dv = 0, 0.0
        if sc.dtype == XLA_FFI_DataType_S64:
            iv = (<int64_t*>sc.value)[0]
        elif sc.dtype == XLA_FFI_DataType_F64:
            dv = (<double*>sc.value)[0]
        else:
            return fl_xla_error(f, "fastloss: an attribute of an unexpected type")
        if fl_xla_name_is(name, "loss"): at.loss = iv
        elif fl_xla_name_is(name, "kind"): at.kind = iv
        elif fl_xla_name_is(name, "flag"): at.flag = iv
        elif fl_xla_name_is(name, "ignore_index"): at.ignore_index = iv
        elif fl_xla_name_is(name, "squared"): at.squared = iv
        elif fl_xla_name_is(name, "crammer_singer"): at.crammer_singer = iv
        elif fl_xla_name_is(name, "entry"): at.entry = iv
        elif fl_xla_name_is(name, "reduction"): at.reduction = iv
        elif fl_xla_name_is(name, "has"): at.has = iv
        elif fl_xla_name_is(name, "x_rank"): at.x_rank = iv
        elif fl_xla_name_is(name, "a"): at.a = dv
        elif fl_xla_name_is(name, "b"): at.b = dv
        elif fl_xla_name_is(name, "eps"): at.eps = dv
        elif fl_xla_name_is(name, "z"): at.z = dv

    # operands and results
    k = 2 + (at.has & 1) + ((at.has >> 1) & 1) + ((at.has >> 2) & 1)
    if f.args.size != k or f.rets.size != (2 if at.entry == 2 else 1):
        return fl_xla_error(f, "fastloss: the custom call has the wrong number of operands or results")
    x = <const XLA_FFI_Buffer*>f.args.args[0]
    t = <const XLA_FFI_Buffer*>f.args.args[1]
    k = 2
    if at.has & 1:
        w = <const XLA_FFI_Buffer*>f.args.args[k]
        k += 1
    if at.has & 2:
        pw = <const XLA_FFI_Buffer*>f.args.args[k]
        k += 1
    if at.has & 4:
        go = <const XLA_FFI_Buffer*>f.args.args[k]
    if at.entry != 1:
        lo = <const XLA_FFI_Buffer*>f.rets.rets[0]
    if at.entry != 0:
        g = <const XLA_FFI_Buffer*>f.rets.rets[1 if at.entry == 2 else 0]
    esize = _float_kind(x.dtype, &f32, &half)
    if esize == 0 or x.rank < at.x_rank:
        return fl_xla_error(f, "fastloss: the input's type or rank is not the one traced")
    labels = _float_kind(t.dtype, &t_f32, &t_half) == 0  # integer targets: class labels
    rows = at.loss != L_ELEMENTWISE

    # the batch (vmap's leading dims) and one member's call
    B = _size(x, 0, x.rank - at.x_rank)
    n = _size(x, x.rank - at.x_rank, x.rank)
    if B == 0 or n == 0:  # nothing to compute: an empty mean is NaN, an empty sum 0
        if lo != NULL and at.reduction != 2:
            for i in range(_size(lo, 0, lo.rank)):
                _write_real(lo, i, NAN if at.reduction != 1 else 0.0)
        return NULL
    c.C = x.dims[x.rank - 1] if rows else 1
    c.N = n // c.C
    c.f32, c.half = f32, half
    c.batch = <double>x.dims[x.rank - at.x_rank] if at.x_rank > 0 else 1.0
    c.n_threads = 1 if n < _xla_parallel_min else _xla_threads
    c.loss, c.kind = <Loss>at.loss, <EwKind>at.kind
    c.prm.a, c.prm.b, c.prm.flag, c.prm.n_pw = at.a, at.b, <int>at.flag, 0
    c.a, c.b, c.eps, c.z = at.a, at.b, at.eps, at.z
    c.ignore_index, c.squared, c.crammer_singer = at.ignore_index, at.squared != 0, at.crammer_singer != 0
    if rows and not labels and c.loss == L_SOFTMAX_XENT:
        c.loss = L_SOFTMAX_XENT_PROBS
    if w != NULL:
        n_w = _size(w, 0, w.rank) // B
    if pw != NULL:
        n_pw = _size(pw, 0, pw.rank) // B
        c.prm.n_pw = n_pw
    if go != NULL:
        n_go = _size(go, 0, go.rank) // B
    if labels:
        lab = <int64_t*>malloc(c.N * sizeof(int64_t))
    if go != NULL and at.reduction == 2:
        gs = <double*>malloc(c.N * sizeof(double))
    if (labels and lab == NULL) or (go != NULL and at.reduction == 2 and gs == NULL):
        err = fl_xla_error(f, "fastloss: out of memory")

    for i in range(B):
        if err != NULL:
            break
        c.x = <const char*>x.data + i * n * esize
        c.t = c.lab = NULL
        if labels:
            bad = -1
            if not _labels_to_int64(t, i * c.N, c.N, lab, &bad):
                err = fl_xla_error(f, "fastloss: labels of an unexpected type")
                break
            if bad >= 0:
                err = _bad_label(f, at, t, i * c.N + bad, c.C, True)
                break
            c.lab = lab
        else:
            c.t = <const char*>t.data + i * n * esize
        c.w = NULL if w == NULL else <const char*>w.data + i * n_w * esize
        c.pw = NULL if pw == NULL else <const char*>pw.data + i * n_pw * esize
        c.g = NULL if g == NULL else <char*>g.data + i * n * esize
        c.lo = NULL if (lo == NULL or at.reduction != 2) else <char*>lo.data + i * c.N * esize
        c.gscale_arr = NULL
        g0 = 1.0
        if go != NULL:
            if at.reduction == 2:
                for k in range(c.N):
                    gs[k] = _read_real(go, i * n_go + k)
                c.gscale_arr = gs
            else:
                g0 = _read_real(go, i)
        bad = _checked_run(&c, <int>at.reduction, g0, &value)
        if bad == CALL_NO_MEMORY:
            err = fl_xla_error(f, "fastloss: out of memory")
        elif bad >= 0:
            err = _bad_label(f, at, t, i * c.N + bad if labels else i * n + bad, c.C, labels)
        elif lo != NULL and at.reduction != 2:
            _write_real(lo, i, value)
    free(lab)
    free(gs)
    return err


cdef void _write_real(const XLA_FFI_Buffer* buf, Py_ssize_t i, double v) noexcept nogil:
    """Element i of a float buffer = v, rounded once to its type."""
    cdef bint f32
    cdef int half
    _float_kind(buf.dtype, &f32, &half)
    if half:
        (<uint16_t*>buf.data)[i] = fl_double_to_half(half, v)
    elif f32:
        (<float*>buf.data)[i] = <float>v
    else:
        (<double*>buf.data)[i] = v


cdef XLA_FFI_Error* _bad_label(XLA_FFI_CallFrame* f, _Attrs at, const XLA_FFI_Buffer* t, Py_ssize_t pos,
                               Py_ssize_t C, bint labels) noexcept nogil:
    """The error of a bad label at flat position pos of t, worded as the NumPy API words it."""
    cdef char msg[512]
    cdef char where[256]
    cdef char ignore[64]
    _index_text(t, pos, where, sizeof(where))
    ignore[0] = 0
    if at.loss == L_SOFTMAX_XENT:
        snprintf(ignore, sizeof(ignore), " or equal ignore_index=%lld", <long long>at.ignore_index)
    if not labels:
        snprintf(msg, sizeof(msg), "hinge: target%s = %g is not a label in {-1, +1} or {0, 1}", where,
                 _read_real(t, pos))
    elif t.dtype == XLA_FFI_DataType_U64:
        snprintf(msg, sizeof(msg), "%s: labels%s = %llu is not a valid class index (must be in [0, %lld)%s)",
                 _LABEL_LOSS[at.loss == L_SOFTMAX_XENT], where, <unsigned long long>(<const uint64_t*>t.data)[pos],
                 <long long>C, ignore)
    else:
        snprintf(msg, sizeof(msg), "%s: labels%s = %lld is not a valid class index (must be in [0, %lld)%s)",
                 _LABEL_LOSS[at.loss == L_SOFTMAX_XENT], where, <long long>_label_at(t, pos), <long long>C, ignore)
    return fl_xla_error(f, msg)


cdef const char* _LABEL_LOSS[2]
_LABEL_LOSS[0] = "multiclass_hinge"
_LABEL_LOSS[1] = "softmax_xent"


cdef int64_t _label_at(const XLA_FFI_Buffer* t, Py_ssize_t pos) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t bad = -1
    _labels_to_int64(t, pos, 1, &v, &bad)
    return v


cdef void _index_text(const XLA_FFI_Buffer* t, Py_ssize_t pos, char* out, size_t size) noexcept nogil:
    """'[i, j, ...]' of flat position pos in t's shape ('' for a scalar)."""
    cdef Py_ssize_t idx[32]
    cdef int64_t k
    cdef int used = 0
    out[0] = 0
    if t.rank == 0 or t.rank > 32:
        return
    for k in range(t.rank - 1, -1, -1):
        idx[k] = pos % t.dims[k] if t.dims[k] else 0
        pos = pos // t.dims[k] if t.dims[k] else 0
    for k in range(t.rank):
        used += snprintf(out + used, size - used, "%s%lld", "[" if k == 0 else ", ", <long long>idx[k])
        if used >= <int>size - 2:
            return
    snprintf(out + used, size - used, "]")
