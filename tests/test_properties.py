"""Property-based tests: every loss x backend against fastloss.reference on random shapes
(empty batches, one class, leading batch dims), dtypes, memory layouts (C, Fortran, strided,
read-only), labels (with ignore_index), option values, ``out`` placed fresh, as the input itself
or as views overlapping it (shifted, reversed, transposed: these must raise), and NaN inputs
where a zero target or weight multiplies them. Hypothesis prints the falsifying
example, and ``seed`` in it regenerates the arrays."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import TOL, call, make_inputs, rel_err, skip_if_simulated
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
    "beta": st.one_of(st.just(0.0), st.floats(0.05, 5.0)),
    "log_input": st.booleans(),
    "full": st.booleans(),
    "eps": st.floats(1e-8, 1e-2),
    "alpha": st.one_of(st.just(-1.0), st.floats(0.0, 1.0)),
    "gamma": st.one_of(st.just(0.0), st.just(2.0), st.floats(0.0, 5.0)),
}
LAYOUTS = ("C", "F", "strided", "readonly")
# where ``out`` (the gradient) lives: nowhere, a fresh array, the input itself, or views that
# overlap the input otherwise (each must raise a ValueError naming out, writing nothing)
OUT_PLACES = (None, "fresh", "exact", "shifted", "reversed", "transposed")


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
    # (cosine similarity of one class: a zero gradient, see test_cosine_similarity_of_one_class)
    shape = (*lead, draw(st.integers(2 if name == "cosine_similarity" else 1, 9)))
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
    if draw(st.booleans()):
        x = nan_at_zero_mass(name, x, t, opts, np.random.default_rng(seed + 2))
    layout = draw(st.sampled_from(LAYOUTS))
    reduction = draw(st.sampled_from(spec.reductions))
    return dict(x=relayout(x, layout), t=relayout(t, draw(st.sampled_from(LAYOUTS))), opts=opts,
                reduction=reduction, seed=seed, layout=layout, out=draw(st.sampled_from(OUT_PLACES)))


def nan_at_zero_mass(name, x, t, opts, rng):
    """``x`` with NaN placed where a zero multiplies it: a zero target (kl_div, probability
    targets) or a zero weight (sigmoid_bce, class weights), made zero here where needed.
    NaN in, NaN out: the reference then expects NaN there, not 0 * NaN = 0."""
    x = x.copy()
    if x.size == 0:
        return x
    pick = rng.random(x.shape) < 0.2
    if name == "kl_div" and not opts.get("log_target"):
        t[pick] = 0
    elif name == "softmax_xent" and t.dtype.kind == "f":
        t[pick] = 0
    elif opts.get("weight") is not None:
        w = opts["weight"]
        if w.shape == x.shape:
            w[pick] = 0
        else:  # class weights: zero a class, NaN in its column
            c = rng.integers(0, x.shape[-1])
            live = t[t != opts.get("ignore_index", -100)] if t.dtype.kind in "iu" else t
            if live.size and np.all(live == c):
                # every counted row's weight would be 0: the mean divides by 0, where the backends
                # differ (noted in the README); keep the weight
                return x
            w[c] = 0
            pick = np.zeros(x.shape, bool)
            pick[..., c] = rng.random(x.shape[:-1]) < 0.5
    x[pick] = np.nan
    return x


def placed_out(place, x):
    """(x, out, must_raise) for an out place; x is copied into a writeable C array where out
    must alias it. Views too small to be reversed or transposed are shifted instead; views of
at most one element overlap nothing else (must_raise False)."""
    if place is None:
        return x, None, False
    if place == "fresh":
        return x, np.full(x.shape, 7.0, x.dtype), False
    xc = np.array(x, order="C")
    if place == "exact":
        return xc, xc, False
    if place == "reversed" and xc.ndim and xc.shape[0] > 1:
        return xc, xc[::-1], xc.size > 1
    if place == "transposed" and xc.ndim > 1 and min(xc.shape) > 1:
        return xc, xc.reshape(xc.shape[::-1]).T, True  # x's memory in transposed order
    buf = np.concatenate([xc.ravel(), np.zeros(1, x.dtype)])  # shifted by one element
    return buf[:-1].reshape(x.shape), buf[1:].reshape(x.shape), x.size > 1  # 1 item: apart


def _check(backend, name, p):
    x, t, opts, reduction = p["x"], p["t"], p["opts"], p["reduction"]
    tol = TOL[x.dtype.type] * 10
    x, out, must_raise = placed_out(p["out"], x)
    expected_loss = reference.loss(name, x, t, reduction, **opts)
    expected_grad = reference.grad(name, x, t, reduction, **opts)
    if must_raise:
        before = x.copy()
        with pytest.raises(ValueError, match="out"):  # an overlap other than out is x
            call(name, "loss_and_grad", x, t, backend=backend, reduction=reduction, out=out, **opts)
        np.testing.assert_array_equal(x, before)
        out = None
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, reduction=reduction, out=out, **opts)
    assert out is None or grad is out
    assert np.shape(loss) == np.shape(expected_loss) and grad.shape == x.shape
    nan = np.isnan(expected_loss)
    np.testing.assert_array_equal(np.isnan(loss), nan)  # NaN in, NaN out, and only there
    if np.any(nan):
        loss, expected_loss = np.where(nan, 0.0, loss), np.where(nan, 0.0, expected_loss)
    if not np.all(nan):
        # error relative to the sum of |item losses|, the scale rounding works at (a total that
        # cancels to ~0 has no relative accuracy), and never below the dtype's smallest normal
        items = np.abs(reference.loss(name, x, t, "none", **opts))
        items = items[~np.isnan(items)]
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
def test_random_problems_match_reference(backend, name):

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems(name))
    def check(p):
        _check(backend, name, p)

    check()


def test_huge_class_count(backend):
    skip_if_simulated(backend, "rows of 2**17 classes")
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
