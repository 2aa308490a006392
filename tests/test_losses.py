"""Every loss x option case x backend x dtype x reduction x entry point against fastloss.reference,
plus finite differences, leading batch dims, out=, grad_output and the kinks."""

import numpy as np
import pytest

from cases import (ALL_CASES, DTYPES, FLOAT_IDS, FLOATS, OPTION_CASES, TEST_ONLY_KEYS, TOL,
                   assert_reference, call, case_id, kink_distance, make_inputs, rel_err, seeded_rng,
                   skip_if_simulated, tol)
from fastloss import reference
from fastloss._specs import ROWS, SPECS

ENTRIES = ("loss", "grad", "loss_and_grad")


def test_every_option_has_a_case():
    for name, spec in SPECS.items():
        covered = {k for case in OPTION_CASES[name] for k in case if k not in TEST_ONLY_KEYS}
        assert covered == set(spec.options), f"{name}: options without a test case: {set(spec.options) - covered}"


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{n}-{case_id(c)}" for n, c in ALL_CASES])
def test_matches_reference(backend, name, case, dtype, reduction, entry):
    """Half inputs: targets and weights are made in the half dtype too (the road rounds them to
    the input's dtype), so the reference sees exactly the values the kernels do."""
    seed, rng = seeded_rng()
    shape = (3, 4, 6) if SPECS[name].layout == ROWS else (4, 5)
    x, t, opts = make_inputs(name, case, dtype, rng, shape)
    x_before, t_before = x.copy(), t.copy()
    kwargs = dict(reduction=reduction, backend=backend, **opts)
    rtol = tol(dtype)
    grad_output = 1.0
    if entry == "grad":
        grad_output = rng.uniform(0.5, 2.0, np.shape(reference.loss(name, x, t, reduction, **opts))) \
            if reduction == "none" else 1.7
        kwargs["grad_output"] = grad_output
    result = call(name, entry, x, t, **kwargs)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(t, t_before)
    loss, grad = {"loss": (result, None), "grad": (None, result), "loss_and_grad": result}[entry]
    if loss is not None:
        expected = reference.loss(name, x, t, reduction, **opts)
        assert isinstance(loss, np.ndarray if reduction == "none" else dtype)  # NumPy scalar or array
        assert np.asarray(loss).dtype == dtype and np.shape(loss) == np.shape(expected)
        assert rel_err(loss, expected) <= rtol, f"seed={seed} loss {loss} != {expected}"
    if grad is not None:
        expected = reference.grad(name, x, t, reduction, grad_output, **opts)
        assert isinstance(grad, np.ndarray) and grad.dtype == dtype and grad.shape == x.shape
        assert rel_err(grad, expected) <= rtol, f"seed={seed} grad err {rel_err(grad, expected)}"


@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{n}-{case_id(c)}" for n, c in ALL_CASES])
def test_gradient_matches_finite_differences(backend, name, case):
    """4th-order central differences of the backend's own float64 loss, away from kinks."""
    seed, rng = seeded_rng()
    shape = (3, 5) if SPECS[name].layout == ROWS else (3, 4)
    for _ in range(200):
        x, t, opts = make_inputs(name, case, np.float64, rng, shape)
        if kink_distance(name, x, t, {**SPECS[name].options, **opts}) > 1e-3:
            break
    grad = call(name, "grad", x, t, reduction="sum", backend=backend, **opts)
    h = 1e-4
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        values = []
        for step in (-2, -1, 1, 2):
            xp = x.copy()
            xp[i] += step * h
            values.append(float(call(name, "loss", xp, t, reduction="sum", backend=backend, **opts)))
        numeric[i] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * h)
    assert rel_err(grad, numeric) < 1e-7, f"seed={seed}"


