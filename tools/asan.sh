#!/usr/bin/env bash
# Build the Cython kernels with AddressSanitizer (+ UBSan) in a scratch clone and run the
# cython-backend tests under it. Usage: bash tools/asan.sh [extra pytest args]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${TMPDIR:-/tmp}/fastloss-asan"
rm -rf "$work" && git clone -q "$src" "$work" && cd "$work"
export CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
export LDFLAGS="-fsanitize=address,undefined"
python setup.py -q build_ext --inplace
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" PYTHONPATH="$work/src"
python -m pytest -q -p no:cacheprovider tests/test_losses.py tests/test_errors.py tests/test_extremes.py \
    tests/test_properties.py tests/test_dispatch_threads.py tests/test_small_call.py -k "cython" "$@"
