"""What only the CUDA backend has: device arrays in and out (results stay on the device, in the
caller's array type) for every loss x option case x dtype x reduction x entry point, device
``out=`` and ``out=x``, device weights, labels and ``grad_output``, the device-side mean
denominator, labels checked on the device (NaN rows), launch geometries, bitwise-deterministic
repeats, framework arrays, availability, and compiling the kernels for a real GPU.

With NumPy inputs ``backend="cuda"`` has the other backends' API: the shared tests
(test_losses.py, test_errors.py, test_extremes.py, ...) parametrise over it. Without a GPU run
every cuda test under Numba's CUDA simulator (set before Numba is imported)::

    NUMBA_ENABLE_CUDASIM=1 FASTLOSS_REQUIRE=cuda,ptx python -m pytest -k cuda tests/

The module is skipped when the backend is unavailable. The same tests run unchanged on a GPU.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from cases import (ALL_CASES, FLOAT_IDS, FLOATS, OPTION_CASES, REQUIRED, call, case_id, make_inputs,
                   rel_err, seeded_rng, tol)
from fastloss import reference
from fastloss._dispatch import BackendUnavailable, get_backend, is_device_array
from fastloss._specs import ROWS, SPECS

try:
    nc = get_backend("cuda")
except BackendUnavailable as exc:
    if "cuda" in REQUIRED:
        raise RuntimeError(f"FASTLOSS_REQUIRE names 'cuda', but {exc}") from exc
    pytest.skip(f"cuda backend unavailable: {exc}", allow_module_level=True)

from numba import cuda  # noqa: E402  (after the skip: importing it needs the CUDA target)

SIM = nc.SIM
ENTRIES = ("loss", "grad", "loss_and_grad")


def _shape(name):
    return (3, 4, 6) if SPECS[name].layout == ROWS else (4, 5)


def _grad_output(name, x, t, reduction, opts, rng):
    if reduction == "none":
        return rng.uniform(0.5, 2.0, np.shape(reference.loss(name, x, t, reduction, **opts)))
    return 1.7


def _split(entry, result):
    return {"loss": (result, None), "grad": (None, result), "loss_and_grad": result}[entry]


def _host(a):
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def _dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def _check(name, entry, reduction, x, t, opts, loss, grad, grad_output, dtype, seed):
    rtol = tol(dtype)  # the spec's tolerance, with room for the float64 reference's own rounding
    if loss is not None:
        expected = reference.loss(name, x, t, reduction, **opts)
        loss = _host(loss)
        assert loss.dtype == dtype and loss.shape == np.shape(expected)
        assert rel_err(loss, expected) <= rtol, f"seed={seed} loss {loss} != {expected}"
    if grad is not None:
        expected = reference.grad(name, x, t, reduction, grad_output, **opts)
        grad = _host(grad)
        assert grad.dtype == dtype and grad.shape == x.shape
        assert rel_err(grad, expected) <= rtol, f"seed={seed} grad err {rel_err(grad, expected)}"


# ---- every loss x option case x dtype x reduction x entry point, on the device ----------------


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("reduction", ("mean", "none"))
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{n}-{case_id(c)}" for n, c in ALL_CASES])
def test_device_in_device_out(name, case, dtype, reduction, entry):
    """Device inputs (and device weights where the case has them): results are device arrays,
    a 0-d one for 'mean'; nothing comes back to the host until the test copies it."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, case, dtype, rng, _shape(name))
    dev_opts = {k: _dev(w) for k, w in opts.items()
                if isinstance(w, np.ndarray) and (SPECS[name].layout == ROWS or w.ndim == 1 or w.shape == x.shape)}
    xd, td = _dev(x), _dev(t)
    kwargs = dict(reduction=reduction, backend="cuda", **{**opts, **dev_opts})
    grad_output = 1.0
    if entry == "grad":
        grad_output = _grad_output(name, x, t, reduction, opts, rng)
        kwargs["grad_output"] = _dev(grad_output) if reduction == "none" else grad_output
    loss, grad = _split(entry, call(name, entry, xd, td, **kwargs))
    for result in (loss, grad):
        assert result is None or (is_device_array(result) and not isinstance(result, np.ndarray))
    if loss is not None and reduction == "mean":
        assert loss.shape == ()
    np.testing.assert_array_equal(xd.copy_to_host(), x)
    _check(name, entry, reduction, x, t, opts, loss, grad, grad_output, dtype, seed)


