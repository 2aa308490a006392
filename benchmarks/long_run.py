"""Long-run soak: one million small calls and a thousand large ones, printing resident memory.

    python benchmarks/long_run.py [--backend cython] [--small 1000000] [--large 1000]

Resident memory must stay flat after warm-up (the short version is tests/test_memory.py).
"""

import argparse
import time

import numpy as np

import fastloss


def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng()
    x, y = rng.standard_normal((32, 10)).astype(np.float32), rng.integers(0, 10, 32)
    big, big_y = rng.standard_normal((4096, 4096)).astype(np.float32), rng.integers(0, 4096, 4096)
    out = np.empty_like(x)
    for name in fastloss.LOSSES:  # every loss once, so every kernel is compiled before measuring
        fn = getattr(fastloss, name + "_and_grad")
        if name in ("softmax_xent", "multiclass_hinge"):
            fn(x, y, backend=args.backend)
        else:
            fn(x, np.clip(x, 0, 1) if name != "hinge" else np.sign(x), backend=args.backend)
    start, t0 = resident_mib(), time.perf_counter()
    print(f"start: {start:.1f} MiB")
    for i in range(1, args.small + 1):
        fastloss.softmax_xent_and_grad(x, y, backend=args.backend, out=out)
        if i % (args.small // 10 or 1) == 0:
            print(f"{i:>9d} small calls: {resident_mib():.1f} MiB, {(time.perf_counter() - t0) / i * 1e6:.2f} us/call")
    for i in range(1, args.large + 1):
        fastloss.softmax_xent_and_grad(big, big_y, backend=args.backend)
        if i % (args.large // 10 or 1) == 0:
            print(f"{i:>9d} large calls: {resident_mib():.1f} MiB")
    print(f"growth: {resident_mib() - start:+.1f} MiB")


if __name__ == "__main__":
    main()
