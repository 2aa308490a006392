"""pytest-benchmark suite: loss x entry point x backend x shape x dtype, one group per workload
(``loss|entry|shape|dtype``) so each group compares the backends and the peers (PyTorch CPU,
JAX ``jit``) on the same inputs.

Normal test runs execute each case once as a smoke test (``--benchmark-disable`` in
pyproject.toml): every loss x entry point x backend once, at 32x10 float32, the peers through
``test_framework_twins_agree`` (which checks their values too). To measure: ``python -m pytest
benchmarks --benchmark-enable`` (every shape and dtype, ``test_peer`` too); set
``FASTLOSS_BENCH_LARGE=1`` for the large shapes of ``python -m fastloss.bench``.
"""

import io
import json
import os
import subprocess
import sys

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


def _measuring(config):
    """--benchmark-enable or FASTLOSS_BENCH_LARGE=1: the benchmarks are timed, not only smoke-run."""
    disabled = config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False)
    return LARGE or not disabled


def pytest_generate_tests(metafunc):
    """Shapes and dtypes of test_backend and test_peer: all of them when measuring; for a smoke
    run (one call per case) the smallest shape in float32, which still runs every loss, entry
    point and backend once (compiling each shape and dtype on Numba would take minutes)."""
    if metafunc.function.__name__ not in ("test_backend", "test_peer"):
        return
    measuring = _measuring(metafunc.config)
    shapes = SHAPES[LARGE] if measuring else SHAPES[False][:1]
    dtypes = ("float32", "float64") if measuring and metafunc.function.__name__ == "test_backend" else ("float32",)
    metafunc.parametrize("shape", shapes, ids=lambda s: "x".join(map(str, s)))
    metafunc.parametrize("dtype", dtypes)


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


@pytest.mark.parametrize("peer", ("torch", "jax"))
@pytest.mark.parametrize("name", list(SPECS))
def test_peer(request, benchmark, name, peer, shape, dtype):
    """Forward + backward of the same loss in a peer framework, in the loss_and_grad group. Only
    when measuring: a smoke run calls every one of these steps in test_framework_twins_agree."""
    if not _measuring(request.config):
        pytest.skip("smoke run: test_framework_twins_agree calls every peer step (and checks it)")
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


