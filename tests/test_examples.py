"""The examples in ``examples/`` run, at small sizes, and print what they promise.

Each runs in a subprocess with the interpreter running the tests, from a temporary folder (so
that the installed fastloss is the one imported, and nothing is written into the source tree).
A test is skipped where its example's optional peer is not installed."""

import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"no examples folder at {EXAMPLES}")


def needs(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def run_example(script, *args, cwd):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} exited with {result.returncode}:\n{output[-4000:]}"
    return result.stdout


def floats(pattern, text):
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return [float(g) for g in match.groups()]


def test_numpy_mlp_digits(tmp_path):
    needs("sklearn")
    out = run_example("numpy_mlp_digits.py", "--epochs", 8, "--hidden", 32, "--batch-size", 32, cwd=tmp_path)
    number = r"([-+0-9.e]+)"
    (np_first, np_last, np_acc), (fl_first, fl_last, fl_acc) = (
        floats(rf"\b{name}: train loss {number} -> {number}, test accuracy {number}", out)
        for name in ("numpy", "fastloss"))
    assert np_first == pytest.approx(fl_first, rel=1e-4), out  # the same weights and batches
    assert fl_last < 0.6 * fl_first, out  # it learns
    assert abs(np_acc - fl_acc) <= 0.01, out  # the same training: the same accuracy
    assert min(np_acc, fl_acc) > 0.8, out
    assert re.search(r"fastloss vs numpy: [0-9.]+x per epoch, [0-9.]+x in the loss", out), out


def test_torch_char_lm(tmp_path):
    needs("torch")
    out = run_example("torch_char_lm.py", "--steps", 30, "--hidden", 32, "--embed", 16, "--batch-size", 8,
                      "--seq-len", 32, cwd=tmp_path)
    number = r"([-+0-9.e]+)"
    reference, unfused0, fused0 = floats(rf"step 0 loss: F.cross_entropy {number}, unfused {number}, "
                                         rf"fused {number}", out)
    assert unfused0 == pytest.approx(reference, rel=1e-5), out
    assert fused0 == pytest.approx(unfused0, rel=1e-5), out
    ends = {}
    for name in ("unfused", "fused"):
        first, last, ms = floats(rf"\b{name}: loss {number} -> {number} .*; {number} ms/step", out)
        assert first == pytest.approx(fused0, abs=5e-5), out
        assert last < first - 0.3, out  # the loss came down
        assert ms > 0
        ends[name] = last
    assert ends["fused"] == pytest.approx(ends["unfused"], rel=0.02), out  # the same training
    assert "sample (fused model): 'It was the " in out, out


def test_jax_train_step(tmp_path):
    needs("jax")
    out = run_example("jax_train_step.py", "--steps", 20, "--batch-size", 64, "--hidden", 32, "--classes", 10,
                      cwd=tmp_path)
    number = r"([-+0-9.e]+)"
    ours, ref, rel = floats(rf"initial loss: fastloss.jax {number}, \S+ {number}, relative difference {number}", out)
    assert ours == pytest.approx(ref, rel=1e-5) and rel < 1e-5, out
    if importlib.util.find_spec("optax") is not None:
        assert ", optax " in out, out
    for name in ("fastloss", r"(?:optax|jax\.nn\.log_softmax)"):
        first, last = floats(rf"\b{name}: loss {number} -> {number};", out)
        assert first == pytest.approx(ours, rel=1e-5), out
        assert last < first, out


def test_cython_extension(tmp_path):
    needs("Cython", "setuptools")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"needs a C compiler ({compiler})")
    out = run_example(Path("cython_extension") / "run.py", "--rows", 256, "--classes", 10,
                      "--build-dir", tmp_path / "build", cwd=tmp_path)
    assert out.count(": match") == 2 and "all results match fastloss" in out, out
    built = [p.name for p in (EXAMPLES / "cython_extension").iterdir() if p.suffix in (".c", ".so", ".pyd")]
    assert not built, f"the build wrote into the source tree: {built}"
