"""Regression tests of defects found with hostile inputs (issue 13), on every backend: the CPU
ones, and ``cuda`` under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``) or on a GPU.

1. ``out`` that overlaps an input other than as the exact input array raises a ValueError naming
   ``out``, before anything is written.
2. NaN in, NaN out, also where a zero target (or weight) multiplies the NaN.
3. 0-d ``weight``/``pos_weight`` broadcast like any other.
4. Integer options and labels of every integer type: only ValueError/TypeError escape.

Shapes are small, so softmax_xent's default calls take the hot-loop small-call path where a
backend has one: it must give the same errors and results as the general road. (Device arrays
as ``out``: test_cuda.py.)
"""

import numpy as np
import pytest

from cases import call, make_inputs, seeded_rng
from fastloss import reference
from fastloss._specs import ROWS, SPECS

# (loss, option case): every loss, softmax_xent also with probability targets and with weights
LOSS_CASES = [(name, {}) for name in SPECS] + [
    ("softmax_xent", {"probs": True}),
    ("softmax_xent", {"weight": "classes", "label_smoothing": 0.1}),
    ("sigmoid_bce", {"weight": "elements", "pos_weight": "last_axis"}),
    ("multiclass_hinge", {"weight": "classes", "mode": "crammer_singer"}),
]
CASE_IDS = [f"{n}-{'-'.join(c) or 'defaults'}" for n, c in LOSS_CASES]
OVERLAPS = ("shifted", "reversed", "transposed", "last_row", "targets", "weight")


def _unchanged_after_raise(match, arrays, fn):
    """``fn()`` raises a ValueError matching ``match`` and leaves ``arrays`` bitwise as they were."""
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match=match):
        fn()
    for b, a in zip(before, arrays):
        np.testing.assert_array_equal(a, b)


def _overlapping(kind, x, t, opts, rng):
    """(x, t, opts, out, buffers): ``x`` and ``out`` placed in memory so that ``out`` overlaps
    an input as ``kind`` says; ``buffers`` are the arrays that must stay unchanged."""
    shape, n = x.shape, x.size
    if kind == "shifted":  # out is x's buffer moved on by one element
        buf = np.concatenate([x.ravel(), rng.standard_normal(1).astype(x.dtype)])
        return buf[:n].reshape(shape), t, opts, buf[1:].reshape(shape), [buf]
    if kind == "last_row":  # out's first row is x's last
        c = shape[-1]
        buf = np.concatenate([x.ravel(), rng.standard_normal(n - c).astype(x.dtype)])
        return buf[:n].reshape(shape), t, opts, buf[n - c:].reshape(shape), [buf]
    if kind == "reversed":
        x = x.copy()
        return x, t, opts, x[::-1], [x]
    if kind == "transposed":  # x square, out its transpose
        sq = np.ascontiguousarray(np.resize(x, (shape[-1], shape[-1])))
        return sq, t, opts, sq.T, [sq]
    if kind == "targets":  # out's last element is the target's first byte range
        nbytes = x.nbytes + t.nbytes
        raw = np.zeros(nbytes + x.itemsize, np.uint8)
        t2 = raw[x.nbytes - x.itemsize:x.nbytes - x.itemsize + t.nbytes].view(t.dtype).reshape(t.shape)
        t2[...] = t
        out = raw[:x.nbytes].view(x.dtype).reshape(shape)
        return x, t2, opts, out, [t2]
    if kind == "weight":
        key = next((k for k in ("weight", "pos_weight") if opts.get(k) is not None), None)
        if key is None:
            return None
        w = opts[key]
        raw = np.zeros(x.nbytes + w.nbytes, np.uint8)
        w2 = raw[x.nbytes - w.itemsize:x.nbytes - w.itemsize + w.nbytes].view(w.dtype).reshape(w.shape)
        w2[...] = w
        return x, t, {**opts, key: w2}, raw[:x.nbytes].view(x.dtype).reshape(shape), [w2]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", OVERLAPS)
