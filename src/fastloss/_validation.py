"""Check and normalise every argument before any kernel runs: raise, never assert.

Shape and dtype checks read only ``.shape``/``.dtype``, so they serve device arrays too.
On any error nothing has been written: kernels run only after everything here has passed.
"""

import math

import numpy as np

from ._specs import CLASSES, CLASSES_OR_PROBS, ELEMENTS



_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_F16 = np.dtype(np.float16)


def is_bfloat16(dtype):
    """``ml_dtypes.bfloat16`` (or any 2-byte dtype of that name), known without importing it."""
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def real_kind(dtype):
    """NumPy's kind letter, with bfloat16 (kind 'V' in NumPy's eyes) a float: 'f'."""
    dtype = np.dtype(dtype)
    return "f" if is_bfloat16(dtype) else dtype.kind


def compute_dtype(x, name):
    """float32/float64/float16/bfloat16 stay (half values are converted as kernels load them);
    other real dtypes go to float64 as NumPy would."""
    dtype = x.dtype
    if dtype in _FLOATS:
        return dtype
    dtype = np.dtype(dtype)
    if dtype == _F16 or is_bfloat16(dtype):
        return dtype
    if dtype.kind in "biuf":
        return np.dtype(np.float64)
    raise TypeError(f"{name} must be a real (float or integer) array, got dtype {dtype}")


def bits(a):
    """A host array as the kernels take it: bfloat16 as its uint16 bits (NumPy has no
    bfloat16; see fastloss.backends), anything else (and None) as it is."""
    return a.view(np.uint16) if isinstance(a, np.ndarray) and is_bfloat16(a.dtype) else a


def check_reduction(spec, reduction):
    if reduction not in spec.reductions:
        raise ValueError(f"{spec.name}: reduction must be one of {spec.reductions}, got {reduction!r}")


def check_input_shape(spec, shape, name):
    if spec.layout == ELEMENTS:
        return
    if len(shape) < 1:
        raise ValueError(f"{spec.name}: {name} must have a class axis (last), got a 0-d array")
    if shape[-1] < 1:
        raise ValueError(f"{spec.name}: {name} must have at least one class, got shape {tuple(shape)}")


def target_kind(spec, x_shape, target, target_name):
    """'classes', 'probs' or 'values', after checking the target's dtype and shape."""
    shape, kind = tuple(target.shape), real_kind(target.dtype)
    if spec.targets in (CLASSES, CLASSES_OR_PROBS) and kind in "iu":
        if shape != tuple(x_shape[:-1]):
            raise ValueError(
                f"{spec.name}: {target_name} of class indices must have shape {tuple(x_shape[:-1])} "
                f"(the input shape without its class axis), got {shape}")
        return "classes"
    if spec.targets == CLASSES:
        raise TypeError(f"{spec.name}: {target_name} must be integer class indices, got dtype {target.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{spec.name}: {target_name} must be a real array, got dtype {target.dtype}")
    if spec.targets == CLASSES_OR_PROBS and kind != "f":
        raise TypeError(f"{spec.name}: {target_name} must be integer class indices or float "
                        f"probabilities, got dtype {target.dtype}")
    if shape != tuple(x_shape):
        raise ValueError(f"{spec.name}: {target_name} must have the input's shape {tuple(x_shape)}, got {shape}")
    return "probs" if spec.targets == CLASSES_OR_PROBS else "values"


# ---- options: one check per option name, returning the value the kernels take --------------

