"""Fused linear + cross-entropy: the NumPy ``linear_softmax_xent(_and_grad)`` and
``fastloss.torch``'s ``linear_cross_entropy`` against the unfused float64 computation, for every
option and reduction; chunk-size invariance; ``"none"`` with a per-row grad_output; half
precision; torch.compile; and the memory bound, measured in a subprocess."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import BFLOAT16, UNIT_ROUNDOFF, rel_err, seeded_rng

from fastloss import reference
from fastloss._linear import CHUNK_BYTES, linear_softmax_xent, linear_softmax_xent_and_grad

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the NumPy tests run without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

N, H, V = 29, 6, 11  # 29 rows: chunks of 4 leave a short last one
OPTION_CASES = [
    {},
    {"weight": True, "ignore_index": 1},
    {"label_smoothing": 0.1, "z_loss": 1e-2},
    {"weight": True, "label_smoothing": 0.2, "z_loss": 1e-3, "ignore_index": 0},
]
CASE_IDS = ["defaults", "weight-ignore", "smoothing-z", "all"]
REDUCTIONS = ("mean", "sum", "none")


def make(rng, case, shape=(N,), n_classes=V, hidden=H):
    """h (shape + (H,)), W, bias, y with one ignored row, and the softmax_xent options (float64)."""
    h = rng.standard_normal(shape + (hidden,))
    W = rng.standard_normal((n_classes, hidden)) / np.sqrt(hidden) * 3
    bias = rng.standard_normal(n_classes)
    y = rng.integers(0, n_classes, shape)
    options = {k: (rng.uniform(0.2, 2.0, n_classes) if k == "weight" else v) for k, v in case.items()}
    y.reshape(-1)[rng.integers(0, y.size)] = options.get("ignore_index", -100)
    return h, W, bias, y, options


def expected(h, W, bias, y, reduction, grad_output, options):
    """Loss and (grad_h, grad_W, grad_bias) of the unfused computation, in float64, from
    fastloss.reference on the whole logits."""
    h2 = h.reshape(-1, h.shape[-1])
    logits = h2 @ W.T + (0 if bias is None else bias)
    y1 = y.reshape(-1)
    g = grad_output if np.ndim(grad_output) == 0 else np.reshape(grad_output, -1)
    loss = reference.loss("softmax_xent", logits, y1, reduction, **options)
    dl = reference.grad("softmax_xent", logits, y1, reduction, grad_output=g, **options)
    grads = ((dl @ W).reshape(h.shape), dl.T @ h2, None if bias is None else dl.sum(0))
    return (loss.reshape(y.shape) if reduction == "none" else loss), grads


def torch_reference(logits, y, weight, reduction, ignore_index, label_smoothing, z_loss):
    """F.cross_entropy on float64 logits (N, C), plus z_loss * w_y * lse**2 per row: the
    single-process result every fused and distributed path is held to (also by test_distributed)."""
    rows = F.cross_entropy(logits, y, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction="none")
    valid = y != ignore_index
    w_y = torch.ones_like(rows) if weight is None else weight[y.clamp(0, logits.shape[1] - 1)]
    w_y = torch.where(valid, w_y, 0)
    rows = rows + torch.where(valid, z_loss * w_y * logits.logsumexp(1) ** 2, 0)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / w_y.sum()


def assert_close(actual, want, tol, what):
    for name, a, b in zip(("loss", "grad_h", "grad_W", "grad_bias"), actual, want):
        assert (a is None) == (b is None), f"{what}: {name}"
        if a is not None:
            err = rel_err(a, b)
            assert err <= tol, f"{what}: {name} relative error {err:.3g} > {tol:.3g}"


# ---- NumPy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", (True, False), ids=("bias", "no-bias"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OPTION_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("f32", "f64"))
def test_numpy_matches_unfused(dtype, case, reduction, with_bias):
    seed, rng = seeded_rng()
    h, W, bias, y, options = make(rng, case)
    bias = bias if with_bias else None
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    loss, grads = linear_softmax_xent_and_grad(cast(h), cast(W), y, cast(bias), reduction=reduction, chunk_size=4,
                                               **{k: cast(v) if k == "weight" else v for k, v in options.items()})
    assert np.asarray(loss).dtype == dtype and all(g is None or g.dtype == dtype for g in grads)
    # the reference on the values the call saw (inputs rounded to dtype)
    h, W, bias = (None if a is None else cast(a).astype(np.float64) for a in (h, W, bias))
    if "weight" in options:
        options["weight"] = cast(options["weight"]).astype(np.float64)
    want_loss, want_grads = expected(h, W, bias, y, reduction, np.ones(y.shape) if reduction == "none" else 1.0,
                                     options)
    tol = 1e-10 if dtype == np.float64 else 1e-5 * 10  # API.md's (float64: the matmuls round)
    assert_close((loss, *grads), (want_loss, *want_grads), tol, f"seed={seed}")
    assert rel_err(linear_softmax_xent(cast(h), cast(W), y, cast(bias), reduction=reduction, chunk_size=4,
                                       **{k: cast(v) if k == "weight" else v for k, v in options.items()}),
                   loss) <= tol, f"seed={seed}: loss only"


@pytest.mark.parametrize("dtype", (np.float16, BFLOAT16), ids=("f16", "bf16"))
def test_numpy_half(dtype):
    """Half inputs: half logits (as a half matmul gives), gradients summed in float32 and
    rounded once; within a few unit roundoffs of float64 on the same half values."""
    seed, rng = seeded_rng()
    h, W, bias, y, options = make(rng, OPTION_CASES[3])
    h, W, bias = (a.astype(dtype) for a in (h, W, bias))
    loss, grads = linear_softmax_xent_and_grad(h, W, y, bias, chunk_size=4, **options)
    assert all(np.asarray(a).dtype == dtype for a in (loss, *grads))
    want = expected(*(a.astype(np.float64) for a in (h, W, bias)), y, "mean", 1.0, options)
    assert_close((loss, *grads), (want[0], *want[1]), 4 * UNIT_ROUNDOFF[dtype], f"seed={seed}")


def test_numpy_chunk_size_invariance():
    seed, rng = seeded_rng()
    h, W, bias, y, options = make(rng, OPTION_CASES[3], shape=(4, 9))
    results = [linear_softmax_xent_and_grad(h, W, y, bias, chunk_size=c, **options) for c in (1, 4, 36, 1000, None)]
    for loss, grads in results[1:]:
        assert_close((loss, *grads), (results[0][0], *results[0][1]), 1e-13, f"seed={seed}")
    assert results[0][1][0].shape == h.shape


def test_numpy_errors():
    rng = np.random.default_rng(0)
    h, W, bias, y, _ = make(rng, {}, shape=(3, 5))
    y[2, 3] = V  # in the 4th chunk of 4 rows: named by its place in y, not in the chunk
    with pytest.raises(ValueError, match=r"target\[2, 3\] = 11 is not a valid class index"):
        linear_softmax_xent_and_grad(h, W, y, chunk_size=4)
    y[2, 3] = 0
    with pytest.raises(ValueError, match="reduction"):
        linear_softmax_xent(h, W, y, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_softmax_xent(h, W, y, chunk_size=0)
    with pytest.raises(ValueError, match="y must have shape"):
        linear_softmax_xent(h, W, y[:2])
    with pytest.raises(TypeError, match="integer class indices"):
        linear_softmax_xent(h, W, y.astype(np.float64))
    with pytest.raises(ValueError, match="bias"):
        linear_softmax_xent(h, W, y, bias[:3])
    with pytest.raises(ValueError, match="weight"):
        linear_softmax_xent(h, W, y, weight=np.ones(V + 1))


def test_numpy_all_rows_ignored():
    """Nothing to average: the mean is NaN and the gradients 0, as PyTorch's."""
    rng = np.random.default_rng(0)
    h, W, bias, y, _ = make(rng, {})
    loss, grads = linear_softmax_xent_and_grad(h, W, np.full_like(y, -100), bias)
    assert np.isnan(loss) and all(not g.any() for g in grads)