@pytest.mark.parametrize("name,case", LOSS_CASES, ids=CASE_IDS)
def test_out_overlapping_an_input_raises_before_writing(backend, name, case, kind):
    seed, rng = seeded_rng()
    dtype = np.float64 if rng.random() < 0.5 else np.float32
    x, t, opts = make_inputs(name, case, dtype, rng, (6, 6))
    placed = _overlapping(kind, x, t, opts, rng)
    if placed is None:
        pytest.skip("no weight in this case")
    x, t, opts, out, buffers = placed
    for entry in ("grad", "loss_and_grad"):
        _unchanged_after_raise("out", buffers + [x, t],
                               lambda: call(name, entry, x, t, backend=backend, out=out, **opts))
    if SPECS[name].layout != ROWS:  # the unreduced loss has x's shape: it may not overlap x at all
        for bad in (out, x):
            _unchanged_after_raise("out", buffers + [x, t], lambda: call(
                name, "loss", x, t, backend=backend, reduction="none", out=bad, **opts))


@pytest.mark.parametrize("name,case", LOSS_CASES, ids=CASE_IDS)
def test_out_exactly_the_input_is_the_gradient(backend, name, case):
    """The one overlap allowed: out is the input itself (or another view of exactly it)."""
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, case, np.float64, rng, (6, 6))
    loss, grad = call(name, "loss_and_grad", x, t, backend=backend, **opts)
    for alias in (lambda a: a, lambda a: a.view()):
        xx = x.copy()
        got_loss, got = call(name, "loss_and_grad", xx, t, backend=backend, out=alias(xx), **opts)
        np.testing.assert_array_equal(got, grad, err_msg=f"seed={seed}")
        np.testing.assert_array_equal(xx, grad)
        assert got_loss == loss


def _nan_at_zero_problems(dtype):
    """(loss, x, t, opts): a NaN input where a zero target or zero weight multiplies it."""
    nan, inf = np.nan, np.inf
    a = lambda v: np.array(v, dtype)
    return [
        ("kl_div", a([nan, -1.0]), a([0.0, 1.0]), {}),
        ("kl_div", a([[inf], [nan]]), a([[1.0], [0.0]]), {"reduction": "batchmean"}),
        ("kl_div", a([nan, -1.0]), a([-inf, 0.0]), {"log_target": True}),
        ("sigmoid_bce", a([nan, 1.0]), a([0.0, 1.0]), {"weight": a([0.0, 1.0])}),
        ("sigmoid_bce", a([[nan, 1.0]]), a([[1.0, 1.0]]), {"pos_weight": a([0.0, 1.0])}),
        ("softmax_xent", a([[nan, 1.0]]), a([[0.0, 1.0]]), {}),
        ("softmax_xent", a([[nan, 1.0]]), a([[0.0, 0.0]]), {}),
        ("softmax_xent", a([[nan, 1.0]]), a([[0.0, 1.0]]), {"weight": a([1.0, 0.0])}),
        ("softmax_xent", a([[nan, 1.0]]), a([[0.0, 1.0]]), {"label_smoothing": 0.1, "z_loss": 0.01}),
        ("softmax_xent", a([[1.0, nan]]), np.array([0]), {"weight": a([0.0, 1.0])}),
        ("multiclass_hinge", a([[1.0, nan]]), np.array([0]), {"weight": a([0.0, 1.0])}),
        ("huber", a([nan, 1.0]), a([0.0, 0.0]), {}),
        ("mse", a([nan]), a([0.0]), {}),
    ]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_nan_under_a_zero_target_or_weight_stays_nan(backend, dtype):
    for name, x, t, opts in _nan_at_zero_problems(dtype):
        opts = dict(opts)
        reduction = opts.pop("reduction", "mean")
        for red in (reduction, "none"):
            got = call(name, "loss", x, t, backend=backend, reduction=red, **opts)
            want = reference.loss(name, x, t, red, **opts)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} {opts} {red}")
            assert np.all(np.isnan(want)) if red != "none" else np.any(np.isnan(want)), (name, opts)
            finite = ~np.isnan(want)
            np.testing.assert_allclose(np.asarray(got)[finite], np.asarray(want)[finite], rtol=1e-6)