@pytest.mark.parametrize("shape", ((37, 3), (70, 16), (300, 10), (5, 17)))
def test_many_rows_of_few_classes(backend, shape):
    """Row losses over many short rows: the kernels' row-tile paths (full tiles, a partial last
    tile, rows side by side in vector lanes), every option case, per-row losses and gradients."""
    if shape[0] * shape[1] > 2000:  # CUDA's own row geometries: test_cuda.py
        skip_if_simulated(backend, f"every row loss and case on {shape}")
    seed, rng = seeded_rng()
    for name in [n for n in OPTION_CASES if SPECS[n].layout == ROWS]:
        for case in OPTION_CASES[name]:
            for dtype in DTYPES:
                x, t, opts = make_inputs(name, case, dtype, rng, shape)
                grad_output = rng.uniform(0.5, 2.0, shape[0])
                loss = call(name, "loss", x, t, reduction="none", backend=backend, **opts)
                grad = call(name, "grad", x, t, reduction="none", grad_output=grad_output, backend=backend, **opts)
                total, mean_grad = call(name, "loss_and_grad", x, t, backend=backend, **opts)
                tol = TOL[dtype] * 10
                where = f"seed={seed} {name} {case} {dtype.__name__} {shape}"
                assert rel_err(loss, reference.loss(name, x, t, "none", **opts)) <= tol, where
                assert rel_err(grad, reference.grad(name, x, t, "none", grad_output, **opts)) <= tol, where
                assert rel_err(total, reference.loss(name, x, t, **opts)) <= tol, where
                assert rel_err(mean_grad, reference.grad(name, x, t, **opts)) <= tol, where


@pytest.mark.parametrize("shape", ((2101, 1001), (257, 8193), (200003, 11)))
def test_large_gradients(backend, shape):
    """softmax_xent on gradients of over 8 MB: the kernels stream them out (non-temporal stores
    of whole lines, rows not line-aligned; few classes: blocks of rows side by side); in place
    (out=x) they do not."""
    skip_if_simulated(backend, f"{shape[0] * shape[1]:,}-element gradients")
    seed, rng = seeded_rng()
    for case in OPTION_CASES["softmax_xent"]:
        x, t, opts = make_inputs("softmax_xent", case, np.float32, rng, shape)
        if not case.get("probs"):
            t[rng.integers(0, shape[0], 5)] = opts.get("ignore_index", -100)
        grad_output = rng.uniform(0.5, 2.0, shape[0])
        loss, grad = call("softmax_xent", "loss_and_grad", x, t, backend=backend, **opts)
        scaled = call("softmax_xent", "grad", x, t, reduction="none", grad_output=grad_output,
                      backend=backend, **opts)
        in_place = x.copy()
        call("softmax_xent", "loss_and_grad", in_place, t, out=in_place, backend=backend, **opts)
        tol = TOL[np.float32] * 10
        expected = reference.grad("softmax_xent", x, t, **opts)
        where = f"seed={seed} {case} {shape}"
        assert rel_err(loss, reference.loss("softmax_xent", x, t, **opts)) <= tol, where
        assert rel_err(grad, expected) <= tol, where
        assert rel_err(in_place, expected) <= tol, where
        assert rel_err(scaled, reference.grad("softmax_xent", x, t, "none", grad_output, **opts)) <= tol, where


# (shape, dtype, reduction, tolerance): leading batch dims, 1-D (short, and longer than a vector
# or a warp), a single item, and more than 8 MB of float32 gradient (streamed out, blocks not
# line-aligned)
SHAPES = [((2, 3, 2, 5), np.float64, "none", 1e-12), ((6,), np.float64, "none", 1e-12),
          ((1, 1), np.float64, "none", 1e-12), ((70,), np.float64, "none", 1e-12),
          ((1031, 2039), np.float32, "mean", TOL[np.float32] * 10)]


