"""Bench of issue #19 on the CPU: fused linear cross-entropy and vocabulary-parallel cross-entropy.

    python benchmarks/linear_bench.py                   # N=8192, H=1024, V=32000 and 128256, 3 rounds
    python benchmarks/linear_bench.py --quick           # N=2048, H=256: a minute
    python benchmarks/linear_bench.py --json out.json   # and every sample, as JSON

Linear: ``fastloss.torch.linear_cross_entropy`` against ``F.linear`` + ``F.cross_entropy`` (the
unfused path, which is also ``F.linear_cross_entropy(options=None)``) and PyTorch's chunked
``F.linear_cross_entropy(..., options=nn.LinearCrossEntropyOptions())`` where this torch has it.
Vocab-parallel: ``vocab_parallel_cross_entropy`` over 2 gloo processes (each with V/2 classes
and half the cores) against the same in one process, and ``F.cross_entropy`` on the whole logits.

Every sample is one forward + backward in a fresh process, after a warm-up call on 64 rows: its
wall time, and its peak resident memory above what the process held with its inputs (VmHWM
after a reset through /proc/self/clear_refs: getrusage's ru_maxrss would count the parent's
memory, which Linux carries over fork + exec). Rounds interleave the methods; the table gives
medians and minima (on a shared machine the minimum is the steadier estimate of the cost).
Targets (issue #19): peak memory at V=128256 at most 1/4 of the unfused path's, time no worse
than PyTorch's ``F.linear_cross_entropy``.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

LINEAR_METHODS = ("fastloss", "unfused", "torch")
VP_METHODS = ("vp-2proc", "vp-1proc", "F.cross_entropy")


# ---- one sample, in its own process ----------------------------------------------------------

def _status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _measured(run):
    """(seconds, peak extra bytes) of ``run()``."""
    before = _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0, _status("VmHWM:") - before


def linear_sample(method, n, hidden, vocab):
    import torch
    import torch.nn.functional as F

    from fastloss._torch_linear import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g).requires_grad_()
    W = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=g)
    if method == "fastloss":
        loss_fn = linear_cross_entropy
    elif method == "unfused":
        loss_fn = lambda h, W, y: F.cross_entropy(F.linear(h, W), y)  # noqa: E731
    else:
        options = torch.nn.LinearCrossEntropyOptions()
        loss_fn = lambda h, W, y: F.linear_cross_entropy(h, W, y, options=options)  # noqa: E731
    loss_fn(h[:64], W, y[:64]).backward()
    h.grad = W.grad = None
    out = {}

    def run():
        loss = loss_fn(h, W, y)
        loss.backward()
        out["loss"] = loss.item()

    seconds, peak = _measured(run)
    return {"seconds": seconds, "peak_bytes": peak, "loss": out["loss"]}


def _vp_rank(rank, world, port, n, vocab, threads, result_file):
    import torch
    import torch.distributed as dist

    from fastloss._torch_distributed import vocab_parallel_cross_entropy

    torch.set_num_threads(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, vocab, (n,), generator=g)
    size = vocab // world
    logits = (torch.randn(n, size, generator=torch.Generator().manual_seed(1 + rank)) * 3).requires_grad_()
    vocab_parallel_cross_entropy(logits[:64].detach().requires_grad_(), y[:64]).backward()
    dist.barrier()
    out = {}

    def run():
        loss = vocab_parallel_cross_entropy(logits, y)
        loss.backward()
        out["loss"] = loss.item()

    seconds, peak = _measured(run)
    worst = torch.tensor([seconds, float(peak)], dtype=torch.float64)
    dist.all_reduce(worst, dist.ReduceOp.MAX)  # the slowest rank's time, the largest rank's peak
    if rank == 0:
        with open(result_file, "w") as f:
            json.dump({"seconds": worst[0].item(), "peak_bytes": int(worst[1]), "loss": out["loss"]}, f)
    dist.destroy_process_group()


def vp_sample(method, n, vocab):
    import socket
    import tempfile

    import torch

    cores = len(os.sched_getaffinity(0))
    if method == "F.cross_entropy":
        import torch.nn.functional as F

        logits = (torch.randn(n, vocab, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
        y = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))
        F.cross_entropy(logits[:64].detach().requires_grad_(), y[:64]).backward()
        out = {}

        def run():
            loss = F.cross_entropy(logits, y)
            loss.backward()
            out["loss"] = loss.item()

        seconds, peak = _measured(run)
        return {"seconds": seconds, "peak_bytes": peak, "loss": out["loss"]}
    import torch.multiprocessing as mp

    world = 2 if method == "vp-2proc" else 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        mp.start_processes(_vp_rank, args=(world, port, n, vocab, max(1, cores // world), path), nprocs=world,
                           start_method="spawn")
        with open(path) as f:
            return json.load(f)


# ---- the driver -------------------------------------------------------------------------------

def sample(kind, method, *shape):
    cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, method, *map(str, shape)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"rc {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, method, *shape = args.one
        shape = [int(s) for s in shape]
        print(json.dumps(linear_sample(method, *shape) if kind == "linear" else vp_sample(method, *shape)))
        return

    import torch

    n, hidden, vocabs = (2048, 256, (32000, 128256)) if args.quick else (8192, 1024, (32000, 128256))
    linear_methods = [m for m in LINEAR_METHODS
                      if m != "torch" or hasattr(torch.nn.functional, "linear_cross_entropy")]
    samples = {}
    for r in range(args.rounds):  # interleaved: each round runs every method once
        for vocab in vocabs:
            for method in linear_methods:
                samples.setdefault(("linear", method, vocab), []).append(sample("linear", method, n, hidden, vocab))
                print(f"round {r}: linear {method} V={vocab}: {samples['linear', method, vocab][-1]}", flush=True)
        for method in VP_METHODS:
            samples.setdefault(("vp", method, vocabs[0]), []).append(sample("vp", method, n, vocabs[0]))
            print(f"round {r}: {method} V={vocabs[0]}: {samples['vp', method, vocabs[0]][-1]}", flush=True)

    def median(key, field, of=statistics.median):
        values = [s[field] for s in samples[key] if field in s]
        return of(values) if values else float("nan")

    print(f"\n{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"torch {torch.__version__}; N={n}, H={hidden}, float32, forward + backward, {args.rounds} rounds\n")
    print("| V | method | time (median, min) | peak extra memory | time vs torch F.linear_cross_entropy "
          "(median, min) | memory vs unfused |")
    print("|---|---|---|---|---|---|")
    for vocab in vocabs:
        for method in linear_methods:
            key, ref = ("linear", method, vocab), ("linear", "torch", vocab)
            t, t_min, m = median(key, "seconds"), median(key, "seconds", min), median(key, "peak_bytes")
            vs_t = vs_min = float("nan")
            if "torch" in linear_methods:
                vs_t, vs_min = t / median(ref, "seconds"), t_min / median(ref, "seconds", min)
            vs_m = m / median(("linear", "unfused", vocab), "peak_bytes")
            print(f"| {vocab} | {method} | {t:.2f} s, {t_min:.2f} s | {m / 2**30:.2f} GiB | {vs_t:.2f}x, "
                  f"{vs_min:.2f}x | {vs_m:.3f} |")
    print(f"\nvocab-parallel, N={n}, V={vocabs[0]} (logits given; forward + backward)\n")
    print("| method | time (median, min) | peak extra memory (largest rank) |")
    print("|---|---|---|")
    for method in VP_METHODS:
        key = ("vp", method, vocabs[0])
        print(f"| {method} | {median(key, 'seconds'):.3f} s, {median(key, 'seconds', min):.3f} s | "
              f"{median(key, 'peak_bytes') / 2**30:.2f} GiB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "hidden": hidden, "samples": {"|".join(map(str, k)): v for k, v in samples.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
