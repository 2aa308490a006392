"""Session setup shared by every test module: Numba's CUDA simulator, where it is on
(``NUMBA_ENABLE_CUDASIM=1``), made faster and thread-safe for the ``cuda`` tests; with
``FASTLOSS_TEST_INSTALLED=1`` (tools/check.sh), a check that the package under test is the
installed wheel, not the source tree."""

import os
import sys
import threading
import traceback

import numpy as np
import pytest
from cases import BACKENDS, backend_or_skip

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def pytest_configure(config):
    if os.environ.get("FASTLOSS_TEST_INSTALLED", "0").strip() in ("", "0"):
        return
    import fastloss

    tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = os.path.abspath(fastloss.__file__)
    if where.startswith(tree + os.sep):
        raise pytest.UsageError(f"FASTLOSS_TEST_INSTALLED: fastloss was imported from the source tree ({where})")


def _thread_safe_shared_arrays():
    """The simulator runs each GPU thread as a Python thread, and its ``cuda.shared.array`` gives
    the threads of a block one array per call site by check-then-set (numba-cuda 0.30): two
    threads can each create their own, and a thread's writes to shared memory are then lost (a
    wrong sum now and then). Here the check-then-set holds a lock."""
    try:
        from numba.cuda.simulator import kernelapi
    except ImportError:  # no numba-cuda: no simulator to run
        return
    original, lock = kernelapi.FakeCUDAShared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory (one buffer), or the error
            return original(self, shape, dtype, alignment)
        site = traceback.extract_stack(sys._getframe(1), limit=1)[0][:2]  # the caller's file and line
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        with lock:
            if site not in self._allocations:
                self._allocations[site] = np.empty(shape, dtype)
            return self._allocations[site]

    kernelapi.FakeCUDAShared.array = array


@pytest.fixture(scope="session", autouse=True)
def _cuda_simulator():
    """Under the simulator: shared arrays made thread-safe, and a short GIL switch interval (each
    GPU thread busy-waits at barriers as a Python thread: ~5x faster). Restored after."""
    old = sys.getswitchinterval()
    if SIMULATOR:
        _thread_safe_shared_arrays()
        sys.setswitchinterval(5e-4)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend, cuda included (skipped where unavailable, failed where FASTLOSS_REQUIRE
    names it); a test that wants fewer parametrizes ``backend`` itself."""
    return backend_or_skip(request.param)


@pytest.fixture
def jax_x64():
    """JAX with jax_enable_x64 switched on for the test (float64 arrays stay float64)."""
    jax = pytest.importorskip("jax")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
