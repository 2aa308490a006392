"""Property-based tests: every loss x CPU backend against fastloss.reference on random shapes
(empty batches, one class, leading batch dims), dtypes, memory layouts (C, Fortran, strided,
read-only), labels (with ignore_index) and option values. Hypothesis prints the falsifying
example, and ``seed`` in it regenerates the arrays."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import CPU_BACKENDS, TOL, backend_or_skip, call, make_inputs, rel_err
from fastloss import reference
from fastloss._specs import CLASSES_OR_PROBS, ROWS, SPECS

OPTION_VALUES = {
    "weight": st.sampled_from([None, "classes_or_elements"]),
    "pos_weight": st.sampled_from([None, "last_axis"]),
    "ignore_index": st.integers(-3, 4),
    # coefficients are 0 or at least 1e-6: a 1e-40 z-loss changes no float32 result but its
    # exact float64 reference, which then cannot be matched by any rounding
    "label_smoothing": st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
    "z_loss": st.one_of(st.just(0.0), st.floats(1e-6, 0.1)),
    "delta": st.floats(0.05, 5.0),
    "margin": st.floats(-1.0, 3.0),
    "squared": st.booleans(),
    "mode": st.sampled_from(["weston_watkins", "crammer_singer"]),
    "log_target": st.booleans(),
}
LAYOUTS = ("C", "F", "strided", "readonly")


def relayout(a, layout):
    """The same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim:
        b = np.empty((2 * a.shape[0],) + a.shape[1:], a.dtype)[::2]
        b[...] = a
        return b
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@st.composite
def problems(draw, name):
    spec = SPECS[name]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    lead = draw(st.lists(st.integers(0, 5), min_size=0 if spec.layout != ROWS else 1, max_size=2))
    shape = (*lead, draw(st.integers(1, 9)))
    case = {}
    for option in spec.options:
        value = draw(OPTION_VALUES[option])
        if value == "classes_or_elements":
            value = "classes" if spec.layout == ROWS else "elements"
        if value is not None:
            case[option] = value
    if spec.targets == CLASSES_OR_PROBS:
        case["probs"] = draw(st.booleans())
    if name == "hinge":
        case["zero_one"] = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    x, t, opts = make_inputs(name, case, dtype, np.random.default_rng(seed), shape)
    if "ignore_index" in opts and t.dtype.kind == "i" and t.size:  # sprinkle ignored rows
        mask = np.random.default_rng(seed + 1).random(t.shape) < 0.3
        t[mask] = opts["ignore_index"]
        t[(t < 0) & (t != opts["ignore_index"])] = 0
    layout = draw(st.sampled_from(LAYOUTS))
    reduction = draw(st.sampled_from(spec.reductions))
    return dict(x=relayout(x, layout), t=relayout(t, draw(st.sampled_from(LAYOUTS))), opts=opts,
                reduction=reduction, seed=seed, layout=layout)


def _check(backend, name, p):
    x, t, opts, reduction = p["x"], p["t"], p["opts"], p["reduction"]
    tol = TOL[x.dtype.type] * 10
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, reduction=reduction, **opts)
    expected_loss = reference.loss(name, x, t, reduction, **opts)
    expected_grad = reference.grad(name, x, t, reduction, **opts)
    assert np.shape(loss) == np.shape(expected_loss) and grad.shape == x.shape
    if np.all(np.isnan(expected_loss)):
        assert np.all(np.isnan(loss))
    else:
        # error relative to the sum of |item losses|, the scale rounding works at (a total that
        # cancels to ~0 has no relative accuracy), and never below the dtype's smallest normal
        items = np.abs(reference.loss(name, x, t, "none", **opts))
        scale = max(np.linalg.norm(np.ravel(expected_loss)), np.nansum(items) / max(1, items.size)
                    if reduction == "mean" else np.nansum(items))
        err = np.linalg.norm(np.ravel(np.asarray(loss, np.float64) - expected_loss))
        # a loss that is exactly 0 (one class, say) is lse - x: one rounding of |x| is the best
        # any float computation can do there
        finite = np.abs(x[np.isfinite(x)])
        floor = np.finfo(x.dtype).eps * (finite.max() if finite.size else 1.0) * max(1, np.size(expected_loss))
        assert err <= tol * scale + floor
    # gradient entries are differences of terms of magnitude ~ weight * (mean scale): allow a
    # few roundings of those on top of the relative tolerance (C == 1 rows are pure cancellation)
    denom = reference.items(name, x, t, **opts)[2] if reduction == "mean" else 1.0
    weights = [np.max(np.abs(opts[k]), initial=0.0) for k in ("weight", "pos_weight") if opts.get(k) is not None]
    term = max([1.0] + weights) / (denom if denom > 0 else 1.0)
    floor = 4 * np.finfo(x.dtype).eps * term * np.sqrt(max(1, x.size))
    nan_same = np.array_equal(np.isnan(grad), np.isnan(expected_grad))
    err = np.linalg.norm(np.ravel(np.nan_to_num(grad.astype(np.float64)) - np.nan_to_num(expected_grad)))
    assert nan_same and err <= tol * np.linalg.norm(np.ravel(np.nan_to_num(expected_grad))) + floor


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_problems_match_reference(backend, name):
    backend_or_skip(backend)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems(name))
    def check(p):
        _check(backend, name, p)

    check()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_class_count(backend):
    backend_or_skip(backend)
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 2**17)).astype(np.float32) * 5
    y = rng.integers(0, 2**17, 3)
    for opts in ({}, {"label_smoothing": 0.1, "z_loss": 1e-3}):
        loss, grad = call("softmax_xent", "loss_and_grad", x, y, backend=backend, **opts)
        assert rel_err(loss, reference.loss("softmax_xent", x, y, **opts)) <= 1e-5
        assert rel_err(grad, reference.grad("softmax_xent", x, y, **opts)) <= 1e-5
    for mode in ("weston_watkins", "crammer_singer"):
        got = call("multiclass_hinge", "loss_and_grad", x, y, backend=backend, mode=mode)
        assert rel_err(got[0], reference.loss("multiclass_hinge", x, y, mode=mode)) <= 1e-5
        assert rel_err(got[1], reference.grad("multiclass_hinge", x, y, mode=mode)) <= 1e-5