@pytest.mark.parametrize("name", ["softmax_xent", "multiclass_hinge", "sigmoid_bce", "huber", "kl_div"])
def test_kl_div_batchmean_and_sum_on_device(name):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], np.float64, rng, _shape(name))
    reductions = ("sum", "batchmean") if name == "kl_div" else ("sum",)
    for reduction in reductions:
        loss, grad = call(name, "loss_and_grad", _dev(x), _dev(t), reduction=reduction, backend="cuda", **opts)
        _check(name, "loss_and_grad", reduction, x, t, opts, loss, grad, 1.0, np.float64, seed)


# ---- launch geometry: threads per row, rows per block, grid-stride loops ---------------------


@pytest.mark.parametrize("n_classes", (1, 3, 8, 37))
@pytest.mark.parametrize("name,case", [("softmax_xent", OPTION_CASES["softmax_xent"][3]),
                                       ("softmax_xent", OPTION_CASES["softmax_xent"][-1]),
                                       ("multiclass_hinge", OPTION_CASES["multiclass_hinge"][1]),
                                       ("multiclass_hinge", OPTION_CASES["multiclass_hinge"][3]),
                                       ("cosine_similarity", {})],
                         ids=["xent-labels", "xent-probs", "ww", "cs", "cosine"])
def test_row_geometries(name, case, n_classes):
    seed, rng = seeded_rng()
    for n_rows in (1, 17):
        x, t, opts = make_inputs(name, case, np.float64, rng, (n_rows, n_classes))
        if "ignore_index" in opts and np.all(t == opts["ignore_index"]):
            opts["ignore_index"] = -100  # keep a row to average over
        loss, grad = call(name, "loss_and_grad", _dev(x), _dev(t), reduction="mean", backend="cuda", **opts)
        _check(name, "loss_and_grad", "mean", x, t, opts, loss, grad, 1.0, np.float64, f"{seed} {x.shape}")


# ---- out=, in place, determinism --------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_out_and_in_place_on_device(name):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], np.float32, rng, (4, 9))
    expected_loss, expected_grad = call(name, "loss_and_grad", x, t, backend="cuda", **opts)
    td = _dev(t)
    out = _dev(np.full_like(x, 7.0))
    loss, grad = call(name, "loss_and_grad", _dev(x), td, backend="cuda", out=out, **opts)
    assert grad is out and loss.copy_to_host() == expected_loss
    np.testing.assert_array_equal(out.copy_to_host(), expected_grad)
    xd = _dev(x)
    loss, grad = call(name, "loss_and_grad", xd, td, backend="cuda", out=xd, **opts)
    assert grad is xd and loss.copy_to_host() == expected_loss, f"seed={seed}"
    np.testing.assert_array_equal(xd.copy_to_host(), expected_grad)
    xd = _dev(x)
    grad = call(name, "grad", xd, td, backend="cuda", out=xd, grad_output=2.5, **opts)
    np.testing.assert_allclose(grad.copy_to_host(), 2.5 * expected_grad, rtol=1e-6)
    none_shape = x.shape[:-1] if SPECS[name].layout == ROWS else x.shape
    none_out = _dev(np.empty(none_shape, np.float32))
    losses = call(name, "loss", _dev(x), td, backend="cuda", reduction="none", out=none_out, **opts)
    assert losses is none_out
    np.testing.assert_array_equal(none_out.copy_to_host(), call(name, "loss", x, t, backend="cuda",
                                                                 reduction="none", **opts))