def test_one_class_multiclass_hinge_has_no_term(backend):
    """One class: no j != y, so no term at all (PyTorch's multi_margin_loss), even for a NaN
    score: the one documented exception to NaN in, NaN out (found by the NaN strategy)."""
    x = np.array([[np.nan], [2.0], [-np.inf]])
    for mode in ("weston_watkins", "crammer_singer"):
        loss, grad = call("multiclass_hinge", "loss_and_grad", x, np.zeros(3, np.int64), backend=backend,
                          mode=mode, reduction="none")
        np.testing.assert_array_equal(loss, [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(grad, np.zeros((3, 1)))


def test_zero_target_under_a_masked_log_prob_is_zero(backend):
    """kl_div: a zero target contributes 0 even where log_probs = -inf (the documented choice:
    PyTorch gives 0 * inf = NaN there); the same for a +inf log-probability."""
    x = np.array([-np.inf, np.inf, -0.5])
    t = np.array([0.0, 0.0, 1.0])
    got = call("kl_div", "loss", x, t, backend=backend, reduction="none")
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.5])


def test_zero_dim_and_broadcast_weights(backend):
    _, rng = seeded_rng()
    for shape, w_shape, pw_shape in [((), (), ()), ((), (), None), ((3, 4), (), (1,)),
                                     ((3, 4), (3, 1), ()), ((3, 4), (1, 4), (4,)), ((2, 3, 4), (3, 1), (1, 4))]:
        x = rng.standard_normal(shape)
        t = rng.uniform(0, 1, shape)
        opts = {"weight": rng.uniform(0.5, 2, w_shape)}
        if pw_shape is not None:
            opts["pos_weight"] = rng.uniform(0.5, 2, pw_shape)
        loss, grad = call("sigmoid_bce", "loss_and_grad", x, t, backend=backend, **opts)
        np.testing.assert_allclose(loss, reference.loss("sigmoid_bce", x, t, **opts), rtol=1e-12)
        np.testing.assert_allclose(grad, reference.grad("sigmoid_bce", x, t, **opts), rtol=1e-12)
        assert np.shape(grad) == shape


def test_integer_options_and_label_dtypes(backend):
    _, rng = seeded_rng()
    x = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 2, 1])
    want = call("softmax_xent", "loss", x, y, backend=backend, ignore_index=1)
    for ignore in (np.int8(1), np.uint64(1), np.int32(1), np.int64(1)):
        assert call("softmax_xent", "loss", x, y, backend=backend, ignore_index=ignore) == want
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        assert call("softmax_xent", "loss", x, y.astype(dtype), backend=backend, ignore_index=1) == want
        for name in ("multiclass_hinge", "softmax_xent"):
            np.testing.assert_array_equal(call(name, "grad", x, y.astype(dtype), backend=backend),
                                          call(name, "grad", x, y, backend=backend))
    for big in (2**70, -2**70, 2**63, np.uint64(2**64 - 1)):
        with pytest.raises(ValueError, match=r"ignore_index must be in the int64 range.*got"):
            call("softmax_xent", "loss_and_grad", x, y, backend=backend, ignore_index=big)
    with pytest.raises(TypeError, match="ignore_index must be an int, got True"):
        call("softmax_xent", "loss", x, y, backend=backend, ignore_index=True)
    with pytest.raises(TypeError, match="labels"):
        call("softmax_xent", "loss", x, y.astype(bool), backend=backend)
    with pytest.raises(ValueError, match=r"labels\[1\] = 9223372036854775813"):
        call("softmax_xent", "loss", x, np.array([0, 2**63 + 5, 0, 0, 0], np.uint64), backend=backend)
    for name, option in (("multiclass_hinge", "margin"), ("softmax_xent", "label_smoothing"),
                         ("softmax_xent", "z_loss"), ("huber", "delta"), ("hinge", "margin")):
        t = y if SPECS[name].layout == ROWS else np.sign(x)
        with pytest.raises(ValueError, match=f"{option} must be within the float64 range"):
            call(name, "loss", x, t, backend=backend, **{option: 10**400})

