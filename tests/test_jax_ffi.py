"""fastloss.jax's XLA FFI road on the CPU: the lowering is one custom call (no host callback),
results are bitwise the NumPy API's cython backend for every loss, option, reduction and float
type, vmap runs a batch in one call, donated logits take the gradient, a bad label raises an
error naming it, and the handler's declarations of XLA's C API match jaxlib's header."""

import os
import subprocess

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastloss  # noqa: E402
import fastloss.jax as fj  # noqa: E402
from fastloss._specs import ELEMENTS, SPECS  # noqa: E402

from cases import ALL_CASES, FLOAT_IDS, FLOATS, HALF, backend_or_skip, case_id, make_inputs, seeded_rng  # noqa: E402

KERNELS = os.path.join(os.path.dirname(__file__), os.pardir, "kernels")


@pytest.fixture(autouse=True)
def _cython():
    backend_or_skip("cython")


@pytest.fixture(params=FLOATS, ids=FLOAT_IDS)
def dtype(request):
    """float64 runs with jax_enable_x64 switched on for the test."""
    if request.param is np.float64:
        request.getfixturevalue("jax_x64")
    return request.param


def bits(a):
    """An array's bits (NaNs compare equal bit for bit)."""
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(ours, expected, what):
    assert np.asarray(ours).dtype == np.asarray(expected).dtype, what
    np.testing.assert_array_equal(bits(ours), bits(expected), err_msg=what)


