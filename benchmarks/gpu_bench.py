"""GPU benchmark: every loss on the ``cuda`` backend beside PyTorch's own CUDA loss (forward +
backward) and the device-to-device copy bandwidth, with CUDA events and medians.

    python benchmarks/gpu_bench.py [--quick] [--json FILE]

Needs an NVIDIA GPU with numba-cuda and PyTorch (CUDA build). Inputs are PyTorch CUDA tensors,
so fastloss runs on PyTorch's current stream with no host synchronisation inside the timed
region; the gradient goes into a preallocated ``out``. Bytes moved = inputs read once + gradient
written once; "% copy" compares with a device-to-device ``copy_`` of the same size (read + write).
"""

import argparse
import json
import platform
import sys
import time

import numpy as np

SHAPES = {
    "softmax_xent": [(8192, 32000), (4096, 128256), (65536, 1000)],
    "multiclass_hinge": [(65536, 1000)],
    "cosine_similarity": [(65536, 1000)],
    "elements": [(8192, 8192)],
}
QUICK = {"softmax_xent": [(1024, 32000)], "multiclass_hinge": [(4096, 1000)], "cosine_similarity": [(4096, 1000)],
         "elements": [(2048, 2048)]}


def torch_loss(name):
    """PyTorch's CUDA twin of ``name`` (mean reduction, fastloss's default options), or None."""
    import torch
    import torch.nn.functional as F
    from fastloss.bench import _torch_sigmoid_focal
    return {
        "softmax_xent": F.cross_entropy, "multiclass_hinge": F.multi_margin_loss,
        "sigmoid_bce": F.binary_cross_entropy_with_logits, "huber": F.huber_loss, "mse": F.mse_loss,
        "mae": F.l1_loss, "kl_div": lambda a, b: F.kl_div(a, b, reduction="mean"),
        "smooth_l1": F.smooth_l1_loss, "poisson_nll": F.poisson_nll_loss, "sigmoid_focal": _torch_sigmoid_focal,
        "log_cosh": lambda a, b: torch.log(torch.cosh(a - b)).mean(),
        "msle": lambda a, b: (torch.log1p(a.clamp(min=1e-7)) - torch.log1p(b.clamp(min=1e-7))).square().mean(),
        "cosine_similarity": lambda a, b: -F.cosine_similarity(a, b, dim=-1).mean(),
    }.get(name)


def timed(fn, rounds, torch):
    """Median milliseconds of fn() between CUDA events (after a warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main(argv=None):
    import torch

    import fastloss
    from fastloss._specs import ROWS, SPECS, VALUES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else SHAPES
    dev = torch.device("cuda")
    rows = []
    for name, spec in SPECS.items():
        for shape in sizes.get(name, sizes["elements"]):
            x = torch.randn(shape, device=dev)
            if spec.layout == ROWS and spec.targets != VALUES:
                t = torch.randint(0, shape[-1], shape[:-1], device=dev)
            elif name == "hinge":
                t = torch.randint(0, 2, shape, device=dev).float() * 2 - 1
            elif name in ("cosine_similarity", "smooth_l1", "log_cosh"):
                t = torch.randn(shape, device=dev)
            elif name == "poisson_nll":  # counts; the input is their log-rate
                t = torch.poisson(torch.full(shape, 2.0, device=dev))
            elif name == "sigmoid_focal":  # detection's 0/1 labels
                t = (torch.rand(shape, device=dev) < 0.1).float()
            elif name == "msle":  # non-negative predictions and targets
                x = x.abs()
                t = torch.rand(shape, device=dev) * 4
            else:
                t = torch.rand(shape, device=dev)
            nbytes = 2 * x.numel() * x.element_size() + t.numel() * t.element_size()
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
            dst = torch.empty_like(src)
            copy_ms = timed(lambda: dst.copy_(src), args.rounds, torch)
            out = torch.empty_like(x)
            fused = getattr(fastloss, name + "_and_grad")
            result = {"fastloss": timed(lambda: fused(x, t, backend="cuda", out=out), args.rounds, torch)}
            f = torch_loss(name)
            if f is not None:
                def torch_step():
                    a = x.detach().requires_grad_()
                    f(a, t).backward()
                result["torch"] = timed(torch_step, args.rounds, torch)
            for label, ms in result.items():
                row = dict(loss=name, shape=list(shape), backend=label, median_ms=ms,
                           gbps=nbytes / ms / 1e6, pct_copy=100 * copy_ms / ms)
                if "torch" in result:
                    row["x_torch"] = result["torch"] / ms
                rows.append(row)
                print(f"{name:17s} {'x'.join(map(str, shape)):>12s} {label:9s} {ms:9.3f} ms "
                      f"{row['gbps']:7.1f} GB/s {row['pct_copy']:5.0f}% copy "
                      f"{row.get('x_torch', float('nan')):5.2f}x torch", flush=True)
    report = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"),
                  python=platform.python_version(), torch=torch.__version__,
                  numba=__import__("numba").__version__, results=rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