def test_small_table(tmp_path, capsys, monkeypatch):
    """--small: every row agrees with its NumPy twin and is timed (the structure, not the timings)."""
    run_small = bench.run_small
    path = tmp_path / "small.json"
    monkeypatch.setattr(bench, "run_small", lambda rounds: run_small(rounds, min_seconds=1e-4))  # no 10 ms loops
    bench.main(["--small", "--rounds", "1", "--quiet", "--json", str(path)])
    report = json.loads(path.read_text())
    backends = [b for b in ("cython", "numba") if available(b)]
    cases = bench.small_cases(np.random.default_rng())
    assert [(r["loss"], r["options"], r["backend"]) for r in report["results"]] == [
        (name, label, b) for name, label, *_ in cases for b in backends]
    assert all(r["median_s"] > 0 and r["numpy_s"] > 0 and isinstance(r["met"], bool) for r in report["results"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["loss", "options", "backend", "median", "numpy", "numpy/fl", "target", "met"]
    assert len(lines) == 3 + len(report["results"]) + 2


# ---- --frameworks: the structure of the section at tiny sizes (no timing asserted) ---------------

TINY = {"softmax_xent": [(64, 100)], "multiclass_hinge": [(64, 100)], "cosine_similarity": [(64, 100)],
        "elements": [(16, 40)]}
FRAMEWORK_LOSSES = ("softmax_xent", "multiclass_hinge", "mse", "mae", "hinge", "cosine_similarity")


def _frameworks_json(tmp_path, monkeypatch, losses=FRAMEWORK_LOSSES):
    monkeypatch.setattr(bench, "QUICK", TINY)
    path = tmp_path / "frameworks.json"
    bench.main(["--frameworks", "--quick", "--rounds", "1", "--quiet", "--json", str(path)]
               + [a for name in losses for a in ("--loss", name)])
    return json.loads(path.read_text())


def _expected_labels(name, large):
    labels = {"raw", "raw out="} if large else {"raw out="}
    if bench._importable("torch"):
        labels |= {"fl.torch", "torch"}
    if bench._importable("jax"):
        labels |= {"fl.jax", bench._jax_twin(name)[0]} | ({"fl.jax donated"} if large else set())
    return labels


def test_frameworks_section(tmp_path, monkeypatch, capsys):
    """--frameworks --quick: every loss asked for at its (tiny) quick size and at 32x10, the rows
    of each installed framework, ratios with their targets, the allocation policy said; the JSON
    and both formatters."""
    report = _frameworks_json(tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert report["section"] == "frameworks" and report["dtype"] == "float32"
    assert {"machine", "threads", "allocation", "rounds", "missing", "results", "small"} <= set(report)
    al = report["allocation"]
    assert {"thp", "huge_mb", "probe_mb", "equal", "policy", "numpy_madvise"} <= set(al)
    assert "numpy" in al["huge_mb"] and al["policy"] in out
    assert [(r["loss"], r["shape"]) for r in report["results"]] == [
        (name, list(TINY.get(name, TINY["elements"])[0])) for name in FRAMEWORK_LOSSES]
    assert [r["loss"] for r in report["small"]["results"]] == [r["loss"] for r in report["results"]]
    assert report["small"]["shape"] == [32, 10]
    for rows, large in ((report["results"], True), (report["small"]["results"], False)):
        for r in rows:
            assert {"loss", "shape", "twin", "median_s", "ratios", "targets", "met", "notes"} <= set(r)
            want = _expected_labels(r["loss"], large)
            donated_skipped = any(n.startswith("skipped fl.jax donated") for n in r["notes"])
            assert set(r["median_s"]) == want - ({"fl.jax donated"} if donated_skipped else set())
            assert all(s > 0 for s in r["median_s"].values())
            assert not any("is not the kernel's" in n for n in r["notes"]), r["notes"]  # the twins agree
            assert set(r["met"]) == set(r["targets"]) <= set(r["ratios"])
            if bench._importable("torch"):
                assert ("fl.torch/raw" if large else "torch/fl.torch") in r["ratios"]
            if bench._importable("jax"):
                assert "twin/fl.jax" in r["ratios"] and r["targets"]["twin/fl.jax"] == ">1.0"
    lines = out.splitlines()
    assert lines[0].startswith("fastloss bench --frameworks") and lines[1].startswith("allocation: THP")
    assert sum(line.startswith("targets met:") for line in lines) == 2
    assert "small calls, 32x10" in out
    markdown = bench.format_frameworks_markdown(report)
    assert markdown.count("| loss | shape |") == 2
    bench.main(["--markdown", str(tmp_path / "frameworks.json")])
    assert capsys.readouterr().out.strip() == markdown


@pytest.mark.parametrize("peer", ("torch", "jax"))
def test_frameworks_without_a_peer(tmp_path, monkeypatch, peer):
    """A framework that is not installed: its rows and ratios are left out, the rest runs."""
    pytest.importorskip({"torch": "jax", "jax": "torch"}[peer])  # the other one runs
    hidden = {"torch": {"torch"}, "jax": {"jax", "optax"}}[peer]
    importable = bench._importable
    monkeypatch.setattr(bench, "_importable", lambda m: m not in hidden and importable(m))
    report = _frameworks_json(tmp_path, monkeypatch, ("softmax_xent", "mse"))
    assert set(report["missing"]) >= hidden and peer not in report["machine"]
    gone = {"torch": {"fl.torch", "torch"}, "jax": {"fl.jax", "fl.jax donated", "optax", "jax"}}[peer]
    for r in report["results"] + report["small"]["results"]:
        assert not gone & set(r["median_s"]) and set(r["median_s"]) & {"fl.torch", "fl.jax"}
        assert not any(peer in k for k in r["ratios"]) if peer == "torch" else "twin/fl.jax" not in r["ratios"]
    bench.format_frameworks(report)
    bench.format_frameworks_markdown(report)


@pytest.mark.parametrize("name", list(SPECS))
def test_framework_twins_agree(name):
    """The frameworks' own losses the section times compute fastloss's loss and gradient."""
    rng = np.random.default_rng(0)
    x, t = bench.make_problem(name, (32, 10), np.float32, rng)
    want = getattr(fastloss, name + "_and_grad")(x, t)
    steps = bench._peers(name, x, t)  # the main table's (test_peer's) steps: torch, fl.torch, jax (optax, fl.jax)
    if bench._importable("optax") and "optax" not in steps:
        steps.update(bench._jax_steps(name, x, t, {"optax": bench._optax_loss(name)}, fl=False))
    if not steps:
        pytest.skip("no torch or jax")
    for label, step in steps.items():
        loss, grad = step()
        loss = float(loss.detach() if hasattr(loss, "detach") else loss)
        np.testing.assert_allclose(loss, want[0], rtol=1e-4, atol=1e-7, err_msg=label)
        np.testing.assert_allclose(np.asarray(grad), want[1], rtol=1e-3, atol=1e-6, err_msg=label)


def test_prepared_arguments_untimed():
    """A Prepared candidate: fresh arguments before every call (a donated buffer is used up)."""
    made, used = [], []
    step = bench.Prepared(lambda: (made.append(len(made)) or len(made),), lambda k: used.append(k))
    bench.time_interleaved({"prepared": step, "plain": lambda: None}, rounds=2, min_seconds=1e-4)
    assert made and used == list(range(1, len(made) + 1))


# ---- progress on stderr, and no peer log noise -----------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _timed_with_progress(monkeypatch, stream):
    """Two workloads through time_interleaved with a Progress on ``stream``; what it wrote."""
    plan = [("a 32x10", 0.01, 2, (32, 10), 2), ("b 32x10", 0.01, 2, (32, 10), 2)]
    progress = bench.Progress(plan, stream)
    monkeypatch.setattr(bench, "_PROGRESS", progress)
    progress.begin("fastloss bench: " + bench._plan_header(plan, 1))
    for what in ("a 32x10", "b 32x10"):
        bench.time_interleaved({"x": lambda: None, "y": lambda: None}, rounds=2, min_seconds=1e-4, what=what)
    progress.finish()
    return stream.getvalue()


def test_progress_piped(monkeypatch):
    """Not a terminal: plain lines, the plan and its estimate first, one line per workload."""
    lines = _timed_with_progress(monkeypatch, io.StringIO()).splitlines()
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)
    assert lines[0].startswith("fastloss bench: timing 2 workloads (4 candidate rows), 32x10, 1 threads, 2 rounds")
    assert "; estimated " in lines[0]
    assert lines[1].startswith("[1/2] a 32x10 (2 x 2 rounds);") and "left" in lines[1]
    assert lines[2].startswith("[2/2] b 32x10") and lines[3].startswith("done: 2 workloads in ")
    assert len(lines) == 4


def test_progress_terminal(monkeypatch):
    """A terminal: one line rewritten with \\r (bar, k/n, elapsed, time left, what), then a plain end."""
    text = _timed_with_progress(monkeypatch, _Terminal())
    updates = text.split("\r")
    assert len(updates) > 4
    assert any("] 1/2 " in u and "left: a 32x10 (round 2/2)" in u for u in updates)
    assert any("] 2/2 " in u and "b 32x10" in u for u in updates)
    assert "estimated" in text.splitlines()[0] and updates[-1].strip().startswith("done: 2 workloads")


def test_plan_covers_the_run(monkeypatch):
    """plan_report lists what time_interleaved times, in order, with positive estimates."""
    monkeypatch.setattr(bench, "QUICK", TINY)
    seen = []
    monkeypatch.setattr(bench, "_PROGRESS", bench.Progress([], io.StringIO()))
    monkeypatch.setattr(bench.Progress, "start", lambda self, what, *a: seen.append(what) or setattr(self, "what", what))
    monkeypatch.setattr(bench.Progress, "round", lambda *a: None)
    monkeypatch.setattr(bench.Progress, "done", lambda self: None)
    bench.run_frameworks(True, ["mse", "softmax_xent"], rounds=1, min_seconds=1e-4)
    plan = bench.plan_report(frameworks=True, quick=True, losses=["mse", "softmax_xent"], rounds=1)
    assert [p[0] for p in plan] == seen and all(p[1] > 0 for p in plan)


_CLI = """
import sys
from fastloss import bench
bench.QUICK = {tiny!r}
bench.main(["--quick", "--rounds", "1", "--loss", "mse"])
# what alarmed in the full report: XLA constant-folds optax's gradient at 1000000x10 (seconds)
import numpy as np
x, t = bench.make_problem("softmax_xent", (1_000_000, 10), np.float32, np.random.default_rng())
bench._jax_steps("softmax_xent", x, t, {{"optax": bench._optax_loss("softmax_xent")}}, fl=False)["optax"]()
"""


def test_cli_progress_and_no_peer_noise():
    """python -m fastloss.bench piped, with jax: the report on stdout, plain progress lines on
    stderr, and none of XLA's slow_operation_alarm (what the first full report showed)."""
    pytest.importorskip("optax")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TORCH_CPP_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", _CLI.format(tiny=TINY)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    for noise in ("slow_operation_alarm", "Constant folding", "Warning"):
        assert noise not in out and noise not in err, err
    assert out.startswith("fastloss bench: ") and "mse" in out
    lines = err.splitlines()
    assert "\r" not in err and "estimated" in lines[0] and lines[1].startswith("[1/1] mse 16x40")
    assert lines[-1].startswith("done: 1 workloads in ")
