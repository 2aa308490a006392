"""Cython callers: a tiny extension cimports fastloss's nogil kernels and calls them in its own
prange; its results must match fastloss's."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastloss

pytest.importorskip("Cython")

USER_PYX = textwrap.dedent('''
    # cython: language_level=3, boundscheck=False, wraparound=False
    from cython.parallel cimport prange
    from fastloss.formulas cimport huber_item
    from fastloss.rows cimport softmax_xent_row

    def xent_rows(const double[:, ::1] x, const long long[::1] y, double eps, double[:, ::1] grad):
        cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
        cdef double total = 0.0
        for i in prange(n, nogil=True, schedule="static"):
            total += softmax_xent_row(&x[i, 0], c, y[i], eps, 0.0, &grad[i, 0])
        return total

    def huber_sum(const double[::1] d, double delta, double[::1] grad):
        cdef Py_ssize_t i
        cdef double total = 0.0
        for i in prange(d.shape[0], nogil=True, schedule="static"):
            total += huber_item(d[i], delta, &grad[i])
        return total
''')

SETUP = textwrap.dedent('''
    import sys
    from setuptools import setup, Extension
    from Cython.Build import cythonize
    import fastloss
    flags = [] if sys.platform == "win32" else ["-fopenmp"]
    setup(ext_modules=cythonize([Extension("user_ext", ["user_ext.pyx"], include_dirs=[fastloss.get_include()],
                                           extra_compile_args=flags, extra_link_args=flags)],
                                include_path=[fastloss.get_include()]),
          script_args=["build_ext", "--inplace", "-q"])
''')


@pytest.fixture(scope="module")
def user_ext(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_ext")
    (folder / "user_ext.pyx").write_text(USER_PYX)
    (folder / "setup.py").write_text(SETUP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([fastloss.get_include(), os.environ.get("PYTHONPATH", "")])}
    build = subprocess.run([sys.executable, "setup.py"], cwd=folder, capture_output=True, text=True, env=env)
    if build.returncode:
        pytest.fail(f"building a user extension that cimports fastloss failed:\n{build.stderr[-3000:]}")
    sys.path.insert(0, str(folder))
    try:
        import user_ext
        yield user_ext
    finally:
        sys.path.remove(str(folder))


def test_get_include_holds_the_pxd_files_and_the_formulas_header():
    for name in ("formulas.pxd", "rows.pxd", os.path.join("include", "fl_formulas.h")):
        assert os.path.exists(os.path.join(fastloss.get_include(), "fastloss", name))


@pytest.mark.parametrize("eps", (0.0, 0.1))
def test_user_prange_over_softmax_xent_row_matches_fastloss(user_ext, eps):
    rng = np.random.default_rng()
    x = rng.standard_normal((64, 33)) * 3
    y = rng.integers(0, 33, 64)
    grad = np.empty_like(x)
    total = user_ext.xent_rows(x, y, eps, grad)
    loss, expected = fastloss.softmax_xent_and_grad(x, y, reduction="sum", label_smoothing=eps)
    assert total == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_user_prange_over_huber_item_matches_fastloss(user_ext):
    rng = np.random.default_rng()
    d = rng.standard_normal(1000) * 2
    grad = np.empty_like(d)
    total = user_ext.huber_sum(d, 0.7, grad)
    loss, expected = fastloss.huber_and_grad(d, np.zeros_like(d), reduction="sum", delta=0.7)
    assert total == pytest.approx(loss, rel=1e-12)
    np.testing.assert_array_equal(grad, expected)
