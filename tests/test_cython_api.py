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
    from fastloss.formulas cimport (huber_item, smooth_l1_item, log_cosh_item, msle_item, poisson_nll_item,
                                    sigmoid_focal_item, cosine_similarity_loss)
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

    ITEMS = ("smooth_l1", "log_cosh", "msle", "poisson_nll", "sigmoid_focal")

    def item_sum(str name, const double[::1] x, const double[::1] t, double a, double b, bint flag1,
                 bint flag2, double[::1] grad):
        """The new elementwise items (a, b, flags: the loss's options in its spec order)."""
        cdef Py_ssize_t i
        cdef double total = 0.0
        cdef int kind = ITEMS.index(name)
        for i in prange(x.shape[0], nogil=True, schedule="static"):
            if kind == 0:
                total += smooth_l1_item(x[i] - t[i], a, &grad[i])
            elif kind == 1:
                total += log_cosh_item(x[i] - t[i], &grad[i])
            elif kind == 2:
                total += msle_item(x[i], t[i], &grad[i])
            elif kind == 3:
                total += poisson_nll_item(x[i], t[i], flag1, flag2, a, &grad[i])
            else:
                total += sigmoid_focal_item(x[i], t[i], a, b, &grad[i])
        return total

    cdef inline double cosine_row(const double* x, const double* t, Py_ssize_t c, double* g) noexcept nogil:
        cdef Py_ssize_t j
        cdef double sx = 0.0, st = 0.0, sxt = 0.0, nn, k, loss
        for j in range(c):
            sx += x[j] * x[j]
            st += t[j] * t[j]
            sxt += x[j] * t[j]
        loss = cosine_similarity_loss(sx, st, sxt, &nn, &k)
        for j in range(c):
            g[j] = -t[j] / nn - k * x[j]
        return loss

    def cosine_rows(const double[:, ::1] x, const double[:, ::1] t, double[:, ::1] grad):
        cdef Py_ssize_t i
        cdef double total = 0.0
        for i in prange(x.shape[0], nogil=True, schedule="static"):
            total += cosine_row(&x[i, 0], &t[i, 0], x.shape[1], &grad[i, 0])
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


# (loss, options, the item_sum arguments a, b, flag1, flag2 they give)
NEW_ITEMS = [
    ("smooth_l1", {"beta": 0.6}, (0.6, 0.0, False, False)),
    ("smooth_l1", {"beta": 0.0}, (0.0, 0.0, False, False)),
    ("log_cosh", {}, (0.0, 0.0, False, False)),
    ("msle", {}, (0.0, 0.0, False, False)),
    ("poisson_nll", {}, (1e-8, 0.0, True, False)),
    ("poisson_nll", {"log_input": False, "full": True, "eps": 1e-3}, (1e-3, 0.0, False, True)),
    ("sigmoid_focal", {}, (0.25, 2.0, False, False)),
    ("sigmoid_focal", {"alpha": -1.0, "gamma": 1.5}, (-1.0, 1.5, False, False)),
]


@pytest.mark.parametrize("name,options,args", NEW_ITEMS, ids=[f"{n}-{o}" for n, o, _ in NEW_ITEMS])
def test_user_prange_over_new_item_formulas_matches_fastloss(user_ext, name, options, args):
    rng = np.random.default_rng()
    x = rng.standard_normal(1000) * 2
    t = rng.standard_normal(1000) * 2
    if name == "msle":
        x[::7] = -0.5  # below the clamp: no gradient
    elif name == "poisson_nll":
        t = rng.poisson(2.0, 1000).astype(np.float64)
        if not options.get("log_input", True):
            x = rng.uniform(0.1, 4.0, 1000)
    elif name == "sigmoid_focal":
        t = rng.uniform(0, 1, 1000)
    grad = np.empty_like(x)
    total = user_ext.item_sum(name, x, t, *args, grad)
    loss, expected = getattr(fastloss, name + "_and_grad")(x, t, reduction="sum", **options)
    assert total == pytest.approx(loss, rel=1e-12)
    if name == "smooth_l1":  # plain arithmetic: the same bits (exp/log polynomials may use FMA in fastloss's build)
        np.testing.assert_array_equal(grad, expected)
    else:
        np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_user_prange_over_cosine_similarity_rows_matches_fastloss(user_ext):
    rng = np.random.default_rng()
    x = rng.standard_normal((64, 33)) * 3
    t = rng.standard_normal((64, 33))
    x[3] = 0.0  # a norm under the clamp: no gradient through it
    grad = np.empty_like(x)
    total = user_ext.cosine_rows(x, t, grad)
    loss, expected = fastloss.cosine_similarity_and_grad(x, t, reduction="sum")
    assert total == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)
