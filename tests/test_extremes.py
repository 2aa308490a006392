"""Extremes, each with a defined result: the float64 reference rounded to the input dtype (the
same NaN and inf positions, finite values within tolerance), plus the softmax corner cases
spelled out (PyTorch gives the same values)."""

import numpy as np
import pytest

from cases import DTYPES, FLOAT_IDS, FLOATS, call, finfo, make_inputs, seeded_rng, tol
from fastloss import reference
from fastloss._specs import SPECS

INF = np.inf
EXTREMES = {
    "big_1e4": lambda x, rng: x * 5e3,
    "huge_3e38": lambda x, rng: np.where(rng.random(x.shape) < 0.5, 3e38, -3e38) * np.sign(x),
    "subnormal": lambda x, rng: x * 1e-40,
    "nan_anywhere": lambda x, rng: np.where(rng.random(x.shape) < 0.2, np.nan, x),
    "plus_inf": lambda x, rng: np.where(rng.random(x.shape) < 0.2, INF, x),
    "minus_inf": lambda x, rng: np.where(rng.random(x.shape) < 0.3, -INF, x),
}


def assert_matches_rounded_reference(actual, expected, dtype, what):
    expected = np.asarray(expected, np.float64)
    with np.errstate(over="ignore"):
        rounded = expected.astype(dtype)
    actual = np.asarray(actual)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(rounded), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(rounded), err_msg=f"{what}: +inf positions")
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(rounded), err_msg=f"{what}: -inf positions")
    finite = np.isfinite(rounded)
    actual, rounded = actual.astype(np.float64), rounded.astype(np.float64)
    scale = max(np.abs(rounded[finite]).max(initial=0), float(finfo(dtype).tiny))
    np.testing.assert_allclose(actual[finite], rounded[finite], rtol=tol(dtype), atol=tol(dtype) * scale,
                               err_msg=what)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
@pytest.mark.parametrize("extreme", list(EXTREMES))
@pytest.mark.parametrize("name", list(SPECS))
def test_extreme_inputs(backend, name, extreme, dtype):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, {}, dtype, rng, (6, 5))
    with np.errstate(over="ignore", invalid="ignore"):
        x = EXTREMES[extreme](x.astype(np.float64), rng).astype(dtype)
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, reduction="none", **opts)
    assert_matches_rounded_reference(loss, reference.loss(name, x, t, "none", **opts), dtype,
                                     f"seed={seed} loss")
    assert_matches_rounded_reference(grad, reference.grad(name, x, t, "none", **opts), dtype,
                                     f"seed={seed} grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_softmax_corner_cases(backend, dtype):
    x = np.array([
        [1.0, -INF, 2.0, 0.5],     # one class masked: finite, no gradient to it
        [-INF, 3.0, -INF, -INF],   # all but the target masked: loss 0, gradient 0
        [1.0, 2.0, -INF, 0.0],     # the target itself masked: loss +inf, finite gradient
        [-INF, -INF, -INF, -INF],  # every class masked: NaN (as PyTorch)
        [1.0, INF, 0.0, 0.0],      # +inf logit: NaN (as PyTorch)
        [3e38, -3e38, 0.0, 1.0],   # overflow of lse - x[y] in float32: +inf
    ], dtype)
    y = np.array([0, 1, 2, 0, 0, 1])
    loss, grad = call("softmax_xent", "loss_and_grad", x, y, backend=backend, reduction="none")
    assert np.isfinite(loss[0]) and grad[0, 1] == 0
    assert loss[1] == 0 and np.all(grad[1] == 0)
    assert loss[2] == INF and np.all(np.isfinite(grad[2]))
    assert np.isnan(loss[3]) and np.isnan(loss[4])
    assert loss[5] == (INF if dtype == np.float32 else 6e38)
    np.testing.assert_allclose(grad[5], [1, -1, 0, 0], atol=1e-30)
    smooth = call("softmax_xent", "loss", x[:3], y[:3], backend=backend, reduction="none", label_smoothing=0.1)
    assert np.all(np.isinf(smooth))  # smoothing puts mass on masked classes: +inf, as PyTorch


def test_batch_with_every_row_ignored(backend):
    x = np.random.default_rng().standard_normal((4, 3))
    y = np.full(4, -100)
    loss, grad = call("softmax_xent", "loss_and_grad", x, y, backend=backend)
    assert np.isnan(loss) and np.all(grad == 0)  # PyTorch: NaN mean, zero gradient
    assert call("softmax_xent", "loss", x, y, backend=backend, reduction="sum") == 0
    w = np.ones(3)
    assert np.isnan(call("softmax_xent", "loss", x, y, backend=backend, weight=w))


@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
def test_stable_where_the_textbook_formula_is_not(backend, dtype):
    """log_cosh at |d| = 1e4 (cosh overflows), sigmoid focal at logits of +-1e4 (finite, as the
    float64 value), cosine similarity of rows of zeros (the 1e-12 clamp), msle below its clamp
    (no gradient)."""
    d = np.array([1e4, -1e4, 0.0, 30.0], dtype)
    loss, grad = call("log_cosh", "loss_and_grad", d, np.zeros_like(d), backend=backend, reduction="none")
    assert_matches_rounded_reference(loss, [1e4 - np.log(2), 1e4 - np.log(2), 0.0, 30 - np.log(2)], dtype, "log_cosh")
    np.testing.assert_array_equal(grad, np.array([1, -1, 0, 1], dtype))
    x = np.array([1e4, -1e4, 1e4, -1e4, 1e4, 0.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5], dtype)
    for opts in ({}, {"gamma": 0.5, "alpha": -1.0}, {"gamma": 0.0}):
        loss, grad = call("sigmoid_focal", "loss_and_grad", x, t, backend=backend, reduction="none", **opts)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)), opts
        assert_matches_rounded_reference(loss, reference.loss("sigmoid_focal", x, t, "none", **opts), dtype, f"focal {opts}")
        assert_matches_rounded_reference(grad, reference.grad("sigmoid_focal", x, t, "none", **opts), dtype, f"focal {opts}")
    x = np.zeros((3, 4), dtype)
    x[2] = [1e-7, 0, 0, 0]  # a norm under the clamp too
    t = np.ones((3, 4), dtype)
    t[1] = 0.0
    loss, grad = call("cosine_similarity", "loss_and_grad", x, t, backend=backend, reduction="none")
    assert_matches_rounded_reference(loss, reference.loss("cosine_similarity", x, t, "none"), dtype, "cosine")
    assert_matches_rounded_reference(grad, reference.grad("cosine_similarity", x, t, "none"), dtype, "cosine")
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0)
    x = np.array([-3.0, 0.0, 1e-8, -np.inf, 0.5], dtype)
    loss, grad = call("msle", "loss_and_grad", x, np.ones_like(x), backend=backend, reduction="none")
    np.testing.assert_array_equal(grad[:4], 0.0)
    assert grad[4] != 0 and np.all(np.isfinite(loss))
