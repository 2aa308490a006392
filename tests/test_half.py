"""Half precision (API.md "Half precision"): float16 and bfloat16 in and out, what the shared
matrix does not spell out. The matrix itself (test_losses, test_extremes) runs both half dtypes
against the float64 reference on the same half-valued inputs."""

import subprocess
import sys

import numpy as np
import pytest

import fastloss
from cases import (BFLOAT16, HALF, OPTION_CASES, call, finfo, make_inputs,
                   seeded_rng, skip_if_simulated)
from fastloss import reference
from fastloss._specs import ROWS, SPECS

HALF_IDS = ("f16", "bf16")


def bits(a):
    return np.asarray(a).view(np.uint16)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("name", list(SPECS))
def test_out_is_the_input_in_place(backend, name, dtype):
    """out=x: the gradient overwrites the half logits, bit for bit what a separate out gets."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, OPTION_CASES[name][0], dtype, rng, (9, 13))
    expected = call(name, "loss_and_grad", x, t, backend=backend, **opts)
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, out=x, **opts)
    assert grad is x
    assert bits(loss) == bits(expected[0]), f"seed={seed}"
    np.testing.assert_array_equal(bits(x), bits(expected[1]), err_msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_out_of_another_dtype_is_refused_untouched(backend, dtype):
    _, rng = seeded_rng()
    x, t, _ = make_inputs("mse", {}, dtype, rng, (4, 5))
    other = np.float16 if dtype is BFLOAT16 else BFLOAT16
    for out_dtype in (np.float32, other):
        out = np.full(x.shape, 7, out_dtype)
        with pytest.raises(TypeError, match="out must have dtype"):
            fastloss.mse_and_grad(x, t, backend=backend, out=out)
        assert (out == 7).all()


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_results_have_the_half_dtype(backend, dtype):
    _, rng = seeded_rng()
    x, y, _ = make_inputs("softmax_xent", {}, dtype, rng, (6, 5))
    loss, grad = fastloss.softmax_xent_and_grad(x, y, backend=backend)
    assert type(loss) is dtype and grad.dtype == dtype
    assert fastloss.softmax_xent(x, y, backend=backend, reduction="none").dtype == dtype


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_float_targets_and_weights_take_the_input_dtype(backend, dtype):
    """float32/float64 targets and weights are rounded to the input's half dtype first: the
    same bits as passing them rounded."""
    seed, rng = seeded_rng()
    x = rng.standard_normal((7, 6)).astype(dtype)
    t = rng.uniform(0, 1, (7, 6))
    w = rng.uniform(0.5, 2, (7, 6)).astype(np.float32)
    got = fastloss.sigmoid_bce_and_grad(x, t, weight=w, backend=backend)
    want = fastloss.sigmoid_bce_and_grad(x, t.astype(dtype), weight=w.astype(dtype), backend=backend)
    assert bits(got[0]) == bits(want[0]), f"seed={seed}"
    np.testing.assert_array_equal(bits(got[1]), bits(want[1]))


def test_float16_overflows_to_inf(backend):
    """A gradient beyond float16's range (65504) rounds to +-inf, as the rounded reference."""
    x = np.array([6e4, -6e4, 1.0, 3e4], np.float16)
    t = np.array([-6e4, 6e4, 0.0, -3e4], np.float16)
    loss, grad = fastloss.mse_and_grad(x, t, backend=backend, reduction="sum")
    np.testing.assert_array_equal(grad, np.array([np.inf, -np.inf, 2.0, np.inf], np.float16))
    assert loss == np.inf
    losses = fastloss.mse(x, t, backend=backend, reduction="none")
    np.testing.assert_array_equal(losses, np.array([np.inf, np.inf, 1.0, np.inf], np.float16))


def test_bfloat16_subnormals_are_kept(backend):
    """bfloat16 subnormals (below 2**-126) in and out: neither flushed to zero."""
    tiny = float(finfo(BFLOAT16).tiny)
    x = (np.array([0.25, 0.5, -0.75, 0.125]) * tiny).astype(BFLOAT16)
    t = np.zeros(4, BFLOAT16)
    assert (x != 0).all() and (np.abs(x.astype(np.float64)) < tiny).all()  # subnormal inputs
    loss, grad = fastloss.mae_and_grad(x, t, backend=backend, reduction="none")
    np.testing.assert_array_equal(bits(loss), bits(np.abs(x)))
    grad = fastloss.mse_grad(x, t, backend=backend, reduction="sum", grad_output=0.25)
    expected = reference.grad("mse", x, t, "sum", 0.25).astype(BFLOAT16)  # 0.5 x: subnormal
    assert (expected != 0).all()
    np.testing.assert_array_equal(bits(grad), bits(expected))


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_masks_and_nan_in_half(backend, dtype):
    """-inf logits are masks, a NaN makes its row NaN: the float32 rules, in half."""
    x = np.array([[1.0, -np.inf, 2.0, 0.5],
                  [-np.inf, 3.0, -np.inf, -np.inf],
                  [1.0, np.nan, 0.0, 0.0]]).astype(dtype)
    y = np.array([0, 1, 2])
    loss, grad = fastloss.softmax_xent_and_grad(x, y, backend=backend, reduction="none")
    ref_loss = reference.loss("softmax_xent", x, y, "none").astype(dtype)
    ref_grad = reference.grad("softmax_xent", x, y, "none").astype(dtype)
    assert grad[0, 1] == 0 and loss[1] == 0 and (grad[1] == 0).all()
    assert np.isnan(loss[2]) and np.isnan(grad[2].astype(np.float32)).all()
    np.testing.assert_allclose(loss[:2].astype(np.float64), ref_loss[:2].astype(np.float64), rtol=2**-7)
    np.testing.assert_allclose(grad[:2].astype(np.float64), ref_grad[:2].astype(np.float64), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("name", ["softmax_xent", "multiclass_hinge", "cosine_similarity", "mse", "sigmoid_bce"])
def test_threads_do_not_change_a_bit(backend, name, dtype):
    skip_if_simulated(backend, "a large shape")
    seed, rng = seeded_rng()
    shape = (700, 300) if SPECS[name].layout == ROWS else (300, 700)
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], dtype, rng, shape)
    old = fastloss.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            fastloss.set_num_threads(n)
            results.append(call(name, "loss_and_grad", x, t, backend=backend, **opts))
    finally:
        fastloss.set_num_threads(old)
    for loss, grad in results[1:]:
        assert bits(loss) == bits(results[0][0]), f"seed={seed}"
        np.testing.assert_array_equal(bits(grad), bits(results[0][1]), err_msg=f"seed={seed}")


def test_fastloss_never_imports_ml_dtypes_for_float16():
    """bfloat16 is recognised by its dtype's name: a float16 user never loads ml_dtypes."""
    code = ("import sys, numpy as np, fastloss\n"
            "x = np.ones((4, 3), np.float16)\n"
            "fastloss.softmax_xent_and_grad(x, np.zeros(4, np.int64))\n"
            "fastloss.mse_and_grad(x, x)\n"
            "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
