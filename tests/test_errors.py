"""Bad input: a clear ValueError/TypeError naming the argument and value, and nothing written."""

import numpy as np
import pytest

from cases import BACKENDS, backend_or_skip, call, make_inputs, seeded_rng
from fastloss._specs import CLASSES, CLASSES_OR_PROBS, SPECS


def _expect(exc, match, name, entry, x, t, backend, **kwargs):
    """The call raises ``exc`` matching ``match``, leaving x, t and out bitwise unchanged."""
    out = kwargs.get("out")
    snapshot = [a.copy() for a in (x, t, out) if isinstance(a, np.ndarray)]
    with pytest.raises(exc, match=match):
        call(name, entry, x, t, backend=backend, **kwargs)
    after = [a for a in (x, t, out) if isinstance(a, np.ndarray)]
    for before, now in zip(snapshot, after):
        np.testing.assert_array_equal(before, now)


@pytest.mark.parametrize("entry", ("loss", "grad", "loss_and_grad"))
@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.targets in (CLASSES, CLASSES_OR_PROBS)])
def test_bad_label_names_position_and_value(backend, name, entry):
    _, rng = seeded_rng()
    x, t, _ = make_inputs(name, {}, np.float32, rng, (3, 4, 5))
    t[t < 0] = 0  # no ignored label, so that uint64 holds every label
    t[1, 2] = 5 if rng.random() < 0.5 else -3
    bad = int(t[1, 2])
    out = np.full_like(x, 3.0)
    kwargs = {} if entry == "loss" else {"out": out}
    _expect(ValueError, rf"labels\[1, 2\] = {bad} is not a valid class index", name, entry, x, t, backend,
            **kwargs)
    t[1, 2] = np.iinfo(np.int64).max
    _expect(ValueError, "labels", name, entry, x, t, backend, **kwargs)
    _expect(ValueError, r"labels\[1, 2\]", name, entry, x, t.astype(np.uint64), backend, **kwargs)


@pytest.mark.parametrize("name", list(SPECS))
def test_shape_dtype_option_and_out_errors(backend, name):
    spec = SPECS[name]
    _, rng = seeded_rng()
    x, t, _ = make_inputs(name, {}, np.float64, rng, (4, 6))
    e = lambda exc, match, entry="loss_and_grad", x=x, t=t, **kw: _expect(exc, match, name, entry, x, t, backend, **kw)
    e(ValueError, "shape", t=t[:3])
    e(TypeError, "dtype", x=x.astype(np.complex128))
    e(ValueError, "reduction", reduction="average")
    e(TypeError, "unknown option", colour="red")
    e(TypeError, "out must have dtype float64", out=np.zeros(x.shape, np.float32))
    e(ValueError, r"out must have shape \(4, 6\)", out=np.zeros((4, 7)))
    e(ValueError, "C-contiguous", out=np.zeros((6, 4)).T)
    e(TypeError, "out must be a NumPy array", out=[[0.0] * 6] * 4)
    e(ValueError, "grad_output", entry="grad", grad_output=np.ones(3))
    e(ValueError, "only with reduction='none'", entry="loss", out=np.zeros(x.shape))
    if spec.targets == "values":
        e(ValueError, "out shares memory", out=t)
    if "weight" in spec.options:
        e(ValueError, "weight", weight=np.ones(7))
    if "pos_weight" in spec.options:
        e(ValueError, "pos_weight", pos_weight=np.ones(5))
    if "mode" in spec.options:
        e(ValueError, "mode must be one of", mode="one_vs_rest")
    if "delta" in spec.options:
        e(ValueError, "delta must be > 0", delta=0.0)
    if "label_smoothing" in spec.options:
        e(ValueError, "label_smoothing", label_smoothing=1.5)
        e(TypeError, "integer class indices or float probabilities", t=t.astype(bool))
    if "squared" in spec.options:
        e(TypeError, "squared must be True or False", squared="yes")
    for flag in ("log_input", "full"):
        if flag in spec.options:
            e(TypeError, f"{flag} must be True or False", **{flag: 1})
    for option in ("beta", "eps", "gamma"):
        if option in spec.options:
            e(ValueError, rf"{option} must be >= 0.0, got -0.5", **{option: -0.5})
            e(ValueError, f"{option} must be finite", **{option: np.inf})
    if "alpha" in spec.options:
        e(ValueError, "alpha must be finite", alpha=-np.inf)
        e(ValueError, "alpha", alpha=np.nan)
        e(TypeError, "alpha must be a real number", alpha="0.25")
    if spec.targets == "classes":
        e(TypeError, "must be integer class indices", t=t.astype(np.float64))
    if name == "hinge":
        bad = t.copy()
        bad[2, 3] = 0.5
        e(ValueError, r"labels\[2, 3\] = 0.5", t=bad)


@pytest.mark.parametrize("backend", (*BACKENDS, "warp", None))
def test_unknown_backend_names_the_value(backend):
    if backend is None or backend == "warp":
        with pytest.raises(ValueError, match=repr(backend)):
            call("mse", "loss", np.ones(3), np.zeros(3), backend=backend)
    else:
        backend_or_skip(backend)
        assert call("mse", "loss", np.ones(3), np.zeros(3), backend=backend) == 1.0


def test_read_only_input_cannot_be_out():
    x = np.ones((2, 3))
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        call("softmax_xent", "grad", x, np.array([0, 1]), out=x)
