"""Numba callers: fastloss.numba's row and item functions inside a user's own @njit code."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import fastloss  # noqa: E402
from cases import rel_err  # noqa: E402
from fastloss import numba as flnb  # noqa: E402
from fastloss import reference  # noqa: E402


@numba.njit(parallel=True)
def user_mean_xent(logits, labels, smoothing, grad):
    no_weights = np.empty(0, logits.dtype)
    n, c = logits.shape
    losses = np.empty(n)
    for i in numba.prange(n):
        losses[i] = flnb.softmax_xent_row(logits[i], labels[i], no_weights, c, smoothing, 0.0, grad[i], 1.0 / n)
    return losses.sum() / n


@numba.njit
def user_huber(pred, target, delta, grad):
    total = 0.0
    for i in range(pred.size):
        loss, d = flnb.huber_item(pred[i], target[i], delta)
        total += loss
        grad[i] = d
    return total


@numba.njit
def user_crammer_singer(scores, labels, grad):
    no_weights = np.empty(0, scores.dtype)
    total = 0.0
    for i in range(scores.shape[0]):
        total += flnb.multiclass_hinge_row(scores[i], labels[i], no_weights, 1.0, False, True, grad[i], 1.0)
    return total


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("smoothing", (0.0, 0.2))
def test_softmax_xent_row_in_user_prange(dtype, smoothing):
    rng = np.random.default_rng()
    x = (rng.standard_normal((50, 17)) * 3).astype(dtype)
    y = rng.integers(0, 17, 50)
    grad = np.empty_like(x)
    loss = user_mean_xent(x, y, smoothing, grad)
    ref_loss, ref_grad = fastloss.softmax_xent_and_grad(x, y, label_smoothing=smoothing, backend="numpy")
    assert loss == pytest.approx(float(ref_loss), rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)


def test_item_and_row_functions_in_user_njit():
    rng = np.random.default_rng()
    p, t = rng.standard_normal(200), rng.standard_normal(200)
    grad = np.empty_like(p)
    assert user_huber(p, t, 0.5, grad) == pytest.approx(float(fastloss.huber(p, t, delta=0.5, reduction="sum")))
    np.testing.assert_allclose(grad, fastloss.huber_grad(p, t, delta=0.5, reduction="sum"))
    s, y = rng.standard_normal((20, 6)), rng.integers(0, 6, 20)
    g = np.empty_like(s)
    expected = fastloss.multiclass_hinge_and_grad(s, y, mode="crammer_singer", reduction="sum")
    assert user_crammer_singer(s, y, g) == pytest.approx(float(expected[0]))
    np.testing.assert_allclose(g, expected[1])


@numba.njit
def user_items(kind, pred, target, p0, p1, p2, losses, grad):
    """Every newer item over flat arrays, as a user's loop would call it."""
    for i in range(pred.size):
        if kind == 0:
            loss, d = flnb.smooth_l1_item(pred[i], target[i], p0)
        elif kind == 1:
            loss, d = flnb.log_cosh_item(pred[i], target[i])
        elif kind == 2:
            loss, d = flnb.msle_item(pred[i], target[i])
        elif kind == 3:
            loss, d = flnb.poisson_nll_item(pred[i], target[i], p1 != 0.0, p2 != 0.0, p0)
        else:
            loss, d = flnb.sigmoid_focal_item(pred[i], target[i], p0, p1)
        losses[i] = loss
        grad[i] = d