def test_device_out_overlapping_the_input_raises():
    """Device arrays (issue 13): out shifted by one element over x, or over x's last row, raises
    before anything is written; out=x works."""
    _, rng = seeded_rng()
    x = rng.standard_normal((4, 5))
    t = rng.standard_normal((4, 5))
    buf = _dev(np.concatenate([x.ravel(), rng.standard_normal(20)]))
    xd, td = buf[:20].reshape(4, 5), _dev(t)
    for out in (buf[1:21].reshape(4, 5), buf[15:35].reshape(4, 5)):
        for name in ("mse", "sigmoid_bce"):
            with pytest.raises(ValueError, match="out shares memory with predictions|out shares memory with logits"):
                call(name, "grad", xd, td, backend="cuda", out=out)
        with pytest.raises(ValueError, match="out shares memory with logits"):
            call("softmax_xent", "grad", xd, _dev(np.array([0, 1, 2, 3])), backend="cuda", out=out)
    np.testing.assert_array_equal(buf.copy_to_host()[:20], x.ravel())
    got = call("mse", "grad", xd, td, backend="cuda", out=xd)
    np.testing.assert_allclose(xd.copy_to_host(), reference.grad("mse", x, t), rtol=1e-12)
    assert got is xd


@pytest.mark.parametrize("name,case", [("softmax_xent", OPTION_CASES["softmax_xent"][3]),
                                       ("softmax_xent", OPTION_CASES["softmax_xent"][-1]),
                                       ("multiclass_hinge", {}), ("sigmoid_bce", OPTION_CASES["sigmoid_bce"][-1]),
                                       ("huber", {}), ("cosine_similarity", {})],
                         ids=["xent-labels", "xent-probs", "mc-hinge", "bce", "huber", "cosine"])
def test_deterministic_repeats(name, case):
    """Bitwise equal loss and gradient on every repeat, on the device and through NumPy."""
    seed, rng = seeded_rng()
    shape = (37, 11) if SPECS[name].layout == ROWS else (9, 13)
    x, t, opts = make_inputs(name, case, np.float32, rng, shape)
    xd, td = _dev(x), _dev(t)
    first = [_host(r) for r in call(name, "loss_and_grad", xd, td, backend="cuda", **opts)]
    for _ in range(2):
        again = [_host(r) for r in call(name, "loss_and_grad", xd, td, backend="cuda", **opts)]
        assert again[0].tobytes() == first[0].tobytes(), f"seed={seed}"
        assert again[1].tobytes() == first[1].tobytes(), f"seed={seed}"
    host = call(name, "loss_and_grad", x, t, backend="cuda", **opts)
    assert np.float32(host[0]).tobytes() == first[0].tobytes() and host[1].tobytes() == first[1].tobytes()
    assert rel_err(first[0], reference.loss(name, x, t, **opts)) <= 1e-4, f"seed={seed}"


# ---- the device-side mean denominator and grad_output ----------------------------------------


def test_softmax_xent_label_weighted_mean_on_device():
    seed, rng = seeded_rng()
    x = rng.standard_normal((13, 5))
    y = rng.integers(0, 5, 13)
    y[[1, 6]] = 3
    w = rng.uniform(0.2, 2.0, 5)
    for opts in ({"weight": _dev(w), "ignore_index": 3}, {"ignore_index": 3}, {"weight": w, "label_smoothing": 0.3}):
        host_opts = {k: (_host(val) if is_device_array(val) else val) for k, val in opts.items()}
        loss, grad = call("softmax_xent", "loss_and_grad", _dev(x), _dev(y), backend="cuda", **opts)
        _check("softmax_xent", "loss_and_grad", "mean", x, y, host_opts, loss, grad, 1.0, np.float64, seed)
    # everything ignored: 0/0 = NaN for the mean, zero gradient (PyTorch)
    y_all = np.full(4, -100)
    loss, grad = call("softmax_xent", "loss_and_grad", _dev(x[:4]), _dev(y_all), backend="cuda")
    assert np.isnan(loss.copy_to_host()) and not grad.copy_to_host().any()


