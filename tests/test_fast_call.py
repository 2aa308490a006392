"""The road's fast step (a backend's ``fast_call``, see fastloss.backends): for every loss and
option it returns bitwise what the general road returns; it answers the common small calls
without the general road's validation; and everything else still meets that validation."""

import numpy as np
import pytest

import fastloss
from cases import ALL_CASES, DTYPES, backend_or_skip, call, case_id, make_inputs, seeded_rng
from fastloss import _dispatch
from fastloss._specs import SPECS
from fastloss._threads import PARALLEL_MIN

# the backends whose fast step answers every common call
EVERY_LOSS = {"cython", "numba"}
ENTRIES = ("loss", "grad", "loss_and_grad")


def fast_backend_or_skip(backend):
    backend_or_skip(backend)
    return _dispatch.get_backend(backend)


class GeneralRoad(Exception):
    pass


def _general_road(*args, **kwargs):
    raise GeneralRoad


def _results(name, x, t, opts, reduction, backend, out_place):
    """Every entry point's results for one problem, ``out`` placed as asked (None, a fresh
    array, or x itself); each as a copy."""
    got = []
    for entry in ENTRIES:
        kw = dict(opts, backend=backend, reduction=reduction)
        xx = x.copy()
        if entry != "loss" and out_place == "fresh":
            kw["out"] = np.full_like(xx, np.nan)
        elif entry != "loss" and out_place == "x":
            kw["out"] = xx
        if entry == "grad":
            kw["grad_output"] = 1.7
        res = call(name, entry, xx, t, **kw)
        res = res if entry == "loss_and_grad" else (res,)
        if "out" in kw:
            assert res[-1] is kw["out"]
        got += [np.copy(r) for r in res]
    return got


# below PARALLEL_MIN the fast step answers; from there on (threads) the general road does
@pytest.mark.parametrize("rows", (6, PARALLEL_MIN // 7 + 1), ids=("one-thread", "threads"))
@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("name,case", ALL_CASES, ids=[f"{n}-{case_id(c)}" for n, c in ALL_CASES])
@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_bitwise_the_general_road(backend, name, case, dtype, rows, monkeypatch):
    kernels = fast_backend_or_skip(backend)
    seed, rng = seeded_rng()
    x, t, opts = make_inputs(name, case, dtype, rng, (rows, 7))
    if t.dtype.kind == "i" and rng.random() < 0.5:
        t = t.astype(np.int32)
    for reduction in SPECS[name].reductions:
        out_place = rng.choice([None, "fresh", "x"])
        fast = kernels.fast_call
        # the common call never meets the general road's validation (a weight broadcast to
        # sigmoid_bce's input, copied by the general road, is not counted common)
        if backend in EVERY_LOSS and case.get("weight") != "last_axis" and x.size < PARALLEL_MIN:
            monkeypatch.setattr(_dispatch, "prepare", _general_road)
        try:
            got = _results(name, x, t, opts, reduction, backend, out_place)
        finally:
            monkeypatch.undo()
        monkeypatch.setattr(kernels, "fast_call", None)
        expected = _results(name, x, t, opts, reduction, backend, out_place)
        monkeypatch.undo()
        assert kernels.fast_call is fast
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=f"seed={seed} {reduction} out={out_place}")


@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_all_ignored_batch(backend):
    fast_backend_or_skip(backend)
    x = np.random.default_rng().standard_normal((4, 5)).astype(np.float32) + 0.5
    loss, grad = fastloss.softmax_xent_and_grad(x, np.full(4, -100), backend=backend)
    assert np.isnan(loss) and not np.any(grad)


class Sub(np.ndarray):
    pass


def readonly(a):
    a.flags.writeable = False
    return a


def other_calls(rng):
    """(description, call) pairs that the fast step must hand to the general road."""
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    t = rng.standard_normal((32, 10)).astype(np.float32)
    shared = np.zeros(330, np.float32)  # its first 64 floats read as 32 int64 labels (0)
    sx = lambda *a, **k: fastloss.softmax_xent_and_grad(*a, **k)
    return [
        ("float16 logits", lambda b: sx(x.astype(np.float16), y, backend=b)),
        ("strided logits", lambda b: sx(np.repeat(x, 2, 1)[:, ::2], y, backend=b)),
        ("byte-swapped logits", lambda b: sx(x.astype(">f4"), y, backend=b)),
        ("ndarray subclass", lambda b: sx(x.view(Sub), y, backend=b)),
        ("list labels", lambda b: sx(x, y.tolist(), backend=b)),
        ("bool labels", lambda b: sx(x, y > 4, backend=b)),
        ("label out of range", lambda b: sx(x, np.full(32, 10), backend=b)),
        ("uint64 label beyond int64", lambda b: sx(x, np.full(32, 2**63, np.uint64), backend=b)),
        ("float64 probabilities", lambda b: sx(x, np.abs(t).astype(np.float64), backend=b)),
        ("float32 grad_output", lambda b: fastloss.softmax_xent_grad(x, y, grad_output=np.float32(2), backend=b)),
        ("array grad_output", lambda b: fastloss.mse_grad(x, t, reduction="none", grad_output=t, backend=b)),
        ("read-only out", lambda b: sx(x, y, out=readonly(np.empty_like(x)), backend=b)),
        ("float64 out", lambda b: sx(x, y, out=np.empty(x.shape), backend=b)),
        ("out over the labels", lambda b: sx(x, shared[:64].view(np.int64), out=shared[:320].reshape(32, 10), backend=b)),
        ("out shifted over x", lambda b: fastloss.mse_and_grad(shared[:320].reshape(32, 10), t, out=shared[1:321].reshape(32, 10), backend=b)),
        ("out with the loss", lambda b: fastloss.softmax_xent(x, y, out=np.empty(32, np.float32), reduction="none", backend=b)),
        ("broadcast weight", lambda b: fastloss.sigmoid_bce_and_grad(x, np.abs(t) % 1, weight=np.ones(10, np.float32), backend=b)),
        ("float64 class weight", lambda b: sx(x, y, weight=np.ones(10), backend=b)),
        ("numpy bool option", lambda b: fastloss.hinge_and_grad(x, np.sign(t), squared=np.True_, backend=b)),
        ("numpy int ignore_index", lambda b: sx(x, y, ignore_index=np.int64(3), backend=b)),
        ("ignore_index beyond int64", lambda b: sx(x, y, ignore_index=2**70, backend=b)),
        ("unknown option", lambda b: sx(x, y, colour="red", backend=b)),
        ("option of another loss", lambda b: sx(x, y, delta=1.0, backend=b)),
        ("hinge label 0.5", lambda b: fastloss.hinge_and_grad(x, np.full_like(x, 0.5), backend=b)),
        ("empty batch", lambda b: sx(x[:0], y[:0], backend=b)),
        ("batchmean of mse", lambda b: fastloss.mse(x, t, reduction="batchmean", backend=b)),
    ]


@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_other_calls_take_the_general_road(backend, monkeypatch):
    fast_backend_or_skip(backend)
    seed, rng = seeded_rng()
    calls = other_calls(rng)
    monkeypatch.setattr(_dispatch, "prepare", _general_road)
    for what, run in calls:
        with pytest.raises(GeneralRoad):
            run(backend)
            pytest.fail(f"{what}: answered by the fast step")