# ---- torch ------------------------------------------------------------------------------------

def devices():
    return ["cpu"] + (["cuda"] if torch is not None and torch.cuda.is_available() else [])


def torch_case(rng, case, dtype, device, shape=(N,), n_classes=V, hidden=H):
    """Leaf tensors h, W, bias (requiring grad), y, weight of ``make``'s values."""
    h, W, bias, y, options = make(rng, case, shape, n_classes, hidden)
    leaf = lambda a: torch.tensor(a, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    weight = options.get("weight")
    kwargs = dict(ignore_index=options.get("ignore_index", -100), label_smoothing=options.get("label_smoothing", 0.0),
                  z_loss=options.get("z_loss", 0.0),
                  weight=None if weight is None else torch.tensor(weight, dtype=dtype, device=device))
    return leaf(h), leaf(W), leaf(bias), torch.tensor(y, device=device), kwargs


def torch_expected(h, W, bias, y, grad_output, reduction, kwargs):
    """Loss and gradients of the unfused float64 computation on the same (rounded) values."""
    h64, W64, b64 = (t.detach().double().requires_grad_() for t in (h, W, bias))
    weight = kwargs["weight"]
    logits = F.linear(h64.reshape(-1, h.shape[-1]), W64, b64)
    loss = torch_reference(logits, y.reshape(-1), None if weight is None else weight.double(), reduction,
                           kwargs["ignore_index"], kwargs["label_smoothing"], kwargs["z_loss"])
    loss = loss.reshape(y.shape) if reduction == "none" else loss
    return (loss, *torch.autograd.grad(loss, (h64, W64, b64), grad_output.double()))


def run_torch(h, W, bias, y, grad_output, reduction, kwargs, **more):
    from fastloss._torch_linear import linear_cross_entropy

    loss = linear_cross_entropy(h, W, y, linear_bias=bias, reduction=reduction, **kwargs, **more)
    return (loss, *torch.autograd.grad(loss, (h, W, bias), grad_output))


def np64(*tensors):
    return [t.detach().cpu().double().numpy() for t in tensors]


@needs_torch
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", OPTION_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", ("float32", "float64"))
def test_torch_matches_unfused(dtype, case, reduction, device):
    """Against F.linear + F.cross_entropy in float64, with a (B, T, H) input and a grad_output
    that is not 1 (per row and non-uniform for "none")."""
    seed, rng = seeded_rng()
    dtype = getattr(torch, dtype)
    h, W, bias, y, kwargs = torch_case(rng, case, dtype, device, shape=(3, 10))
    g = torch.tensor(rng.uniform(0.5, 2.0, y.shape if reduction == "none" else ()), dtype=dtype, device=device)
    got = run_torch(h, W, bias, y, g, reduction, kwargs, chunk_size=4)
    assert got[0].shape == (y.shape if reduction == "none" else ()) and all(t.dtype == dtype for t in got)
    tol = 1e-10 if dtype == torch.float64 else 1e-5 * 10
    assert_close(np64(*got), np64(*torch_expected(h, W, bias, y, g, reduction, kwargs)), tol, f"seed={seed}")


