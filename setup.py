"""Build of fastloss's compiled kernels (the metadata lives in pyproject.toml).

One Cython source (kernels/_kernels.pyx and the .pxi files it includes) is compiled into:

* ``fastloss._kernels``       -- the baseline build: runs on any CPU of the platform;
* ``fastloss._kernels_avx2``  -- x86-64 only, ``-mavx2 -mfma -mf16c`` (or /arch:AVX2), where the
  compiler takes those flags (F16C: float16 conversions in hardware);
* ``fastloss._kernels_avx512`` -- x86-64 only, AVX-512 F/DQ/BW/VL (and F16C) with 512-bit vectors
  (gcc/clang);
``fastloss.backends.cython`` loads the best of them that the CPU runs (the exp-bound softmax
passes are ~1.5x faster with 16 float lanes than with 8).

OpenMP is detected the way astropy's extension-helpers does it: compile and link a small test
program with the compiler's OpenMP flag; if that fails, the kernels are built serial and a
warning says so (``fastloss.backends.cython.OPENMP`` then reads False).

Environment switches: FASTLOSS_NO_OPENMP=1 (build serial), FASTLOSS_NO_AVX2=1 (baseline only),
FASTLOSS_NO_AVX512=1 (no AVX-512 variant),
FASTLOSS_DEBUG=1 (-O0 -g, Cython bounds checks on).
"""

import os
import platform
import shlex
import shutil
import sys
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = "kernels"
# the headers cimport users compile against too ship in the package, in src/fastloss/include; they
# are included as "fastloss/include/fl_*.h" from "src" (from fastloss.get_include() once installed)
SOURCES_DEPENDS = (
    [os.path.join(KERNELS, name) for name in ("fl_stream.h", "fl_rows.h", "fl_lanes.h", "fl_elementwise.h", "fl_half.h",
                                               "_common.pxi", "_elementwise.pxi", "softmax_xent.pxi",
                                               "multiclass_hinge.pxi", "cosine_similarity.pxi", "fast_call.pxi",
                                               "xla_ffi.pxi", "fl_xla_ffi.h",
                                               "_kernels.pyx")]
    + [os.path.join("src", "fastloss", "include", name) for name in ("fl_platform.h", "fl_vecmath.h", "fl_formulas.h")]
    + [os.path.join("src", "fastloss", "formulas.pxd")]
)

