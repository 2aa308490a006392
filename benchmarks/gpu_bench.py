"""GPU benchmark of the ``cuda`` backend: every loss, forward + backward, beside PyTorch eager and,
where installed, Liger-Kernel's Triton cross-entropy, against the device-to-device copy bandwidth.

    python benchmarks/gpu_bench.py [--quick] [--rounds N] [--json FILE] [--markdown FILE]

Needs an NVIDIA GPU, numba-cuda and PyTorch (a CUDA build). Inputs are PyTorch CUDA tensors, so
fastloss runs on PyTorch's current stream with nothing synchronising inside the timed region.
fastloss: the fused ``*_and_grad`` call, the gradient into a preallocated ``out``; PyTorch: its
``torch.nn.functional`` twin (``fastloss.bench``'s), forward + ``backward()`` from a fresh leaf;
Liger: ``LigerCrossEntropyLoss`` forward + backward (softmax_xent only). Each round times every
candidate once (interleaved, between CUDA events); the table gives medians.

Bytes a fused call must move: the inputs read once and the gradient written once
(``2 x.nbytes + t.nbytes``); GB/s is those over the median, "% copy" the time of a
device-to-device copy of as many bytes (read + write) over ours, "x torch"/"x liger" their
median over ours (higher is better). Targets (issue 18), checked in the last column:
softmax_xent at 16384x32000 float32 and 4096x128256 bfloat16 at least 80 % of the copy
bandwidth, 2x PyTorch eager and Liger's speed; the elementwise losses at least 85 % of the copy
bandwidth. ``--quick`` runs smaller shapes (indicative only). ``--markdown FILE`` writes the
table for ``benchmarks/results/gpu_<gpu>.md``.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from typing import NamedTuple


class Case(NamedTuple):
    """One measured (loss, shape, dtype) and its targets (0: none)."""
    loss: str
    shape: tuple
    dtype: str  # a torch dtype name
    copy: float = 0.0  # fraction of the copy bandwidth
    torch: float = 0.0  # times PyTorch eager's speed
    liger: float = 0.0  # times Liger's speed


HEADLINE = dict(copy=0.80, torch=2.0, liger=1.0)
ELEMENTWISE = dict(copy=0.85)
SIZES = {  # scale -> (softmax_xent cases, other row losses' shape, elementwise shape)
    "full": ([((16384, 32000), "float32", HEADLINE), ((4096, 128256), "bfloat16", HEADLINE),
              ((65536, 1000), "float32", {})], (65536, 1000), (8192, 8192)),
    "quick": ([((2048, 32000), "float32", HEADLINE), ((512, 128256), "bfloat16", HEADLINE),
               ((8192, 1000), "float32", {})], (8192, 1000), (2048, 2048)),
    # a few elements, for the simulator test of this script (both sides of the warp/block switch)
    "tiny": ([((6, 33), "float32", HEADLINE), ((3, 1500), "float32", {})], (6, 33), (4, 5)),
}


def cases(scale="full"):
    """Every loss at the sizes of ``scale``, with its targets."""
    from fastloss._specs import ELEMENTS, SPECS

    xent, rows, elements = SIZES[scale]
    out = [Case("softmax_xent", shape, dtype, **targets) for shape, dtype, targets in xent]
    for name, spec in SPECS.items():
        if name != "softmax_xent":
            out.append(Case(name, elements, "float32", **ELEMENTWISE) if spec.layout == ELEMENTS
                       else Case(name, rows, "float32"))
    return out


def make_inputs(torch, case, device):
    """(x, t) of ``case`` as torch tensors: inputs each loss takes in training."""
    from fastloss._specs import ROWS, SPECS, VALUES

    name, shape = case.loss, case.shape
    x = torch.randn(shape, device=device)
    if SPECS[name].layout == ROWS and SPECS[name].targets != VALUES:
        t = torch.randint(0, shape[-1], shape[:-1], device=device)
    elif name == "hinge":
        t = torch.randint(0, 2, shape, device=device).float() * 2 - 1
    elif name in ("cosine_similarity", "smooth_l1", "log_cosh", "huber", "mse", "mae"):
        t = torch.randn(shape, device=device)
    elif name == "poisson_nll":  # counts; the input is their log-rate
        t = torch.poisson(torch.full(shape, 2.0, device=device))
    elif name == "sigmoid_focal":  # detection's 0/1 labels
        t = (torch.rand(shape, device=device) < 0.1).float()
    elif name == "msle":  # non-negative predictions and targets
        x = x.abs()
        t = torch.rand(shape, device=device) * 4
    elif name == "kl_div":  # log-probabilities and probabilities of rows
        x = torch.log_softmax(x, dim=-1)
        t = torch.softmax(torch.randn(shape, device=device), dim=-1)
    else:
        t = torch.rand(shape, device=device)
    return x.to(getattr(torch, case.dtype)), t


def _fastloss_array(a):
    """What fastloss takes: CUDA tensors as they are; CPU tensors (the simulator test) as NumPy."""
    return a if a.is_cuda else a.numpy()


def _timer(torch, device):
    """fn -> milliseconds of one call: between CUDA events on a GPU, the wall clock on the CPU."""
    if device == "cpu":
        def wall(fn):
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)
        return wall

    def events(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return events


def candidates(torch, case, x, t):
    """{label: zero-argument forward + backward} for ``case`` on (x, t)."""
    import fastloss
    from fastloss.bench import _torch_loss

    fused = getattr(fastloss, case.loss + "_and_grad")
    xf, tf = _fastloss_array(x), _fastloss_array(t)
    out = _fastloss_array(torch.empty_like(x))
    steps = {"fastloss": lambda: fused(xf, tf, backend="cuda", out=out)}

    def eager(fn, xin):
        def step():
            leaf = xin.detach().requires_grad_()
            fn(leaf, t).backward()
        return step

    if _torch_loss(case.loss) is not None:
        steps["torch"] = eager(_torch_loss(case.loss), x)
    if case.loss == "softmax_xent" and x.is_cuda:
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss
        except ImportError:
            pass
        else:  # its own logits: Liger's forward writes the gradient over them
            steps["liger"] = eager(LigerCrossEntropyLoss(), x.clone())
    return steps


def measure(torch, case, device, rounds):
    """Result rows of ``case``: one per candidate, with the copy bandwidth of its bytes."""
    x, t = make_inputs(torch, case, device)
    nbytes = 2 * x.numel() * x.element_size() + t.numel() * t.element_size()
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    steps = {"copy": lambda: dst.copy_(src), **candidates(torch, case, x, t)}
    clock = _timer(torch, device)
    for step in steps.values():  # warm-up: compilation, allocator
        step()
    times = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            times[label].append(clock(step))
    ms = {label: statistics.median(ts) for label, ts in times.items()}
    rows = []
    for label in steps:
        if label == "copy":
            continue
        row = dict(loss=case.loss, shape=list(case.shape), dtype=case.dtype, backend=label, ms=ms[label],
                   gbps=nbytes / ms[label] / 1e6, pct_copy=100 * ms["copy"] / ms[label])
        for peer in ("torch", "liger"):
            if peer in ms and label != peer:
                row["x_" + peer] = ms[peer] / ms[label]
        if label == "fastloss":
            row["verdict"] = verdict(case, row)
        rows.append(row)
    return rows


def verdict(case, row):
    """'met', 'MISSED: ...' or '' (no target) for fastloss's row of ``case``."""
    missed, checked = [], False
    for what, target, value in (("copy", case.copy, row["pct_copy"] / 100),
                                ("torch", case.torch, row.get("x_torch")), ("liger", case.liger, row.get("x_liger"))):
        if target and value is not None:
            checked = True
            if value < target:
                missed.append(f"{what} {value:.2f} < {target:g}")
    return ("MISSED: " + ", ".join(missed)) if missed else ("met" if checked else "")