@pytest.mark.parametrize("name", ["softmax_xent", "multiclass_hinge", "mse"])
def test_device_grad_output(name):
    """A device scalar (e.g. an autograd backward's 0-d grad_output) and a per-item device array."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][0], np.float64, rng, (5, 4))
    for reduction, go in (("mean", np.array(0.75)), ("sum", np.array([1.5])),
                          ("none", rng.uniform(0.5, 2.0, 5 if SPECS[name].layout == ROWS else (5, 4)))):
        grad = call(name, "grad", _dev(x), _dev(t), reduction=reduction, grad_output=_dev(go), backend="cuda",
                    **opts)
        expected = reference.grad(name, x, t, reduction, go.reshape(()) if go.size == 1 else go, **opts)
        assert rel_err(grad.copy_to_host(), expected) < 1e-12, f"seed={seed} {reduction}"
    with pytest.raises(ValueError, match="grad_output"):
        call(name, "grad", _dev(x), _dev(t), reduction="mean", grad_output=_dev(np.ones(3)), backend="cuda")


# ---- edge cases on the device: labels, empty batches, dtypes, argument errors -----------------


@pytest.mark.parametrize("name", ["softmax_xent", "multiclass_hinge"])
def test_bad_labels(name):
    """Host labels raise before anything is written, also with device inputs; device labels
    cannot raise without a host sync: the row's loss and gradient are NaN and nothing out of
    bounds is touched. (NumPy inputs and labels: test_errors.py.)"""
    x = np.arange(12.0).reshape(3, 4) / 7
    y = np.array([1, 4, 0])
    out_d = _dev(np.full_like(x, 5.0))
    with pytest.raises(ValueError, match=r"labels\[1\] = 4"):  # host labels with device inputs: checked
        call(name, "loss_and_grad", _dev(x), y, backend="cuda", out=out_d)
    assert (out_d.copy_to_host() == 5.0).all()
    for bad in (4, -7, 1 << 40):
        y[1] = bad
        loss, grad = call(name, "loss_and_grad", _dev(x), _dev(y), reduction="none", backend="cuda")
        loss, grad = loss.copy_to_host(), grad.copy_to_host()
        assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
        good = [0, 2]
        np.testing.assert_allclose(loss[good], reference.loss(name, x[good], y[good], "none"), rtol=1e-12)
        np.testing.assert_allclose(grad[good], reference.grad(name, x[good], y[good], "none"), rtol=1e-12)
        assert np.isnan(call(name, "loss", _dev(x), _dev(y), backend="cuda").copy_to_host())


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_empty_batch_on_device(name):
    """Empty device arrays: a NaN mean, a 0 sum, an empty gradient (NumPy inputs: test_losses.py)."""
    shape = (0, 4) if SPECS[name].layout == ROWS else (0,)
    x = np.zeros(shape)
    t = np.zeros(shape[:-1], np.int64) if SPECS[name].targets != "values" else np.zeros(shape)
    assert np.isnan(call(name, "loss", _dev(x), _dev(t), backend="cuda").copy_to_host())
    assert call(name, "loss", _dev(x), _dev(t), backend="cuda", reduction="sum").copy_to_host() == 0
    assert call(name, "grad", _dev(x), _dev(t), backend="cuda").shape == shape


@pytest.mark.parametrize("name", ["softmax_xent", "sigmoid_bce"])
def test_device_label_and_target_dtypes(name):
    """int32 labels and float32 targets on the device (NumPy layouts and dtypes: test_losses.py)."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][0], np.float64, rng, (6, 8))
    t_other = t.astype(np.int32) if t.dtype.kind == "i" else t.astype(np.float32)
    loss = call(name, "loss", _dev(x), _dev(t_other), backend="cuda", **opts).copy_to_host()
    assert rel_err(loss, reference.loss(name, x, t_other, **opts)) < 1e-12, f"seed={seed}"