@pytest.mark.parametrize("shape,dtype,reduction,tol", SHAPES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else None)
@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_shapes(backend, name, shape, dtype, reduction, tol):
    if np.prod(shape) > 10**6:
        skip_if_simulated(backend, f"{np.prod(shape):,} elements")
    if name == "cosine_similarity" and shape[-1] == 1:  # see test_cosine_similarity_of_one_class
        shape = shape[:-1] + (2,)
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], dtype, rng, shape)
    loss, grad = call(name, "loss_and_grad", x, t, reduction=reduction, backend=backend, **opts)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == shape
    assert np.shape(loss) == np.shape(reference.loss(name, x, t, reduction, **opts))
    assert_reference(name, x, t, loss, grad, tol, reduction, f"seed={seed} {shape}", **opts)


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_out_receives_gradient_and_may_be_the_input(backend, name):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], np.float32, rng, (4, 9))
    expected_loss, expected_grad = call(name, "loss_and_grad", x, t, backend=backend, **opts)
    out = np.full_like(x, 7.0)
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, out=out, **opts)
    assert grad is out and loss == expected_loss
    np.testing.assert_array_equal(out, expected_grad)
    x_inplace = x.copy()
    loss, grad = call(name, "loss_and_grad", x_inplace, t, backend=backend, out=x_inplace, **opts)
    assert grad is x_inplace and loss == expected_loss, f"seed={seed}"
    np.testing.assert_array_equal(x_inplace, expected_grad)
    none_out = np.empty(expected_grad.shape[:-1] if SPECS[name].layout == ROWS else x.shape, np.float32)
    losses = call(name, "loss", x, t, backend=backend, reduction="none", out=none_out, **opts)
    assert losses is none_out
    np.testing.assert_allclose(none_out, call(name, "loss", x, t, backend=backend, reduction="none", **opts))


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_noncontiguous_readonly_and_integer_inputs(backend, name):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][0], np.float64, rng, (6, 8))
    expected = call(name, "loss_and_grad", x, t, backend=backend, reduction="none", **opts)
    xf = np.asfortranarray(x)
    xf.flags.writeable = False
    strided = np.empty((12, 8))[::2]
    strided[...] = x
    for variant in (xf, strided):
        loss, grad = call(name, "loss_and_grad", variant, t, backend=backend, reduction="none", **opts)
        np.testing.assert_array_equal(loss, expected[0])
        np.testing.assert_array_equal(grad, expected[1])
    if t.dtype.kind == "i":  # class labels of every integer dtype
        t = np.where(t < 0, 1, t)  # unsigned dtypes cannot hold the default ignore_index
        ref = call(name, "loss", x, t, backend=backend, reduction="sum", **opts)
        for dtype in (np.int8, np.uint16, np.int32, np.uint64):
            got = call(name, "loss", x, t.astype(dtype), backend=backend, reduction="sum", **opts)
            assert got == ref, f"seed={seed} {dtype}"
    ints = np.round(x * 3).astype(np.int64)
    loss = call(name, "loss", ints, t, backend=backend, **opts)
    assert np.asarray(loss).dtype == np.float64
    assert rel_err(loss, reference.loss(name, ints, t, **opts)) < 1e-12


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_empty_batch(backend, name):
    shape = (0, 4) if SPECS[name].layout == ROWS else (0,)
    x = np.zeros(shape)
    t = np.zeros(shape[:-1], np.int64) if SPECS[name].targets != "values" else np.zeros(shape)
    assert np.isnan(call(name, "loss", x, t, backend=backend))
    assert call(name, "loss", x, t, backend=backend, reduction="sum") == 0
    assert call(name, "loss", x, t, backend=backend, reduction="none").shape == shape[:1]
    assert call(name, "grad", x, t, backend=backend).shape == shape


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_nan_in_nan_out(backend, name):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][0], np.float32, rng, (4, 6))
    x[2, 3] = np.nan
    losses = call(name, "loss", x, t, backend=backend, reduction="none", **opts)
    bad = losses[2] if SPECS[name].layout == ROWS else losses[2, 3]
    ignored = SPECS[name].name == "softmax_xent" and t[2] == -100
    assert ignored or np.isnan(bad), f"seed={seed}"
    assert ignored or np.isnan(call(name, "loss", x, t, backend=backend, **opts))


