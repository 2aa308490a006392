"""Inputs and option cases for every loss, driven by the spec table.

Random inputs use a fresh seed per test (printed in every failure message via ``seed``) and are
never all zeros. ``OPTION_CASES`` lists, per loss, option sets that together exercise every
option of the spec (``test_every_option_has_a_case`` enforces this).
"""

import os

import ml_dtypes
import numpy as np
import pytest

import fastloss
from fastloss import reference
from fastloss._dispatch import BackendUnavailable, get_backend
from fastloss._specs import CLASSES, CLASSES_OR_PROBS, ROWS, SPECS

# every backend; the shared tests parametrise over this one list. ``cuda`` takes the same NumPy
# inputs (copied to the device, NumPy results back): it runs under Numba's simulator
# (NUMBA_ENABLE_CUDASIM=1, selected with ``-k cuda``) or on a GPU, and skips elsewhere
BACKENDS = ("numpy", "cython", "numba", "cuda")
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
BFLOAT16 = ml_dtypes.bfloat16
HALF = (np.float16, BFLOAT16)
FLOATS, FLOAT_IDS = DTYPES + HALF, ("f32", "f64", "f16", "bf16")
UNIT_ROUNDOFF = {np.float16: 2.0**-11, BFLOAT16: 2.0**-8}


def tol(dtype):
    """The spec's relative tolerance with room (x10) for the float64 reference's own rounding;
    a half type adds its unit roundoff (one rounding of each result) to float32's."""
    if dtype in UNIT_ROUNDOFF:
        return UNIT_ROUNDOFF[dtype] + TOL[np.float32] * 10
    return TOL[dtype] * 10


def finfo(dtype):
    return ml_dtypes.finfo(dtype) if dtype is BFLOAT16 else np.finfo(dtype)

# option sets per loss; "probs": True asks for probability targets instead of class indices
OPTION_CASES = {
    "softmax_xent": [
        {},
        {"weight": "classes", "ignore_index": 1},
        {"label_smoothing": 0.1, "z_loss": 1e-2},
        {"weight": "classes", "label_smoothing": 0.2, "z_loss": 1e-3, "ignore_index": 0},
        {"probs": True},
        {"probs": True, "weight": "classes", "label_smoothing": 0.15, "z_loss": 1e-2},
    ],
    "sigmoid_bce": [
        {},
        {"weight": "elements"},
        {"pos_weight": "last_axis"},
        {"weight": "last_axis", "pos_weight": "last_axis"},
    ],
    "huber": [{}, {"delta": 0.3}, {"delta": 2.5}],
    "hinge": [{}, {"margin": 0.5, "squared": True}, {"zero_one": True, "margin": 2.0}],
    "multiclass_hinge": [
        {},
        {"squared": True, "weight": "classes"},
        {"mode": "crammer_singer"},
        {"mode": "crammer_singer", "squared": True, "weight": "classes", "margin": 0.5},
    ],
    "mse": [{}],
    "mae": [{}],
    "kl_div": [{}, {"log_target": True}],
    "smooth_l1": [{}, {"beta": 0.4}, {"beta": 0.0}, {"beta": 3.0}],
    "log_cosh": [{}],
    "msle": [{}],
    "poisson_nll": [{}, {"full": True}, {"log_input": False}, {"log_input": False, "full": True, "eps": 1e-3}],
    "sigmoid_focal": [{}, {"alpha": 0.7, "gamma": 0.5}, {"alpha": -1.0, "gamma": 0.0}, {"gamma": 3.0, "binary": True}],
    "cosine_similarity": [{}],
}
TEST_ONLY_KEYS = ("probs", "zero_one", "binary")


def seeded_rng():
    seed = int(np.random.SeedSequence().entropy % (2**32))
    return seed, np.random.default_rng(seed)


# FASTLOSS_REQUIRE=cython,numba: those backends must be there; a test that would skip fails (CI);
# "ptx" asks the same of the PTX compile check of the CUDA kernels (NVVM, from fastloss[test])
REQUIRED = frozenset(b.strip() for b in os.environ.get("FASTLOSS_REQUIRE", "").split(",") if b.strip())


def backend_or_skip(name):
    try:
        get_backend(name)
    except BackendUnavailable as exc:
        if name in REQUIRED:
            pytest.fail(f"FASTLOSS_REQUIRE names {name!r}, but {exc}")
        pytest.skip(str(exc))
    return name


def skip_if_simulated(backend, why):
    """Skip ``cuda`` under Numba's CUDA simulator (each GPU thread a Python thread, one kernel at
    a time), which cannot do ``why`` (a large shape: minutes; concurrent kernels); on a GPU the
    test runs."""
    if backend == "cuda" and get_backend("cuda").SIM:
        pytest.skip(f"not in the CUDA simulator: {why}")


