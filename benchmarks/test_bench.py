"""pytest-benchmark suite: loss x entry point x backend x shape x dtype, one group per workload
(``loss|entry|shape|dtype``) so each group compares the backends and the peers (PyTorch CPU,
JAX ``jit``) on the same inputs.

Normal test runs execute each case once as a smoke test (``--benchmark-disable`` in
pyproject.toml). To measure: ``python -m pytest benchmarks --benchmark-enable``; set
``FASTLOSS_BENCH_LARGE=1`` for the large shapes of ``python -m fastloss.bench``.
"""

import json
import os

import numpy as np
import pytest

import fastloss
from fastloss import bench
from fastloss._dispatch import available
from fastloss._specs import SPECS

LARGE = os.environ.get("FASTLOSS_BENCH_LARGE") == "1"
SHAPES = {True: [(4096, 32000), (65536, 1000), (1_000_000, 10)], False: [(32, 10), (512, 1000)]}
ENTRIES = ("loss", "grad", "loss_and_grad")
SUFFIX = {"loss": "", "grad": "_grad", "loss_and_grad": "_and_grad"}


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("shape", SHAPES[LARGE], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend", ("numpy", "cython", "numba"))
@pytest.mark.parametrize("name", list(SPECS))
def test_backend(benchmark, name, backend, entry, shape, dtype):
    if not available(backend):
        pytest.skip(f"{backend} unavailable")
    x, t = bench.make_problem(name, shape, np.dtype(dtype), np.random.default_rng())
    func = getattr(fastloss, name + SUFFIX[entry])
    kwargs = {"backend": backend}
    if entry != "loss":
        kwargs["out"] = np.empty_like(x)
    benchmark.group = f"{name}|{entry}|{'x'.join(map(str, shape))}|{dtype}"
    benchmark.extra_info["bytes"] = bench.moved_bytes(x, t) if entry != "loss" else x.nbytes + t.nbytes
    benchmark(func, x, t, **kwargs)


@pytest.mark.parametrize("dtype", ("float32",))
@pytest.mark.parametrize("shape", SHAPES[LARGE], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("peer", ("torch", "jax"))
@pytest.mark.parametrize("name", list(SPECS))
def test_peer(benchmark, name, peer, shape, dtype):
    """Forward + backward of the same loss in a peer framework, in the loss_and_grad group."""
    pytest.importorskip(peer)
    x, t = bench.make_problem(name, shape, np.dtype(dtype), np.random.default_rng())
    peers = bench._peers(name, x, t)
    if peer not in peers:
        pytest.skip(f"{peer} has no {name}")
    benchmark.group = f"{name}|loss_and_grad|{'x'.join(map(str, shape))}|{dtype}"
    benchmark(peers[peer])



def test_copy_probes():
    """The bandwidth probes: every copy the report compares with is a correct copy."""
    found = bench.copy_bandwidths(2, nbytes=1 << 22, rounds=1)
    assert found["memcpy"] > 0 and set(found) <= {"memcpy", "streaming"}
    if available("cython"):
        from fastloss._dispatch import get_backend
        stream_copy = get_backend("cython").stream_copy
        src = np.random.default_rng().standard_normal(100_003)
        for lo, hi in ((0, 100_003), (1, 99_990), (3, 20), (5, 5)):
            dst = np.zeros_like(src)
            stream_copy(dst[lo:hi], src[lo:hi])
            np.testing.assert_array_equal(dst[lo:hi], src[lo:hi])
            assert not dst[:lo].any() and not dst[hi:].any()


def test_small_table(tmp_path, capsys):
    """--small: every row agrees with its NumPy twin and is timed (the structure, not the timings)."""
    path = tmp_path / "small.json"
    bench.main(["--small", "--rounds", "1", "--json", str(path)])
    report = json.loads(path.read_text())
    backends = [b for b in ("cython", "numba") if available(b)]
    cases = bench.small_cases(np.random.default_rng())
    assert [(r["loss"], r["options"], r["backend"]) for r in report["results"]] == [
        (name, label, b) for name, label, *_ in cases for b in backends]
    assert all(r["median_s"] > 0 and r["numpy_s"] > 0 and isinstance(r["met"], bool) for r in report["results"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["loss", "options", "backend", "median", "numpy", "numpy/fl", "target", "met"]
    assert len(lines) == 3 + len(report["results"]) + 2