def test_softmax_xent_masks(backend):
    x = np.array([[0.5, -np.inf, 2.0, -1.0], [-np.inf, 1.0, -np.inf, -np.inf], [1.0, 2.0, -np.inf, 0.0]])
    y = np.array([0, 1, 2])
    loss, grad = call("softmax_xent", "loss_and_grad", x, y, backend=backend, reduction="none")
    ref_loss = reference.loss("softmax_xent", x, y, "none")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert loss[1] == 0 and loss[2] == np.inf
    assert np.all(np.isfinite(grad)) and grad[0, 1] == 0
    probs = np.array([[0.5, 0.0, 0.5, 0.0]])
    assert np.isfinite(call("softmax_xent", "loss", x[:1], probs, backend=backend))
    x_inf = np.array([[0.0, np.inf, 1.0]])  # a +inf logit: NaN, as PyTorch
    assert np.isnan(call("softmax_xent", "loss", x_inf, np.array([0]), backend=backend))


def test_kinks_use_pytorch_subgradients(backend):
    d = np.array([[-1.0, 0.0, 1.0, 0.5]])
    zero = np.zeros_like(d)
    np.testing.assert_array_equal(call("mae", "grad", d, zero, backend=backend, reduction="sum"), [[-1, 0, 1, 1]])
    np.testing.assert_array_equal(call("huber", "grad", d, zero, backend=backend, reduction="sum"), d)
    y = np.array([[1.0, -1.0, 1.0, 0.0]])
    s = np.array([[1.0, -1.0, 0.0, -1.0]])  # margin - y*s == 0 on the first two
    np.testing.assert_array_equal(call("hinge", "grad", s, y, backend=backend, reduction="sum"), [[0, 0, -1, 0]])
    scores = np.array([[1.0, 0.0, 0.5, 0.5]])
    ww = call("multiclass_hinge", "grad", scores, np.array([0]), backend=backend, reduction="sum")
    np.testing.assert_allclose(ww, reference.grad("multiclass_hinge", scores, np.array([0]), "sum"))
    assert ww[0, 1] == 0  # margin - s_y + s_j == 0: slope 0
    cs = call("multiclass_hinge", "grad", scores, np.array([0]), backend=backend, reduction="sum",
              mode="crammer_singer")
    np.testing.assert_array_equal(cs, [[-1, 0, 1, 0]])  # tie between classes 2 and 3: the first wins
    wide = np.zeros((1, 19))
    wide[0, [5, 11, 17]] = 2.0  # the first maximum in another vector lane / CUDA thread than the later ones
    cs = call("multiclass_hinge", "grad", wide, np.array([0]), backend=backend, reduction="sum",
              mode="crammer_singer")
    assert cs[0, 5] == 1 and cs[0, 0] == -1 and np.count_nonzero(cs) == 2


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_cosine_similarity_of_one_class(backend, dtype):
    """Rows of one element: the loss is -sign(x) sign(t) and the gradient 0 (x/|x| is constant),
    which the kernels compute as a difference of two equal terms: 0 up to their rounding, so it
    is held to that rounding here rather than to a relative error of a zero."""
    seed, rng = seeded_rng()
    x = (rng.standard_normal((50, 1)) + np.sign(rng.standard_normal((50, 1))) * 0.1).astype(dtype)
    t = rng.standard_normal((50, 1)).astype(dtype)
    loss, grad = call("cosine_similarity", "loss_and_grad", x, t, backend=backend, reduction="none")
    np.testing.assert_array_equal(loss, -np.sign(x[:, 0]) * np.sign(t[:, 0]))
    assert np.all(np.abs(grad) <= 8 * np.finfo(dtype).eps / np.abs(x)), f"seed={seed}"