def table(report):
    """The results as a Markdown table, under the device's name."""
    lines = [f"GPU: {report['device']} ({report['date']}; torch {report['torch']}, numba {report['numba']})", "",
             "| loss | shape | dtype | backend | ms | GB/s | % copy | x torch | x liger | targets |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        ratios = [f"{r[k]:.2f}" if k in r else "" for k in ("x_torch", "x_liger")]
        lines.append(f"| {r['loss']} | {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['backend']} | "
                     f"{r['ms']:.3f} | {r['gbps']:.0f} | {r['pct_copy']:.0f} | {ratios[0]} | {ratios[1]} | "
                     f"{r.get('verdict', '')} |")
    return "\n".join(lines)


def run(scale="full", device="cuda", rounds=20, out=print):
    """Measure every case of ``scale``; returns the report (device, versions, result rows)."""
    import numba
    import torch

    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'CPU'} (no GPU)"
    report = dict(device=name, date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                  torch=torch.__version__, numba=numba.__version__, scale=scale, results=[])
    out(f"GPU: {name}")
    for case in cases(scale):
        for row in measure(torch, case, device, rounds):
            report["results"].append(row)
            out(f"{row['loss']:17s} {'x'.join(map(str, row['shape'])):>12s} {row['dtype']:8s} {row['backend']:8s} "
                f"{row['ms']:9.3f} ms {row['gbps']:7.1f} GB/s {row['pct_copy']:5.0f}% copy "
                f"{row.get('x_torch', float('nan')):5.2f}x torch  {row.get('verdict', '')}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes (indicative only)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--markdown", metavar="FILE")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_bench: needs an NVIDIA GPU and a CUDA build of PyTorch", file=sys.stderr)
        return 2
    report = run("quick" if args.quick else "full", "cuda", args.rounds)
    print()
    print(table(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
