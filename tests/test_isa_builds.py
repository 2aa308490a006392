"""Every ISA build of the Cython kernels (baseline x86-64, AVX2, AVX-512) against the reference:
the machine running the tests picks only one of them by itself, so each is forced here in a
fresh process with FASTLOSS_CYTHON_ISA."""

import os
import subprocess
import sys

import pytest

from fastloss._dispatch import available

CHECK = r"""
import numpy as np, sys
sys.path.insert(0, {tests!r})
from cases import OPTION_CASES, TOL, call, make_inputs, rel_err
from fastloss import reference
from fastloss.backends import cython
rng = np.random.default_rng()
for name, cases in OPTION_CASES.items():
    for case in cases:
        for dtype in (np.float32, np.float64):
            for shape in ((9, 7), (37, 10), (70, 531)):  # 9 rows: never all ignored; 37: lane tiles
                x, t, opts = make_inputs(name, case, dtype, rng, shape)
                loss, grad = call(name, "loss_and_grad", x, t, backend="cython", **opts)
                tol = TOL[dtype] * 10
                assert rel_err(loss, reference.loss(name, x, t, **opts)) <= tol, (name, case, dtype, shape)
                assert rel_err(grad, reference.grad(name, x, t, **opts)) <= tol, (name, case, dtype, shape)
print(cython.BUILD_INFO["module"])
"""


@pytest.mark.parametrize("isa", ("baseline", "avx2", "avx512"))
def test_each_isa_build_matches_reference(isa):
    if not available("cython"):
        pytest.skip("cython backend unavailable")
    env = {**os.environ, "FASTLOSS_CYTHON_ISA": isa}
    code = CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if run.returncode and "ImportError" in run.stderr and isa != "baseline":
        pytest.skip(f"{isa} build not usable here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == ("fastloss._kernels" if isa == "baseline" else f"fastloss._kernels_{isa}")
