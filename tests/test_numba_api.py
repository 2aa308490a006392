"""Numba callers: fastloss.numba's row and item functions inside a user's own @njit code."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import fastloss  # noqa: E402
from fastloss import numba as flnb  # noqa: E402


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