@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{n}-{case_id(c)}" for n, c in ALL_CASES])
def test_bitwise_the_numpy_api(name, case, dtype):
    """jit(loss) and the vjp of every reduction, against fastloss.<loss>(_grad/_and_grad), on an
    input with two leading dims."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, case, dtype, rng, shape=(2, 3, 7))
    for reduction in SPECS[name].reductions:
        where = f"seed {seed}, {reduction}"
        f = getattr(fj, name)
        loss = jax.jit(lambda a: f(a, t, reduction=reduction, **opts))(x)
        assert_bitwise(loss, getattr(fastloss, name)(x, t, reduction=reduction, backend="cython", **opts), where)
        item_shape = np.shape(loss)
        ones = np.ones(item_shape, dtype)
        loss, vjp = jax.vjp(lambda a: f(a, t, reduction=reduction, **opts), x)
        (grad,) = vjp(jnp.asarray(ones))
        if dtype in HALF:  # one gradient call with the cotangent folded in
            expected = fastloss.__dict__[name + "_grad"](x, t, reduction=reduction, grad_output=ones,
                                                         backend="cython", **opts)
        else:  # the forward's gradient, times a cotangent of ones
            expected = fastloss.__dict__[name + "_and_grad"](x, t, reduction=reduction, backend="cython", **opts)[1]
        assert_bitwise(grad, expected, where)
        if dtype in HALF:  # any cotangent
            r = rng.uniform(0.5, 1.5, item_shape).astype(dtype)
            (grad,) = vjp(jnp.asarray(r))
            assert_bitwise(grad, fastloss.__dict__[name + "_grad"](x, t, reduction=reduction, grad_output=r,
                                                                   backend="cython", **opts), where)


def test_one_custom_call_and_no_host_callback():
    x = jnp.zeros((8, 5), jnp.float32)
    y = jnp.zeros((8,), jnp.int32)
    for fn in (lambda a: fj.softmax_xent(a, y), lambda a: jax.value_and_grad(lambda a: fj.mse(a, a * 2))(a)):
        hlo = jax.jit(fn).lower(x).compile().as_text()
        # one custom call, fastloss's; a host callback would be a custom call of its own
        assert hlo.count("custom_call_target=") == hlo.count('custom_call_target="fastloss_loss"') == 1, hlo


def test_vmap_is_one_call_with_a_mean_per_member():
    seed, rng = seeded_rng()
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    y = rng.integers(0, 5, (3, 6))
    y[1, 2] = -100  # a different denominator per member
    w = rng.uniform(0.5, 2, (3, 5)).astype(np.float32)
    vg = jax.jit(jax.vmap(jax.value_and_grad(lambda a, b, c: fj.softmax_xent(a, b, weight=c))))
    hlo = vg.lower(x, y, w).compile().as_text()
    assert hlo.count('custom_call_target="fastloss_loss"') == 1 and "while" not in hlo, hlo
    loss, grad = vg(x, y, w)
    for i in range(3):
        el, eg = fastloss.softmax_xent_and_grad(x[i], y[i], weight=w[i], backend="cython")
        assert_bitwise(loss[i], el, f"seed {seed}, member {i}")
        assert_bitwise(grad[i], eg, f"seed {seed}, member {i}")
    # an unbatched weight and labels broadcast over the batch
    loss = jax.jit(jax.vmap(lambda a: fj.softmax_xent(a, y[0], weight=w[0])))(x)
    for i in range(3):
        assert_bitwise(loss[i], fastloss.softmax_xent(x[i], y[0], weight=w[0], backend="cython"), f"member {i}")


def test_donated_logits_take_the_gradient():
    seed, rng = seeded_rng()
    x0 = rng.standard_normal((64, 33)).astype(np.float32)
    y = rng.integers(0, 33, 64)
    expected_loss, expected_grad = fastloss.softmax_xent_and_grad(x0, y, backend="cython")
    step = jax.jit(jax.value_and_grad(lambda a: fj.softmax_xent(a, y, inplace_grad=True)), donate_argnums=0)
    x = jnp.asarray(x0)
    pointer = x.unsafe_buffer_pointer()
    loss, grad = step(x)
    assert x.is_deleted()
    assert grad.unsafe_buffer_pointer() == pointer  # the gradient is where the logits were
    assert_bitwise(loss, expected_loss, f"seed {seed}")
    assert_bitwise(grad, expected_grad, f"seed {seed}")
    # not donated: XLA copies the logits first, which stay intact
    x = jnp.asarray(x0)
    loss, grad = jax.jit(jax.value_and_grad(lambda a: fj.softmax_xent(a, y, inplace_grad=True)))(x)
    assert_bitwise(grad, expected_grad, f"seed {seed}")
    np.testing.assert_array_equal(np.asarray(x), x0)


def test_inplace_grad_of_an_intermediate():
    """Logits computed inside the step (a Linear layer's output): the gradient takes their buffer."""
    seed, rng = seeded_rng()
    h = rng.standard_normal((16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 11)).astype(np.float32)
    y = rng.integers(0, 11, 16)
    step = jax.jit(jax.value_and_grad(lambda w, inplace: fj.softmax_xent(h @ w, y, inplace_grad=inplace)),
                   static_argnums=1)
    assert_bitwise(step(w, True)[1], step(w, False)[1], f"seed {seed}")


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32])
def test_bad_labels_raise_naming_the_label(label_dtype):
    x = jnp.zeros((2, 3, 5), jnp.float32)
    y = np.zeros((2, 3), label_dtype)
    y[1, 2] = 7
    with pytest.raises(Exception, match=r"softmax_xent: labels\[1, 2\] = 7 is not a valid class index "
                                        r"\(must be in \[0, 5\) or equal ignore_index=-100\)"):
        jax.block_until_ready(jax.jit(lambda a: fj.softmax_xent(a, y))(x))
    with pytest.raises(Exception, match=r"multiclass_hinge: labels\[1, 2\] = 7 is not a valid class index"):
        jax.block_until_ready(jax.jit(jax.grad(lambda a: fj.multiclass_hinge(a, y)))(x))
    with pytest.raises(Exception, match=r"hinge: target\[0, 1, 4\] = 0.5 is not a label"):
        jax.block_until_ready(fj.hinge(x, x.at[0, 1, 4].set(0.5)))


def test_uint64_label_beyond_int64_raises(dtype):
    if dtype is not np.float64:
        pytest.skip("uint64 arrays need jax_enable_x64 (the float64 case)")
    y = np.array([0, 2**63 + 5, 1], np.uint64)
    with pytest.raises(Exception, match=r"labels\[1\] = 9223372036854775813 is not a valid class index"):
        jax.block_until_ready(fj.softmax_xent(jnp.zeros((3, 4)), y))