def make_inputs(name, case, dtype, rng, shape=(5, 7)):
    """(x, target, options) for loss ``name`` with option case ``case``: fresh, never all zeros."""
    spec = SPECS[name]
    x = (rng.standard_normal(shape) * 2.0).astype(dtype)
    n_classes = shape[-1]
    options = {}
    for key, value in case.items():
        if key in TEST_ONLY_KEYS:
            continue
        if value == "classes":
            value = rng.uniform(0.2, 2.0, n_classes).astype(dtype)
        elif value == "elements":
            value = rng.uniform(0.2, 2.0, shape).astype(dtype)
        elif value == "last_axis":
            value = rng.uniform(0.2, 3.0, shape[-1]).astype(dtype)
        options[key] = value
    if spec.targets in (CLASSES, CLASSES_OR_PROBS) and not case.get("probs"):
        target = rng.integers(0, n_classes, shape[:-1])
        if "ignore_index" in options and target.size > 1:
            target.reshape(-1)[rng.integers(0, target.size)] = options["ignore_index"]
        elif spec.name == "softmax_xent" and target.size > 2:
            target.reshape(-1)[0] = -100  # the default ignore_index
    elif case.get("probs"):
        target = rng.dirichlet(np.ones(n_classes), shape[:-1]).astype(dtype)
    elif name == "hinge":
        low = 0 if case.get("zero_one") else -1
        target = rng.choice([low, 1], shape).astype(dtype)
    elif name == "kl_div":
        p = rng.dirichlet(np.ones(shape[-1]), shape[:-1])
        target = (np.log(p) if options.get("log_target") else p).astype(dtype)
        x = np.log(rng.dirichlet(np.ones(shape[-1]), shape[:-1])).astype(dtype)
    elif name == "sigmoid_bce":
        target = rng.uniform(0, 1, shape).astype(dtype)
    elif name == "sigmoid_focal":  # soft targets, or the 0/1 labels of detection
        target = (rng.integers(0, 2, shape) if case.get("binary") else rng.uniform(0, 1, shape)).astype(dtype)
    elif name == "msle":  # some predictions below the clamp (no gradient there)
        x = np.where(rng.random(shape) < 0.2, -rng.uniform(0, 1, shape), rng.uniform(0, 4, shape)).astype(dtype)
        target = rng.uniform(0, 4, shape).astype(dtype)
    elif name == "poisson_nll":  # counts; rates > 0 when not log_input
        target = rng.poisson(2.0, shape).astype(dtype)
        if not options.get("log_input", True):
            x = rng.uniform(0.1, 4.0, shape).astype(dtype)
    else:
        target = (rng.standard_normal(shape) * 2.0).astype(dtype)
    return x, target, options


def kink_distance(name, x, target, options):
    """How far the inputs are from the loss's non-differentiable points (inf: none)."""
    x = np.asarray(x, np.float64)
    if name == "huber":
        return np.min(np.abs(np.abs(x - target) - options.get("delta", 1.0)))
    if name == "mae" or (name == "smooth_l1" and options.get("beta", 1.0) == 0):
        return np.min(np.abs(x - target))
    if name == "smooth_l1":  # the second derivative jumps at |d| = beta: keep the stencil off it
        return np.min(np.abs(np.abs(x - target) - options["beta"]))
    if name == "msle":
        return np.min(np.abs(x - 1e-7))
    if name == "hinge":
        y = np.where(np.asarray(target) > 0, 1.0, -1.0)
        return np.min(np.abs(options.get("margin", 1.0) - y * x))
    if name == "multiclass_hinge":
        s_y = np.take_along_axis(x, target[..., None], -1)
        z = options.get("margin", 1.0) - s_y + x
        onehot = np.eye(x.shape[-1], dtype=bool)[target]
        dist = np.min(np.abs(np.where(onehot, np.inf, z)))
        srt = np.sort(np.where(onehot, -np.inf, x), axis=-1)
        return min(dist, np.min(srt[..., -1] - srt[..., -2])) if x.shape[-1] > 2 else dist
    return np.inf


def rel_err(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.linalg.norm(expected.ravel())
    diff = np.linalg.norm((actual - expected).ravel())
    return diff / scale if scale > 0 else diff


def assert_reference(name, x, target, loss, grad, tol, reduction="mean", where="", **opts):
    """The loss and gradient of one call match fastloss.reference within ``tol`` (relative)."""
    assert rel_err(loss, reference.loss(name, x, target, reduction, **opts)) <= tol, where
    assert rel_err(grad, reference.grad(name, x, target, reduction, **opts)) <= tol, where


def call(name, entry, x, target, **kwargs):
    suffix = {"loss": "", "grad": "_grad", "loss_and_grad": "_and_grad"}[entry]
    return getattr(fastloss, name + suffix)(x, target, **kwargs)


def case_id(case):
    return "-".join(f"{k}" if v is True else f"{k}={v}" for k, v in case.items()) or "defaults"


ALL_CASES = [(name, case) for name, cases in OPTION_CASES.items() for case in cases]
ROW_LOSSES = [n for n, s in SPECS.items() if s.layout == ROWS]