@needs_torch
def test_torch_none_honours_grad_output():
    """Liger-Kernel #968: "none" with a non-uniform grad_output must not give the gradient of
    the plain sum. Here it is checked against the reference, and shown to differ from ones."""
    seed, rng = seeded_rng()
    h, W, bias, y, kwargs = torch_case(rng, OPTION_CASES[2], torch.float64, "cpu")
    g = torch.tensor(rng.uniform(0.0, 3.0, y.shape))
    got = run_torch(h, W, bias, y, g, "none", kwargs, chunk_size=5)
    assert_close(np64(*got), np64(*torch_expected(h, W, bias, y, g, "none", kwargs)), 1e-10, f"seed={seed}")
    ones = run_torch(h, W, bias, y, torch.ones_like(g), "none", kwargs, chunk_size=5)
    assert rel_err(*np64(got[2], ones[2])) > 1e-2, f"seed={seed}: grad_output made no difference"


@needs_torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_torch_half(dtype, reduction):
    """Half in, half out: the logits by a half matmul (as F.linear's), gradients summed in
    float32 and rounded once after the backward's scaling; within a few unit roundoffs."""
    seed, rng = seeded_rng()
    dtype = getattr(torch, dtype)
    h, W, bias, y, kwargs = torch_case(rng, OPTION_CASES[3], dtype, "cpu", shape=(40,), n_classes=50, hidden=16)
    g = torch.tensor(rng.uniform(0.5, 2.0, y.shape if reduction == "none" else ()), dtype=dtype)
    got = run_torch(h, W, bias, y, g, reduction, kwargs, chunk_size=7)
    assert all(t.dtype == dtype for t in got)
    u = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    assert_close(np64(*got), np64(*torch_expected(h, W, bias, y, g, reduction, kwargs)), 3 * u, f"seed={seed}")


@needs_torch
def test_torch_chunk_size_invariance_and_no_grad():
    seed, rng = seeded_rng()
    h, W, bias, y, kwargs = torch_case(rng, OPTION_CASES[3], torch.float64, "cpu")
    g = torch.tensor(2.5, dtype=torch.float64)
    results = [np64(*run_torch(h, W, bias, y, g, "mean", kwargs, chunk_size=c)) for c in (1, 3, N, None)]
    for r in results[1:]:
        assert_close(r, results[0], 1e-13, f"seed={seed}")
    from fastloss._torch_linear import linear_cross_entropy

    with torch.no_grad():
        loss = linear_cross_entropy(h, W, y, linear_bias=bias, **kwargs)
    assert loss.grad_fn is None and rel_err(loss.numpy(), results[0][0]) <= 1e-13