def test_threads_change_applies_to_compiled_calls():
    """set_num_threads after compiling: the same bits (the blocks do not depend on threads)."""
    seed, rng = seeded_rng()
    x = rng.standard_normal((512, 300)).astype(np.float32)  # above PARALLEL_MIN: threaded
    y = rng.integers(0, 300, 512)
    vg = jax.jit(jax.value_and_grad(lambda a: fj.softmax_xent(a, y)))
    before = fastloss.get_num_threads()
    try:
        first = vg(x)
        fastloss.set_num_threads(1)
        second = vg(x)
    finally:
        fastloss.set_num_threads(before)
    for a, b in zip(first, second):
        assert_bitwise(a, b, f"seed {seed}")


def test_header_matches_jaxlib(tmp_path):
    """kernels/fl_xla_ffi.h declares XLA's C API structs as jaxlib's c_api.h does: every field
    the handler touches at the same offset and size, every constant with the same value."""
    header = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
    if not os.path.exists(header):
        pytest.skip(f"this jaxlib ships no {header}")
    fields = {
        "XLA_FFI_CallFrame": ("struct_size", "extension_start", "api", "stage", "args", "rets", "attrs"),
        "XLA_FFI_Extension_Base": ("struct_size", "type", "next"),
        "XLA_FFI_Buffer": ("dtype", "data", "rank", "dims"),
        "XLA_FFI_Args": ("size", "types", "args"),
        "XLA_FFI_Rets": ("size", "types", "rets"),
        "XLA_FFI_Attrs": ("size", "types", "names", "attrs"),
        "XLA_FFI_Scalar": ("dtype", "value"),
        "XLA_FFI_ByteSpan": ("ptr", "len"),
        "XLA_FFI_Api": ("api_version", "XLA_FFI_Error_Create"),
        "XLA_FFI_Api_Version": ("struct_size", "major_version", "minor_version"),
        "XLA_FFI_Error_Create_Args": ("struct_size", "extension_start", "message", "errc"),
        "XLA_FFI_Metadata": ("struct_size", "api_version", "traits"),
        "XLA_FFI_Metadata_Extension": ("extension_base", "metadata"),
    }
    constants = ("XLA_FFI_Extension_Metadata", "XLA_FFI_Error_Code_INVALID_ARGUMENT", "XLA_FFI_DataType_PRED",
                 "XLA_FFI_DataType_S8", "XLA_FFI_DataType_S16", "XLA_FFI_DataType_S32", "XLA_FFI_DataType_S64",
                 "XLA_FFI_DataType_U8", "XLA_FFI_DataType_U16", "XLA_FFI_DataType_U32", "XLA_FFI_DataType_U64",
                 "XLA_FFI_DataType_F16", "XLA_FFI_DataType_F32", "XLA_FFI_DataType_F64", "XLA_FFI_DataType_BF16",
                 "XLA_FFI_ArgType_BUFFER", "XLA_FFI_RetType_BUFFER", "XLA_FFI_AttrType_SCALAR",
                 "XLA_FFI_ExecutionStage_EXECUTE")
    body = "".join(f'P({s}, {f})\n' for s, fs in fields.items() for f in fs)
    body += "".join(f'printf("{c} %d\\n", (int){c});\n' for c in constants)
    layouts = []
    for include in (header, os.path.abspath(os.path.join(KERNELS, "fl_xla_ffi.h"))):
        src = tmp_path / "layout.c"
        src.write_text(f'#include "{include}"\n#include <stdio.h>\n#include <stddef.h>\n'
                       '#define P(s, f) printf(#s "." #f " %zu %zu\\n", offsetof(s, f), sizeof(((s*)0)->f));\n'
                       f"int main(void) {{\n{body}return 0;\n}}\n")
        exe = tmp_path / "layout"
        subprocess.run(["cc", "-std=c11", "-o", str(exe), str(src)], check=True)
        layouts.append(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)
    assert layouts[0] == layouts[1]
