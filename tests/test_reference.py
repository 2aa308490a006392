"""fastloss.reference, the float64 yardstick of every backend, against PyTorch's own functions
(and autograd) where PyTorch has the loss, and against the Keras/torchvision formulas written
out in torch ops where it does not."""

import numpy as np
import pytest

from cases import OPTION_CASES, make_inputs, seeded_rng
from fastloss import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _focal(x, t, alpha=0.25, gamma=2.0):  # torchvision.ops.sigmoid_focal_loss, written out
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * t + (1 - alpha) * (1 - t)) * loss if alpha >= 0 else loss


TWINS = {
    "smooth_l1": lambda x, t, beta=1.0: F.smooth_l1_loss(x, t, reduction="none", beta=beta),
    "poisson_nll": lambda x, t, log_input=True, full=False, eps=1e-8: F.poisson_nll_loss(
        x, t, log_input=log_input, full=full, eps=eps, reduction="none"),
    "log_cosh": lambda x, t: torch.log(torch.cosh(x - t)),  # Keras LogCosh (|d| < 20 here: no overflow)
    "msle": lambda x, t: (torch.log(x.clamp(min=1e-7) + 1) - torch.log(t.clamp(min=1e-7) + 1)) ** 2,  # Keras
    "sigmoid_focal": _focal,
    # Keras CosineSimilarity: l2_normalize clamps the squared norm at 1e-12 (F.normalize's eps is on the norm)
    "cosine_similarity": lambda x, t: -(F.normalize(x, dim=-1, eps=1e-6) * F.normalize(t, dim=-1, eps=1e-6)).sum(-1),
    "mse": lambda x, t: F.mse_loss(x, t, reduction="none"),
    "mae": lambda x, t: F.l1_loss(x, t, reduction="none"),
    "huber": lambda x, t, delta=1.0: F.huber_loss(x, t, reduction="none", delta=delta),
}


@pytest.mark.parametrize("name,case", [(n, c) for n in TWINS for c in OPTION_CASES[n]])
def test_reference_matches_pytorch(name, case):
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, case, np.float64, rng, (6, 9))
    xt = torch.tensor(x, requires_grad=True)
    expected = TWINS[name](xt, torch.tensor(t), **opts)
    expected.sum().backward()
    loss, grad, _ = reference.items(name, x, t, **opts)
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"seed={seed}")
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"seed={seed}")


def test_stable_where_the_textbook_formula_is_not():
    """log_cosh at |d| = 1e4, focal at logits of +-1e4 (finite), cosine rows of zeros (the clamp),
    msle below the clamp (no gradient)."""
    d = np.array([1e4, -1e4, 0.0])
    loss, grad, _ = reference.items("log_cosh", d, np.zeros(3))
    np.testing.assert_allclose(loss, [1e4 - np.log(2), 1e4 - np.log(2), 0.0], rtol=1e-15)
    np.testing.assert_array_equal(grad, [1.0, -1.0, 0.0])
    x = np.array([1e4, -1e4, 1e4, -1e4])
    loss, grad, _ = reference.items("sigmoid_focal", x, np.array([1.0, 0.0, 0.0, 1.0]), gamma=0.5)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss[2:], 0.75 * 1e4 * np.array([1, 0.25 / 0.75]), rtol=1e-12)
    loss, grad, _ = reference.items("cosine_similarity", np.zeros((2, 3)), np.ones((2, 3)))
    np.testing.assert_array_equal(loss, 0.0)
    np.testing.assert_allclose(grad, -1 / np.sqrt(3) / 1e-6, rtol=1e-12)
    loss, grad, _ = reference.items("msle", np.array([-3.0, 0.0, 1e-8]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_allclose(loss, (np.log1p(1e-7) - np.log(2.0)) ** 2, rtol=1e-12)