def test_device_argument_errors():
    x = np.zeros((3, 4))
    y = np.array([0, 1, 2])
    xd, yd = _dev(x), _dev(y)
    with pytest.raises(ValueError, match="weight"):
        call("softmax_xent", "loss", xd, yd, backend="cuda", weight=_dev(np.ones(3)))
    with pytest.raises(TypeError, match="out must have dtype"):
        call("softmax_xent", "grad", xd, yd, backend="cuda", out=_dev(np.zeros((3, 4), np.float32)))
    with pytest.raises(ValueError, match="out must have shape"):
        call("softmax_xent", "grad", xd, yd, backend="cuda", out=_dev(np.zeros((4, 3))))
    with pytest.raises(TypeError, match="out must be a device array"):
        call("softmax_xent", "grad", xd, yd, backend="cuda", out=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="labels"):
        call("softmax_xent", "loss", xd, _dev(np.array([0, 1])), backend="cuda")
    with pytest.raises(ValueError, match="trailing shape"):
        call("sigmoid_bce", "loss", xd, _dev(x), backend="cuda", weight=_dev(np.ones((3, 1))))
    with pytest.raises(TypeError, match="host"):
        call("mse", "loss", x, xd, backend="cuda")
    tgt = _dev(x)
    with pytest.raises(ValueError, match="shares memory"):
        call("mse", "grad", xd, tgt, backend="cuda", out=tgt)
    np.testing.assert_array_equal(xd.copy_to_host(), x)


# ---- other frameworks (real GPU only) and availability -----------------------------------------


@pytest.mark.skipif(SIM, reason="CuPy/PyTorch device arrays need a real GPU")
@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_framework_arrays_stay_on_device(framework):
    mod = pytest.importorskip(framework)
    if framework == "torch" and not mod.cuda.is_available():
        pytest.skip("torch without CUDA")
    seed, rng = seeded_rng()
    x, y, opts = make_inputs("softmax_xent", {}, np.float32, rng, (6, 5))
    if framework == "torch":
        xd, yd = mod.as_tensor(x, device="cuda"), mod.as_tensor(y, device="cuda")
        stream = mod.cuda.Stream()
        ctx = mod.cuda.stream(stream)
    else:
        xd, yd = mod.asarray(x), mod.asarray(y)
        ctx = mod.cuda.Stream(non_blocking=True)
    with ctx:
        loss, grad = call("softmax_xent", "loss_and_grad", xd, yd, backend="cuda")
        assert type(loss) is type(xd) and type(grad) is type(xd) and tuple(loss.shape) == ()
        losses = call("softmax_xent", "loss", xd, yd, backend="cuda", reduction="none")
        assert type(losses) is type(xd)
        if framework == "torch":  # a tensor that requires grad hides its CUDA array interface
            assert type(call("softmax_xent", "loss", xd.clone().requires_grad_(), yd, backend="cuda")) is type(xd)
        host = (lambda a: a.cpu().numpy()) if framework == "torch" else (lambda a: mod.asnumpy(a))
        _check("softmax_xent", "loss_and_grad", "mean", x, y, opts, host(loss), host(grad), 1.0, np.float32, seed)


def _python_without_simulator(code, timeout=300):
    """Run ``code`` in a fresh interpreter with the real CUDA target (no simulator)."""
    src = os.path.dirname(os.path.dirname(fastloss.__file__))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_why_unavailable_names_the_fix():
    """Without a GPU and without the simulator the backend says why and how to get it."""
    code = "from fastloss.backends import numba_cuda as m; print(m.AVAILABLE); print(m.WHY_UNAVAILABLE)"
    proc = _python_without_simulator(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] in ("True", "False")
    if lines[0] == "False":
        assert "NUMBA_ENABLE_CUDASIM=1" in lines[1] and "fastloss[cuda]" in lines[1]


