"""Backend choice, unavailability, show_config, threads and bitwise determinism."""

import threading

import numpy as np
import pytest

import fastloss
from cases import OPTION_CASES, backend_or_skip, call, make_inputs, seeded_rng, skip_if_simulated
from fastloss import _dispatch
from fastloss._specs import ROWS, SPECS


def test_auto_picks_cython_then_numba_then_numpy(monkeypatch):
    expected = next(n for n in ("cython", "numba", "numpy") if _dispatch.available(n))
    assert _dispatch.resolve("auto", np.ones(3)) == expected
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    assert _dispatch.resolve("auto", np.ones(3)) == "numpy"
    assert _dispatch.resolve("numba", np.ones(3)) == "numba"  # explicit choice beats the override


def test_device_arrays_go_to_cuda():
    class FakeDeviceArray:
        __cuda_array_interface__ = {}

    assert _dispatch.resolve("auto", FakeDeviceArray()) == "cuda"


def test_unavailable_backend_says_why_and_how(monkeypatch):
    monkeypatch.setitem(_dispatch.BACKENDS, "cython", "fastloss.backends.no_such_module")
    monkeypatch.setattr(_dispatch, "_modules", {})
    monkeypatch.setattr(_dispatch, "_why_not", {})
    with pytest.raises(fastloss.BackendUnavailable, match="cython.*unavailable.*pip install"):
        fastloss.mse(np.ones(3), np.zeros(3), backend="cython")
    assert _dispatch.resolve("auto", np.ones(3)) == ("numba" if _dispatch.available("numba") else "numpy")


def test_show_config_reports_backends(capsys):
    fastloss.show_config()
    text = capsys.readouterr().out
    for name in ("numpy", "cython", "numba", "cuda"):
        assert name in text
    assert fastloss._config.config()["backends"]["numpy"]["available"]


def test_import_does_not_import_numba_or_frameworks():
    import subprocess
    import sys
    code = "import fastloss, sys; print(sorted(m for m in ('numba', 'torch', 'jax') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_set_num_threads_validates():
    old = fastloss.get_num_threads()
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        fastloss.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fastloss.set_num_threads(2.5)
    fastloss.set_num_threads(3)
    assert fastloss.get_num_threads() == 3
    fastloss.set_num_threads(old)


@pytest.mark.parametrize("name", list(OPTION_CASES))
@pytest.mark.parametrize("backend", ("cython", "numba"))
def test_bitwise_identical_across_thread_counts_and_repeats(backend, name):
    backend_or_skip(backend)
    seed, rng = seeded_rng()
    shape = (700, 97) if SPECS[name].layout == ROWS else (300, 211)  # above the one-thread cut-off
    x, t, opts = make_inputs(name, OPTION_CASES[name][-1], np.float32, rng, shape)
    old = fastloss.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 8, 1, 2):
            fastloss.set_num_threads(n)
            for reduction in ("mean", "none"):
                results.append((n, reduction, call(name, "loss_and_grad", x, t, backend=backend,
                                                   reduction=reduction, **opts)))
    finally:
        fastloss.set_num_threads(old)
    first = {r: res for n, r, res in results[:2]}
    for n, reduction, (loss, grad) in results:
        assert np.array_equal(loss, first[reduction][0]), f"seed={seed} threads={n} {reduction}"
        assert np.array_equal(grad, first[reduction][1]), f"seed={seed} threads={n} {reduction}"


def test_concurrent_python_threads_match_serial(backend):
    skip_if_simulated(backend, "kernels launched from several Python threads at once")
    seed, rng = seeded_rng()
    x, t, opts = make_inputs("softmax_xent", OPTION_CASES["softmax_xent"][3], np.float32, rng, (400, 128))
    expected = call("softmax_xent", "loss_and_grad", x, t, backend=backend, **opts)
    results = [None] * 8

    def work(i):
        results[i] = call("softmax_xent", "loss_and_grad", x, t, backend=backend, **opts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for loss, grad in results:
        assert loss == expected[0] and np.array_equal(grad, expected[1]), f"seed={seed}"