ITEM_CASES = [
    ("smooth_l1", 0, {"beta": 1.0}), ("smooth_l1", 0, {"beta": 0.0}), ("smooth_l1", 0, {"beta": 0.3}),
    ("log_cosh", 1, {}), ("msle", 2, {}),
    ("poisson_nll", 3, {"log_input": True, "full": False, "eps": 1e-8}),
    ("poisson_nll", 3, {"log_input": False, "full": True, "eps": 1e-3}),
    ("sigmoid_focal", 4, {"alpha": 0.25, "gamma": 2.0}), ("sigmoid_focal", 4, {"alpha": -1.0, "gamma": 0.5}),
]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name,kind,opts", ITEM_CASES, ids=[f"{n}-{o}" for n, _, o in ITEM_CASES])
def test_newer_items_in_user_njit(name, kind, opts, dtype):
    """Each item's loss and gradient against the float64 reference, element by element; float32
    inputs are computed in float32 and returned as float64."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    n = 500
    x = (rng.standard_normal(n) * 3).astype(dtype)
    t = (rng.standard_normal(n) * 3).astype(dtype)
    if name == "msle":
        t = np.abs(t)
        x[::7] = -np.abs(x[::7])  # below the clamp: no gradient there
    elif name == "poisson_nll":
        t = rng.poisson(2.0, n).astype(dtype)
        if not opts["log_input"]:
            x = np.abs(x) + dtype(0.05)
    elif name == "sigmoid_focal":
        t = rng.uniform(0, 1, n).astype(dtype)
    p = [float(opts.get(k, 0.0)) for k in {"smooth_l1": ("beta",), "poisson_nll": ("eps", "log_input", "full"),
                                             "sigmoid_focal": ("alpha", "gamma")}.get(name, ())]
    p += [0.0] * (3 - len(p))
    losses, grad = np.empty(n), np.empty(n)
    user_items(kind, x, t, p[0], p[1], p[2], losses, grad)
    ref_loss, ref_grad, _ = reference.items(name, x, t, **opts)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    where = f"seed={seed}"
    assert rel_err(losses, ref_loss) <= tol, where
    assert rel_err(grad, ref_grad) <= tol, where
    if name == "msle":
        assert np.all(grad[::7] == 0), where


@numba.njit(parallel=True)
def user_mean_cosine(pred, target, grad):
    n = pred.shape[0]
    losses = np.empty(n)
    for i in numba.prange(n):
        losses[i] = flnb.cosine_similarity_row(pred[i], target[i], grad[i], 1.0 / n)
    return losses.sum() / n


@numba.njit
def user_cosine_rows(pred, target, grad, loss_only):
    """Per-row losses; the gradient rows written into ``grad`` (which may be ``pred``) unless
    ``loss_only`` (an empty gradient row)."""
    none = np.empty(0, pred.dtype)
    losses = np.empty(pred.shape[0])
    for i in range(pred.shape[0]):
        losses[i] = flnb.cosine_similarity_row(pred[i], target[i], none if loss_only else grad[i], 1.0)
    return losses


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_cosine_similarity_row_in_user_code(dtype):
    """In a user's prange (mean), loss alone, in place (g = x), and strided rows (a Fortran-ordered
    array and a row view with a step); rows long enough for several of the kernel's chunks."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    where = f"seed={seed}"
    for shape in ((7, 5), (3, 1500)):
        x = rng.standard_normal(shape).astype(dtype)
        t = rng.standard_normal(shape).astype(dtype)
        x[0] = 0.0  # a zero row: the norm's clamp, no x term in the gradient
        grad = np.empty_like(x)
        loss = user_mean_cosine(x, t, grad)
        assert rel_err(loss, reference.loss("cosine_similarity", x, t)) <= tol, where
        assert rel_err(grad, reference.grad("cosine_similarity", x, t)) <= tol, where
        ref_losses = reference.loss("cosine_similarity", x, t, "none")
        ref_grad = reference.grad("cosine_similarity", x, t, "none")
        assert rel_err(user_cosine_rows(x, t, grad, True), ref_losses) <= tol, where
        in_place = x.copy()
        assert rel_err(user_cosine_rows(in_place, t, in_place, False), ref_losses) <= tol, where
        assert rel_err(in_place, ref_grad) <= tol, where
        xf, tf = np.asfortranarray(x), np.asfortranarray(t)
        strided = np.empty((shape[0], 2 * shape[1]), dtype)[:, ::2]
        for gg in (np.asfortranarray(np.empty_like(x)), strided):
            assert rel_err(user_cosine_rows(xf, tf, gg, False), ref_losses) <= tol, where
            assert rel_err(gg, ref_grad) <= tol, where