_COMPILE_CHECK = """
import numba.cuda.dispatcher as disp
from numba import cuda, types as T

class FakeDevice:  # without a GPU, device functions cannot ask the driver for a compute capability
    compute_capability = (9, 0)

if not cuda.is_available():
    disp.get_current_device = lambda: FakeDevice()
from fastloss.backends import cuda_kernels as m

ALL_BF = m.BF_X | m.BF_T | m.BF_W | m.BF_P | m.BF_G
for f, bf in ((T.float32, 0), (T.float64, 0), (T.float16, 0), (T.uint16, ALL_BF)):  # uint16: bfloat16 bits
    a1, a2 = T.Array(f, 1, "C"), T.Array(f, 2, "C")
    d1, i1 = T.Array(T.float64, 1, "C"), T.Array(T.int64, 1, "C")
    g1 = a1 if bf else d1  # a device grad_output of the input's dtype (bfloat16 bits: BF_G)
    i, d, b = T.int64, T.float64, T.boolean
    kernels = [("softmax_xent", (a2, i1, a1, i, d, d, a2, d, g1, i, d1, a1, d1, i)),
               ("softmax_xent_probs", (a2, a2, a1, d, d, a2, d, g1, i, d1, a1, d1, i)),
               ("multiclass_hinge", (a2, i1, a1, d, b, b, a2, d, g1, i, d1, a1, d1, i)),
               ("cosine_similarity", (a2, a2, a2, d, g1, i, d1, a1, d1, i)),
               ("sigmoid_bce", (a1, a1, a1, a1, a1, d, g1, i, a1, d1)),
               ("finish", (d1, d1, d, a1)),
               ("label_weight", (i1, i, i, a1, d1))]
    kernels += [(name, (a1, a1, d, d, a1, d, g1, i, a1, d1)) for name in m.ELEMENTWISE]
    for name, sig in kernels:
        ptx, _ = cuda.compile_ptx(m.kernel(name, bf).py_func, sig, cc=(9, 0))
        assert ".entry" in ptx
print("compiled")
"""


@pytest.mark.skipif(not SIM, reason="on a GPU every other test compiles the kernels for real")
def test_kernels_compile_for_the_gpu():
    """The simulator runs kernels as Python and types nothing: compile every kernel to PTX for the
    real CUDA target (needs NVVM, e.g. ``pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12``;
    no GPU needed) so typing errors cannot hide behind the simulator."""
    proc = _python_without_simulator(_COMPILE_CHECK, timeout=600)
    if proc.returncode != 0 and any(s in proc.stderr for s in ("NvvmSupportError", "DynamicLibNotFoundError",
                                                                "libnvvm", "libNVVM", "cannot be imported")):
        why = "NVVM/NVRTC not installed: " + proc.stderr.strip().splitlines()[-1]
        if "ptx" in REQUIRED:  # CI asks for the check: install fastloss[test] (it brings NVVM)
            pytest.fail(why)
        pytest.skip(why)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("value, bits", [
    (1.0, 0x3F80), (-2.5, 0xC020),
    (1 + 2**-8, 0x3F80),                       # a tie: to even
    (np.nextafter(1 + 2**-8, 2.0), 0x3F81),    # just past the tie: float32 first would make it one
    (1 + 3 * 2**-8, 0x3F82),                   # a tie: to even, upwards
    (1e39, 0x7F80), (-1e39, 0xFF80),           # beyond the range: +-inf
    (2.0**-133, 0x0001), (2.0**-134, 0x0000), (1.5 * 2.0**-134, 0x0001),  # subnormals kept
    (float("nan"), 0x7FC0),
])
def test_bfloat16_store_rounds_once_to_nearest_even(value, bits):
    from fastloss.backends.cuda_kernels import _bf16_bits
    with np.errstate(over="ignore"):  # the simulator's NumPy cast warns where the GPU's does not
        assert int(_bf16_bits.py_func(np.float64(value))) == bits