@needs_torch
def test_torch_errors():
    from fastloss._torch_linear import linear_cross_entropy

    rng = np.random.default_rng(0)
    h, W, bias, y, kwargs = torch_case(rng, {}, torch.float32, "cpu", shape=(3, 5))
    y[2, 1] = -7
    with pytest.raises(ValueError, match=r"target\[2, 1\] = -7 is not a valid class index"):
        linear_cross_entropy(h, W, y, chunk_size=4)
    y[2, 1] = 0
    with pytest.raises(ValueError, match="linear_weight"):
        linear_cross_entropy(h, W[:, :3], y)
    with pytest.raises(ValueError, match="linear_weight"):
        linear_cross_entropy(h, W.double(), y)
    with pytest.raises(ValueError, match="target"):
        linear_cross_entropy(h, W, y.float())
    with pytest.raises(ValueError, match="weight requires grad"):
        linear_cross_entropy(h, W, y, weight=torch.ones(V, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(h, W, y, label_smoothing=1.5)
    loss = linear_cross_entropy(h, W, y)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, h, create_graph=True)


@needs_torch
def test_torch_all_rows_ignored():
    from fastloss._torch_linear import linear_cross_entropy

    rng = np.random.default_rng(0)
    h, W, bias, y, _ = torch_case(rng, {}, torch.float32, "cpu")
    loss = linear_cross_entropy(h, W, torch.full_like(y, -100), linear_bias=bias)
    loss.backward()
    assert torch.isnan(loss) and not any(t.grad.any() for t in (h, W, bias))


@needs_torch
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_torch_compile_fullgraph(reduction):
    """torch.compile(fullgraph=True) traces through the custom ops; same values as eager."""
    from fastloss._torch_linear import linear_cross_entropy

    seed, rng = seeded_rng()
    h, W, bias, y, kwargs = torch_case(rng, OPTION_CASES[3], torch.float32, "cpu")
    g = torch.tensor(rng.uniform(0.5, 2.0, y.shape if reduction == "none" else ()), dtype=torch.float32)
    torch._dynamo.reset()
    step = torch.compile(lambda h, W, b, y: linear_cross_entropy(h, W, y, linear_bias=b, reduction=reduction,
                                                                 chunk_size=4, **kwargs), fullgraph=True)
    loss = step(h, W, bias, y)
    got = (loss, *torch.autograd.grad(loss, (h, W, bias), g))
    assert_close(np64(*got), np64(*run_torch(h, W, bias, y, g, reduction, kwargs, chunk_size=4)), 1e-6,
                 f"seed={seed}")


# ---- the memory bound -------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    mode, n, hidden, n_classes = sys.argv[1], *map(int, sys.argv[2:])
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, hidden), dtype=np.float32)
    W = rng.standard_normal((n_classes, hidden), dtype=np.float32) / 8
    y = rng.integers(0, n_classes, n)
    if mode == "numpy":
        from fastloss._linear import linear_softmax_xent_and_grad
        run = lambda h, W, y: linear_softmax_xent_and_grad(h, W, y)
    else:
        import torch
        import torch.nn.functional as F
        from fastloss._torch_linear import linear_cross_entropy
        h, W, y = torch.from_numpy(h).requires_grad_(), torch.from_numpy(W).requires_grad_(), torch.from_numpy(y)
        loss_fn = linear_cross_entropy if mode == "torch" else lambda h, W, y: F.cross_entropy(F.linear(h, W), y)
        run = lambda h, W, y: loss_fn(h, W, y).backward()
    run(h[:8], W, y[:8])  # warm up: first-use allocations
    if mode != "numpy":
        W.grad = None

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    # the peak since a reset of the high-water mark: getrusage's ru_maxrss would also count the
    # parent's resident memory, which Linux carries over fork + exec
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(h, W, y)
    print(json.dumps(status("VmHWM:") - before))
""")


def peak_extra_bytes(mode, n, hidden, n_classes):
    """Peak resident memory of one forward + backward in a fresh process, above what it held
    before."""
    result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, mode, str(n), str(hidden), str(n_classes)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_bound():
    """Peak extra memory: one chunk of logits plus the gradients (their backward copies and
    float32 sums included), far below the unfused path, which holds N x V logits and more."""
    n, hidden, n_classes = 4096, 32, 32000
    logits = n * n_classes * 4
    gradients = (n + n_classes) * hidden * 4
    bound = CHUNK_BYTES + 3 * gradients + (24 << 20)  # + allocator slack and per-chunk vectors
    modes = ["numpy"] + (["torch", "unfused"] if torch is not None else [])
    peaks = {mode: peak_extra_bytes(mode, n, hidden, n_classes) for mode in modes}
    assert peaks["numpy"] < bound, peaks
    if torch is not None:
        assert peaks["torch"] < bound, peaks
        assert peaks["unfused"] > 2 * logits, peaks  # the control: the logits and their gradient