OPENMP_TEST = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n > 0 && omp_get_max_threads() > 0);
    return 0;
}
"""

AVX512_TEST = r"""
#include <immintrin.h>
int main(void) {
    __m512 a = _mm512_set1_ps(1.0f);
    a = _mm512_fmadd_ps(a, a, a);
    return (int)_mm512_reduce_add_ps(a) == 32 ? 0 : 1;
}
"""

AVX2_TEST = r"""
#include <immintrin.h>
int main(void) {
    __m256 a = _mm256_set1_ps(1.0f);
    a = _mm256_fmadd_ps(a, a, a);
    a = _mm256_cvtph_ps(_mm256_cvtps_ph(a, 0));
    return (int)_mm256_cvtss_f32(a) == 2 ? 0 : 1;
}
"""


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64", "x64")


def _try_compile(compiler, source, compile_args, link_args, run=False):
    """Whether `source` compiles and links (and, with run, runs) with these flags."""
    tmp = tempfile.mkdtemp(prefix="fastloss-check-")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        with open("check.c", "w") as f:
            f.write(source)
        objects = compiler.compile(["check.c"], extra_postargs=compile_args)
        # LDFLAGS as the extensions get them (a CFLAGS sanitizer needs its runtime at link time)
        compiler.link_executable(objects, "check", extra_postargs=link_args + shlex.split(os.environ.get("LDFLAGS", "")))
        if run:
            import subprocess

            exe = os.path.join(tmp, "check" + (".exe" if sys.platform == "win32" else ""))
            subprocess.run([exe], check=True, capture_output=True, timeout=60)
        return True
    except Exception:
        return False
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)


def _openmp_flags(compiler):
    """(compile_args, link_args) for OpenMP with this compiler, or None when it has none."""
    ctype = compiler.compiler_type
    if ctype == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, lflags in candidates:
        if _try_compile(compiler, OPENMP_TEST, cflags, lflags):
            return cflags, lflags
    return None


class BuildExt(build_ext):
    """build_ext that picks optimisation, OpenMP and ISA flags per compiler and drops the
    AVX2 variant where it cannot be built."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # the three ISA builds are independent: one compiler per core
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        debug = _env_flag("FASTLOSS_DEBUG")
        if ctype == "msvc":
            base = ["/O2", "/fp:precise"]
            isa_flags = {"avx2": ["/arch:AVX2"], "avx512": ["/arch:AVX512"]}
        else:
            # -O3 vectorises the lane loops; never -ffast-math (it breaks NaN/inf semantics).
            # -fno-math-errno / -fno-trapping-math change no result, they only free the vectoriser.
            # -ffp-contract=off: no implicit a*b+c -> fma (it changes results such as w*lse - w*x,
            # which must be exactly 0 where the reference's is); fl_vecmath.h asks for fma explicitly
            # in its polynomials (FL_FMA), where it only adds accuracy.
            # -g0: Python's own CFLAGS ask for debug info, which triples the wheel
            base = ["-O0", "-g"] if debug else ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math",
                                                "-ffp-contract=off"]
            isa_flags = {"avx2": ["-mavx2", "-mfma", "-mf16c"],
                         "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512dq", "-mavx512bw",
                                    "-mavx512vl", "-mprefer-vector-width=512"]}

        omp = None if _env_flag("FASTLOSS_NO_OPENMP") else _openmp_flags(self.compiler)
        if omp is None:
            why = "FASTLOSS_NO_OPENMP is set" if _env_flag("FASTLOSS_NO_OPENMP") else \
                "the compiler could not build an OpenMP test program"
            warnings.warn(f"fastloss: building the Cython kernels WITHOUT OpenMP ({why}); "
                          "they will run on one thread.", stacklevel=1)
            print(f"fastloss: OpenMP not available ({why}): serial build")
            omp_c, omp_l = [], []
            if ctype != "msvc" and _try_compile(self.compiler, "int main(void){return 0;}", ["-fopenmp-simd"], []):
                omp_c = ["-fopenmp-simd"]
        else:
            omp_c, omp_l = omp
            print(f"fastloss: OpenMP enabled ({' '.join(omp_c)})")

        want_avx2 = _is_x86_64() and not _env_flag("FASTLOSS_NO_AVX2")
        if want_avx2 and not _try_compile(self.compiler, AVX2_TEST, base + isa_flags["avx2"], []):
            print("fastloss: the compiler does not take AVX2/FMA/F16C flags: baseline build only")
            want_avx2 = False

        want_avx512 = want_avx2 and ctype != "msvc" and not _env_flag("FASTLOSS_NO_AVX512")
        if want_avx512 and not _try_compile(self.compiler, AVX512_TEST, base + isa_flags["avx512"], []):
            print("fastloss: the compiler does not take AVX-512 flags: no AVX-512 variant")
            want_avx512 = False

        kept = []
        for ext in self.extensions:
            variant = getattr(ext, "fastloss_isa", None)
            if variant == "avx2" and not want_avx2 or variant == "avx512" and not want_avx512:
                continue
            ext.extra_compile_args = base + omp_c + (isa_flags[variant] if variant else [])
            ext.extra_link_args = list(omp_l)
            kept.append(ext)
        self.extensions = kept
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    debug = _env_flag("FASTLOSS_DEBUG")
    import numpy

    # the fast call (kernels/fast_call.pxi) reads arrays through NumPy's C API
    common = dict(include_dirs=[KERNELS, "src", numpy.get_include()], depends=SOURCES_DEPENDS,
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    baseline = Extension("fastloss._kernels", [os.path.join(KERNELS, "_kernels.pyx")], **common)
    exts = [baseline]
    if _is_x86_64() and not _env_flag("FASTLOSS_NO_AVX2"):
        avx2 = Extension("fastloss._kernels_avx2", [os.path.join(KERNELS, "_kernels_avx2.pyx")], **common)
        avx2.fastloss_isa = "avx2"
        exts.append(avx2)
        if not _env_flag("FASTLOSS_NO_AVX512"):
            avx512 = Extension("fastloss._kernels_avx512", [os.path.join(KERNELS, "_kernels_avx512.pyx")], **common)
            avx512.fastloss_isa = "avx512"
            exts.append(avx512)
    directives = dict(
        language_level=3,
        boundscheck=debug,
        wraparound=False,
        cdivision=True,
        initializedcheck=debug,
        nonecheck=False,
        embedsignature=True,
    )
    out = cythonize(exts, compiler_directives=directives, include_path=["src", KERNELS],
                    build_dir=None, quiet=True)
    for ext, orig in zip(out, exts):  # cythonize returns new Extension objects
        if hasattr(orig, "fastloss_isa"):
            ext.fastloss_isa = orig.fastloss_isa
    return out


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
