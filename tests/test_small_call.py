"""The hot-loop call (a backend's SMALL_CALLS, see fastloss.backends): it returns bitwise what the
general road returns, it is taken for plain calls only, and everything else still meets the
general road's validation."""

import numpy as np
import pytest

import fastloss
from cases import DTYPES, seeded_rng
from fastloss import _dispatch
from fastloss._threads import SMALL_INPUT


def small_backend_or_skip(backend):
    if not _dispatch.available(backend) or "softmax_xent" not in getattr(
            _dispatch.get_backend(backend), "SMALL_CALLS", {}):
        pytest.skip(f"{backend}: no small-call entry for softmax_xent")


def inputs(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, shape[1], shape[0])
    y[rng.integers(0, shape[0])] = -100  # the default ignore_index
    return x, y


@pytest.mark.parametrize("shape", ((32, 10), (1, 1), (17, 40), (3, 10000)))
@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "f64"))
@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_bitwise_the_general_road(backend, dtype, reduction, shape):
    """An option given explicitly (at its default value) sends the same call the general way."""
    small_backend_or_skip(backend)
    seed, rng = seeded_rng()
    x, y = inputs(rng, shape, dtype)
    kw = dict(reduction=reduction, backend=backend)
    general = dict(kw, label_smoothing=0.0)
    pairs = [
        (fastloss.softmax_xent(x, y, **kw), fastloss.softmax_xent(x, y, **general)),
        (fastloss.softmax_xent_grad(x, y, grad_output=1.7, **kw),
         fastloss.softmax_xent_grad(x, y, grad_output=1.7, **general)),
        *zip(fastloss.softmax_xent_and_grad(x, y, **kw), fastloss.softmax_xent_and_grad(x, y, **general)),
    ]
    out = np.full_like(x, np.nan)
    loss, grad = fastloss.softmax_xent_and_grad(x, y, out=out, **kw)
    assert grad is out
    pairs += [(loss, pairs[2][1]), (out, pairs[3][1])]
    in_place = x.copy()
    loss, grad = fastloss.softmax_xent_and_grad(in_place, y, out=in_place, **kw)
    assert grad is in_place
    pairs += [(loss, pairs[2][1]), (in_place, pairs[3][1])]
    for got, expected in pairs:
        assert type(got) is type(expected) and got.dtype == expected.dtype, seed
        np.testing.assert_array_equal(got, expected, err_msg=f"seed={seed}")


@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_all_ignored_batch(backend):
    small_backend_or_skip(backend)
    x = np.random.default_rng().standard_normal((4, 5)).astype(np.float32) + 0.5
    loss, grad = fastloss.softmax_xent_and_grad(x, np.full(4, -100), backend=backend)
    assert np.isnan(loss) and not np.any(grad)


@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_plain_call_skips_the_general_road(backend, monkeypatch):
    small_backend_or_skip(backend)
    seed, rng = seeded_rng()
    x, y = inputs(rng, (32, 10), np.float32)
    expected = fastloss.softmax_xent_and_grad(x, y, backend=backend)

    def general_road(*args, **kwargs):
        raise AssertionError("the general road was taken")

    monkeypatch.setattr(_dispatch, "prepare", general_road)
    got = fastloss.softmax_xent_and_grad(x, y, out=np.empty_like(x), backend=backend)
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[0] == expected[0]


class Sub(np.ndarray):
    pass


def other_calls(rng):
    """(description, call) pairs that the small call must hand to the general road."""
    x, y = inputs(rng, (32, 10), np.float32)
    big = np.ones((SMALL_INPUT // 10 + 1, 10), np.float32)
    shared = np.zeros(320, np.float32)  # its first 64 floats read as 32 int64 labels (0)
    return [
        ("reduction none", lambda b: fastloss.softmax_xent(x, y, reduction="none", backend=b)),
        ("int32 labels", lambda b: fastloss.softmax_xent(x, y.astype(np.int32), backend=b)),
        ("float16 logits", lambda b: fastloss.softmax_xent(x.astype(np.float16), y, backend=b)),
        ("strided logits", lambda b: fastloss.softmax_xent(np.repeat(x, 2, 1)[:, ::2], y, backend=b)),
        ("byte-swapped logits", lambda b: fastloss.softmax_xent(x.astype(">f4"), y, backend=b)),
        ("ndarray subclass", lambda b: fastloss.softmax_xent(x.view(Sub), y, backend=b)),
        ("3-D logits", lambda b: fastloss.softmax_xent(x.reshape(4, 8, 10), y.reshape(4, 8), backend=b)),
        ("list labels", lambda b: fastloss.softmax_xent(x, y.tolist(), backend=b)),
        ("label out of range", lambda b: fastloss.softmax_xent(x, np.full(32, 10), backend=b)),
        ("float32 grad_output", lambda b: fastloss.softmax_xent_grad(x, y, grad_output=np.float32(2), backend=b)),
        ("read-only out", lambda b: fastloss.softmax_xent_and_grad(x, y, out=readonly(np.empty_like(x)), backend=b)),
        ("float64 out", lambda b: fastloss.softmax_xent_and_grad(x, y, out=np.empty(x.shape), backend=b)),
        ("out over the labels", lambda b: fastloss.softmax_xent_and_grad(x, shared[:64].view(np.int64), out=shared.reshape(32, 10), backend=b)),
        ("out with the loss", lambda b: fastloss.softmax_xent(x, y, out=np.empty(32, np.float32), backend=b)),
        ("big input", lambda b: fastloss.softmax_xent(big, np.zeros(len(big), np.int64), backend=b)),
    ]


def readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_other_calls_take_the_general_road(backend, monkeypatch):
    small_backend_or_skip(backend)
    seed, rng = seeded_rng()
    calls = other_calls(rng)

    class GeneralRoad(Exception):
        pass

    def general_road(*args, **kwargs):
        raise GeneralRoad

    monkeypatch.setattr(_dispatch, "prepare", general_road)
    for what, call in calls:
        with pytest.raises(GeneralRoad):
            call(backend)
            pytest.fail(f"{what}: answered by the small call")