def _real(spec, name, value, low=-math.inf, high=math.inf, low_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{spec.name}: {name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"{spec.name}: {name} must be within the float64 range, got {value!r}") from None
    if not (low < value if low_open else low <= value) or not value <= high:
        bound = f"{'>' if low_open else '>='} {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ValueError(f"{spec.name}: {name} must be {bound}, got {value!r}")
    return value


def _finite(spec, name, value, low):
    value = _real(spec, name, value, low)
    if not math.isfinite(value):
        raise ValueError(f"{spec.name}: {name} must be finite, got {value!r}")
    return value


def _flag(spec, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{spec.name}: {name} must be True or False, got {value!r}")
    return bool(value)


_INT64 = np.iinfo(np.int64)


def _int64(spec, name, value):
    """An int the kernels take as int64: labels are int64, so a value beyond it is refused
    rather than silently never matched."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{spec.name}: {name} must be an int, got {value!r}")
    value = int(value)
    if not _INT64.min <= value <= _INT64.max:
        raise ValueError(f"{spec.name}: {name} must be in the int64 range "
                         f"[{_INT64.min}, {_INT64.max}], got {value}")
    return value


def check_real(spec, name, arr):
    """``arr`` (host or device array) has a real dtype (read from its metadata)."""
    if real_kind(arr.dtype) not in "biuf":
        raise TypeError(f"{spec.name}: {name} must be a real array, got dtype {arr.dtype}")


def check_class_weight_shape(spec, name, shape, x_shape):
    if tuple(shape) != (x_shape[-1],):
        raise ValueError(f"{spec.name}: {name} must have shape ({x_shape[-1]},) (one per class), got {tuple(shape)}")


def _float_array(spec, name, value, dtype):
    """``value`` as a ``dtype`` array of its own shape (0-d stays 0-d: no ascontiguousarray)."""
    arr = np.asarray(value)
    check_real(spec, name, arr)
    return np.asarray(arr, dtype=dtype)


def _class_weight(spec, name, value, x_shape, dtype):
    w = _float_array(spec, name, value, dtype)
    check_class_weight_shape(spec, name, w.shape, x_shape)
    return np.ascontiguousarray(w)


def _broadcast_weight(spec, name, value, x_shape, dtype, trailing):
    """An array broadcast to the input's shape; with ``trailing``, only to its last axes
    (kernels index it modulo its size, which broadcasts it over the leading axes)."""
    w = _float_array(spec, name, value, dtype)
    target = tuple(x_shape[len(x_shape) - w.ndim:]) if trailing and w.ndim <= len(x_shape) else tuple(x_shape)
    if w.shape == target and w.flags.c_contiguous:  # nothing to broadcast (broadcast_to costs ~2 us)
        return w.reshape(-1)
    try:
        b = np.broadcast_to(w, target)
    except ValueError:
        raise ValueError(f"{spec.name}: {name} of shape {w.shape} does not broadcast to the input shape "
                         f"{tuple(x_shape)}") from None
    return np.ascontiguousarray(b).reshape(-1)


def check_options(spec, options, x_shape, dtype):
    """Fill defaults, reject unknown names and bad values, convert to what kernels take."""
    if not options:
        return dict(spec.options)  # every default is a plain value (no array to convert)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise TypeError(f"{spec.name}: unknown option(s) {sorted(unknown)}; it takes {sorted(spec.options)}")
    out = dict(spec.options)
    for name, value in options.items():
        if name in spec.choices:
            if value not in spec.choices[name]:
                raise ValueError(f"{spec.name}: {name} must be one of {spec.choices[name]}, got {value!r}")
            out[name] = value
        elif name in ("weight", "pos_weight"):
            if value is None:
                out[name] = None
            elif spec.layout == ELEMENTS:
                out[name] = _broadcast_weight(spec, name, value, x_shape, dtype, trailing=name == "pos_weight")
            else:
                out[name] = _class_weight(spec, name, value, x_shape, dtype)
        elif name == "ignore_index":
            out[name] = _int64(spec, name, value)
        elif name == "label_smoothing":
            out[name] = _real(spec, name, value, 0.0, 1.0)
        elif name == "z_loss":
            out[name] = _real(spec, name, value, 0.0)
        elif name == "delta":
            out[name] = _real(spec, name, value, 0.0, low_open=True)
        elif name in ("margin", "alpha"):
            out[name] = _finite(spec, name, value, -math.inf)
        elif name in ("beta", "eps", "gamma"):
            out[name] = _finite(spec, name, value, 0.0)
        elif name in ("squared", "log_target", "log_input", "full"):
            out[name] = _flag(spec, name, value)
        else:  # pragma: no cover - a spec option without a check is a bug in this file
            raise AssertionError(f"no check for option {name!r}")
    return out


# ---- labels, grad_output, out ---------------------------------------------------------------

def int64_labels(spec, labels, target_name):
    """Class indices as C-contiguous int64, refusing values int64 cannot hold."""
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        pos = int(np.argmax(labels > np.iinfo(np.int64).max))
        raise_bad_label(spec, labels, pos, target_name)
    return np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)


def raise_bad_label(spec, labels, flat_pos, target_name, n_classes=None, ignore_index=None):
    value = int(labels.reshape(-1)[flat_pos])
    allowed = f" (must be in [0, {n_classes})" if n_classes is not None else " (out of range"
    allowed += f" or equal ignore_index={ignore_index})" if ignore_index is not None else ")"
    raise ValueError(f"{spec.name}: {target_name}{_position(labels, flat_pos)} = {value} "
                     f"is not a valid class index{allowed}")


def raise_bad_binary_label(spec, labels, flat_pos, target_name):
    raise ValueError(f"{spec.name}: {target_name}{_position(labels, flat_pos)} = "
                     f"{float(labels.reshape(-1)[flat_pos])} is not a label in {{-1, +1}} or {{0, 1}}")


def _position(a, flat):
    """'[i, j]' for flat index ``flat`` of ``a`` ('' for a 0-d array)."""
    return f"[{', '.join(str(int(i)) for i in np.unravel_index(flat, a.shape))}]" if a.ndim else ""


def check_grad_output(spec, grad_output, reduction, item_shape):
    """A float for reduction 'mean'/'sum'/scalar; a float64 array of the items for 'none'."""
    g = np.asarray(grad_output)
    if real_kind(g.dtype) not in "biuf":
        raise TypeError(f"{spec.name}: grad_output must be real, got dtype {g.dtype}")
    if g.ndim == 0:
        return float(g), None
    if reduction != "none":
        raise ValueError(f"{spec.name}: grad_output must be a scalar for reduction={reduction!r}, "
                         f"got shape {g.shape}")
    try:
        g = np.broadcast_to(g, item_shape)
    except ValueError:
        raise ValueError(f"{spec.name}: grad_output of shape {g.shape} does not match the unreduced loss "
                         f"shape {tuple(item_shape)}") from None
    return 1.0, np.ascontiguousarray(g, dtype=np.float64).reshape(-1)


def check_out(spec, out, shape, dtype, what, inputs=(), alias=None):
    """``out`` must be a writeable C-contiguous ndarray of ``shape``/``dtype`` whose memory
    overlaps none of ``inputs`` (name, array) in any way. ``alias``, the input whose gradient
    ``out`` receives, may be ``out`` exactly (same memory, shape and dtype: the gradient then
    overwrites it); any other overlap with it raises too. Kernels read a row or element before
    they write its gradient, which is safe only for that exact alias."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{spec.name}: out must be a NumPy array (it receives the {what}), got {type(out).__name__}")
    flags = out.flags
    check_out_form(spec, out, flags.c_contiguous, dtype, shape, what)
    if not flags.writeable:
        raise ValueError(f"{spec.name}: out is read-only")
    if alias is not None and np.may_share_memory(out, alias[1]) and not same_memory(out, alias[1]):
        inputs = (alias,) + tuple(inputs)
    for name, arr in inputs:
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr):
            raise ValueError(out_overlap_message(spec, name))
    return out


def out_role(spec, entry, reduction):
    """What ``out`` receives: the 'gradient', or the 'unreduced loss' of the loss entry with
    reduction 'none'; raises for the loss entry with another reduction."""
    if entry != "loss":
        return "gradient"
    if reduction == "none":
        return "unreduced loss"
    raise ValueError(f"{spec.name}: out receives the unreduced loss; pass it only with reduction='none'")


def check_out_form(spec, out, c_contiguous, dtype, shape, what):
    """``out`` (host or device array) has ``dtype`` and ``shape`` and is C-contiguous."""
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"{spec.name}: out must have dtype {dtype} (the {what}), got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{spec.name}: out must have shape {tuple(shape)} (the {what}), got {tuple(out.shape)}")
    if not c_contiguous:
        raise ValueError(f"{spec.name}: out must be C-contiguous, got strides {out.strides}")


def out_overlap_message(spec, name):
    """The error of an ``out`` that overlaps input ``name`` other than as the input itself."""
    return (f"{spec.name}: out shares memory with {name}; out may be {spec.input_name} itself "
            f"(the gradient overwrites it) and must not overlap any input otherwise")


def same_memory(a, b):
    """Whether ndarrays ``a`` and ``b`` are the same elements: one buffer start, shape, strides
    and dtype (``b is a``, or another view of exactly the same memory)."""
    return a is b or (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                      and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def size_of(shape):
    return math.prod(shape) if shape else 1

