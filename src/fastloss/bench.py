"""``python -m fastloss.bench``: every loss on every backend beside NumPy, PyTorch, JAX and the
machine's measured copy bandwidth.

Each workload times the fused ``*_and_grad`` call (forward + backward, gradient into a
preallocated ``out``) of every candidate in interleaved rounds and reports medians. The bytes a
kernel must move are its inputs read once and its gradient written once; GB/s is those bytes over
the median time, and "% copy" compares that with the copy bandwidth measured at the start with
the same number of threads (bytes read + written by a large parallel copy: the faster of a
memcpy and a copy with non-temporal stores, which do not read the destination).
"""

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastloss
from fastloss._dispatch import available
from fastloss._specs import ROWS, SPECS, VALUES

FULL = {
    "softmax_xent": [(32, 10), (256, 32000), (4096, 32000), (65536, 1000), (1_000_000, 10)],
    "multiclass_hinge": [(32, 10), (65536, 1000)],
    "cosine_similarity": [(32, 10), (65536, 1000)],
    "elements": [(32, 10), (4096, 8192)],
}
QUICK = {
    "softmax_xent": [(32, 10), (256, 32000), (16384, 1000)],
    "multiclass_hinge": [(16384, 1000)],
    "cosine_similarity": [(16384, 1000)],
    "elements": [(1024, 8192)],
}


def _median_parallel_seconds(task, parts, n_threads, rounds):
    """Median seconds of running ``task`` over ``parts`` on ``n_threads`` Python threads
    (NumPy releases the GIL), after one warm-up round."""
    with ThreadPoolExecutor(n_threads) as pool:
        def once():
            list(pool.map(task, parts))
        once()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def copy_bandwidths(n_threads, nbytes=1 << 28, rounds=7):
    """{kind: GB/s of bytes read + written} of a large copy split over ``n_threads`` threads:
    'memcpy' (np.copyto; below glibc's non-temporal threshold it writes through the cache, so
    the destination is also read) and, where the cython backend is built, 'streaming' (the
    kernels' non-temporal stores: the destination is only written)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    pairs = list(zip(np.array_split(dst, n_threads), np.array_split(src, n_threads)))
    copies = {"memcpy": lambda p: np.copyto(*p)}
    if available("cython"):
        from fastloss._dispatch import get_backend
        stream_copy = get_backend("cython").stream_copy
        copies["streaming"] = lambda p: stream_copy(*p)
    return {kind: 2 * src.nbytes / _median_parallel_seconds(copy, pairs, n_threads, rounds) / 1e9
            for kind, copy in copies.items()}


def read_bandwidth(n_threads, nbytes=1 << 28, rounds=7):
    """GB/s of a large array read (summed) by ``n_threads`` threads."""
    src = np.ones(nbytes // 8)
    return src.nbytes / _median_parallel_seconds(np.sum, np.array_split(src, n_threads), n_threads, rounds) / 1e9


def make_problem(name, shape, dtype, rng):
    spec = SPECS[name]
    x = rng.standard_normal(shape).astype(dtype)
    if spec.layout == ROWS and spec.targets != VALUES:
        t = rng.integers(0, shape[-1], shape[:-1])
    elif name == "hinge":
        t = rng.choice(np.array([-1.0, 1.0], dtype), shape)
    elif name in ("sigmoid_bce", "kl_div"):
        t = rng.uniform(0, 1, shape).astype(dtype)
    elif name == "sigmoid_focal":  # detection's 0/1 labels
        t = (rng.uniform(0, 1, shape) < 0.1).astype(dtype)
    elif name == "poisson_nll":  # counts (the input: log-rates)
        t = rng.poisson(2.0, shape).astype(dtype)
    elif name == "msle":  # non-negative predictions and targets
        np.abs(x, out=x)
        t = rng.uniform(0, 4, shape).astype(dtype)
    else:
        t = rng.standard_normal(shape).astype(dtype)
    return x, t


def moved_bytes(x, t):
    """Inputs read once, the gradient written once."""
    return 2 * x.nbytes + t.nbytes


def candidates(name, x, t):
    """{label: zero-argument callable computing loss and gradient of the mean loss}."""
    out = np.empty_like(x)
    fused = getattr(fastloss, name + "_and_grad")
    found = {}
    for backend in ("numpy", "cython", "numba"):
        if available(backend):
            found[backend] = lambda b=backend: fused(x, t, backend=b, out=out)
    found.update(_peers(name, x, t))
    return found


def _peers(name, x, t):
    peers = {}
    if "torch" in sys.modules or _importable("torch"):
        import torch
        import torch.nn.functional as F
        torch_fn = {
            "softmax_xent": lambda a, b: F.cross_entropy(a, b),
            "multiclass_hinge": lambda a, b: F.multi_margin_loss(a, b),
            "sigmoid_bce": F.binary_cross_entropy_with_logits, "huber": F.huber_loss,
            "mse": F.mse_loss, "mae": F.l1_loss, "kl_div": lambda a, b: F.kl_div(a, b, reduction="sum") / a.numel(),  # = "mean", without its warning
            "smooth_l1": F.smooth_l1_loss, "poisson_nll": F.poisson_nll_loss,
            "sigmoid_focal": _torch_sigmoid_focal,
            "log_cosh": lambda a, b: torch.log(torch.cosh(a - b)).mean(),
            "msle": lambda a, b: (torch.log1p(a.clamp(min=1e-7)) - torch.log1p(b.clamp(min=1e-7))).square().mean(),
            "cosine_similarity": lambda a, b: -F.cosine_similarity(a, b, dim=-1).mean(),  # ours, away from zero rows
        }.get(name)
        if torch_fn is not None:
            xt, tt = torch.from_numpy(x), torch.from_numpy(t)
            torch.set_num_threads(fastloss.get_num_threads())

            def torch_step(fn):
                def run():  # forward + backward from a fresh leaf
                    a = xt.detach().requires_grad_()
                    loss = fn(a, tt)
                    loss.backward()
                    return loss.item(), a.grad
                return run
            peers["torch"] = torch_step(torch_fn)
            fl_fn = _fastloss_torch(name)
            if fl_fn is not None:
                peers["fl.torch"] = torch_step(fl_fn)
    if _importable("jax"):
        jax_loss = _jax_loss(name)
        if jax_loss is not None:
            import jax
            vg = jax.jit(jax.value_and_grad(jax_loss))
            xj, tj = jax.device_put(x), jax.device_put(t)
            peers["jax"] = lambda: jax.block_until_ready(vg(xj, tj))
        if name == "softmax_xent" and _importable("optax"):
            import jax
            import optax
            import fastloss.jax as flj
            optax_vg = jax.jit(jax.value_and_grad(
                lambda a, b: optax.softmax_cross_entropy_with_integer_labels(a, b).mean()))
            fl_vg = jax.jit(jax.value_and_grad(lambda a, b: flj.softmax_xent(a, b)))
            xj, tj = jax.device_put(x), jax.device_put(t)
            peers["optax"] = lambda: jax.block_until_ready(optax_vg(xj, tj))
            peers["fl.jax"] = lambda: jax.block_until_ready(fl_vg(xj, tj))
    return peers


def _torch_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2):
    """torchvision.ops.sigmoid_focal_loss in torch ops (what a user without torchvision writes),
    reduction "mean"."""
    import torch
    import torch.nn.functional as F
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean()


def _fastloss_torch(name):
    """fastloss.torch's twin of torch_fn (class axis = dim 1, as F's), or None."""
    import fastloss.torch as flt
    return {"softmax_xent": flt.cross_entropy, "sigmoid_bce": flt.binary_cross_entropy_with_logits,
            "huber": flt.huber_loss, "mse": flt.mse_loss, "mae": flt.l1_loss,
            "multiclass_hinge": flt.multi_margin_loss, "smooth_l1": flt.smooth_l1_loss,
            "poisson_nll": flt.poisson_nll_loss,
            "sigmoid_focal": lambda a, b: flt.sigmoid_focal_loss(a, b, reduction="mean"),
            "log_cosh": flt.log_cosh_loss, "msle": flt.msle_loss,
            "cosine_similarity": flt.cosine_similarity_loss}.get(name)


def _jax_loss(name):
    import jax
    import jax.numpy as jnp
    if name == "softmax_xent":
        return lambda a, b: jnp.mean(jax.nn.logsumexp(a, -1) - jnp.take_along_axis(a, b[:, None], -1)[:, 0])
    if name == "mse":
        return lambda a, b: jnp.mean((a - b) ** 2)
    if name == "mae":
        return lambda a, b: jnp.mean(jnp.abs(a - b))
    if name == "sigmoid_bce":
        return lambda a, b: jnp.mean(jnp.maximum(a, 0) - a * b + jnp.log1p(jnp.exp(-jnp.abs(a))))
    if name == "smooth_l1":
        def smooth_l1(a, b):
            d = a - b
            ad = jnp.abs(d)
            return jnp.mean(jnp.where(ad < 1.0, 0.5 * d * d, ad - 0.5))
        return smooth_l1
    if name == "log_cosh":  # optax.losses.log_cosh
        return lambda a, b: jnp.mean(jnp.logaddexp(a - b, b - a) - jnp.log(2.0).astype(a.dtype))
    if name == "msle":
        return lambda a, b: jnp.mean(jnp.square(jnp.log1p(jnp.maximum(a, 1e-7)) - jnp.log1p(jnp.maximum(b, 1e-7))))
    if name == "poisson_nll":
        return lambda a, b: jnp.mean(jnp.exp(a) - b * a)
    if name == "sigmoid_focal":
        def sigmoid_focal(a, b, alpha=0.25):
            p = jax.nn.sigmoid(a)
            ce = jnp.maximum(a, 0) - a * b + jnp.log1p(jnp.exp(-jnp.abs(a)))
            m = p * (1 - b) + (1 - p) * b  # 1 - p_t
            return jnp.mean((alpha * b + (1 - alpha) * (1 - b)) * ce * m * m)
        return sigmoid_focal
    if name == "cosine_similarity":
        def cosine_similarity(a, b):
            na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, -1), 1e-12))
            nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, -1), 1e-12))
            return -jnp.mean(jnp.sum(a * b, -1) / (na * nb))
        return cosine_similarity
    return None


def _importable(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def time_interleaved(funcs, rounds, min_seconds=2e-3):
    """Median seconds per call of each function, the rounds interleaved (in an order rotated each
    round) so that noise from other tenants hits every candidate alike. Fast calls are repeated
    within a round."""
    for f in funcs.values():  # warm up: compile, allocate, fault pages in
        f()
    reps = {}
    for label, f in funcs.items():
        t0 = time.perf_counter()
        f()
        once = time.perf_counter() - t0
        reps[label] = max(1, int(min_seconds / max(once, 1e-7)))
    samples = {label: [] for label in funcs}
    labels = list(funcs)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotated: no one always first
            f, n = funcs[label], reps[label]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            samples[label].append((time.perf_counter() - t0) / n)
    return {label: float(np.median(s)) for label, s in samples.items()}


def run(quick=False, losses=None, dtype=np.float32, rounds=None, startup=False):
    sizes = QUICK if quick else FULL
    rounds = rounds or (5 if quick else 11)
    threads = fastloss.get_num_threads()
    copies = copy_bandwidths(threads)
    bandwidth = max(copies.values())  # the limit: the faster way to copy
    rng = np.random.default_rng()
    rows = []
    for name in losses or SPECS:
        shapes = sizes.get(name, sizes["elements"])
        for shape in shapes:
            x, t = make_problem(name, shape, dtype, rng)
            times = time_interleaved(candidates(name, x, t), rounds)
            nbytes = moved_bytes(x, t)
            for label, seconds in times.items():
                rows.append(dict(loss=name, shape=list(shape), dtype=np.dtype(dtype).name, backend=label,
                                 median_s=seconds, gbps=nbytes / seconds / 1e9,
                                 pct_copy=100 * nbytes / seconds / 1e9 / bandwidth,
                                 **{f"x_{peer}": times[peer] / seconds for peer in ("numpy", "torch", "jax", "optax")
                                    if peer in times}))
            del x, t
    report = dict(machine=machine_info(threads), copy_gbps=bandwidth, copies_gbps=copies, results=rows)
    if "softmax_xent" in (losses or SPECS):  # the forward alone reads the logits once, writes nothing
        report["read_gbps"] = read_bw = read_bandwidth(threads)
        forward = []
        for shape in sizes["softmax_xent"][1:]:
            x, t = make_problem("softmax_xent", shape, dtype, rng)
            funcs = {b: (lambda b=b: fastloss.softmax_xent(x, t, backend=b)) for b in ("numpy", "cython", "numba")
                     if available(b)}
            times = time_interleaved(funcs, rounds)
            nbytes = x.nbytes + t.nbytes
            forward += [dict(loss="softmax_xent", entry="loss", shape=list(shape), backend=b, median_s=sec,
                             gbps=nbytes / sec / 1e9, pct_read=100 * nbytes / sec / 1e9 / read_bw,
                             x_numpy=times["numpy"] / sec) for b, sec in times.items()]
            del x, t
        report["forward_only"] = forward
    if startup and available("numba"):
        first = startup_times(losses or SPECS)
        report["numba_first_call_s"] = {k: v[1] for k, v in first.items()}
        report["import_s"] = min(v[0] for v in first.values())
    return report


# --small: the hot loop. A 32 x 10 float32 loss + gradient per call, fastloss beside what a user
# would write in NumPy (same arguments as fastloss's options, the gradient into ``g``).

def _np_softmax_xent(x, t, g, weight=None, label_smoothing=0.0, reduction="mean"):
    n, c = x.shape
    m = x.max(1, keepdims=True)
    np.subtract(x, m, out=g)
    np.exp(g, out=g)
    s = g.sum(1, keepdims=True)
    g /= s  # softmax
    lse = m[:, 0] + np.log(s[:, 0])
    if t.ndim == 2:  # probabilities
        loss, denom = (t * (lse[:, None] - x)).sum(), n
        g -= t
    else:
        r, eps = np.arange(n), label_smoothing
        wy = np.ones(n, x.dtype) if weight is None else weight[t]
        loss, denom = (1 - eps) * (wy * (lse - x[r, t])).sum(), wy.sum()
        if weight is not None:
            g *= ((1 - eps) * wy + eps * weight.mean())[:, None]
        g[r, t] -= (1 - eps) * wy
        if eps:
            w = np.ones(c, x.dtype) if weight is None else weight
            loss += eps / c * (lse.sum() * w.sum() - (x @ w).sum())
            g -= eps / c * w
    denom = denom if reduction == "mean" else 1
    g /= denom
    return loss / denom, g


def _np_sigmoid_bce(x, t, g, weight=None, pos_weight=None):
    sp = np.logaddexp(0, -x)  # log(1 + e^-x)
    np.exp(-sp, out=g)  # sigmoid(x)
    if pos_weight is None:
        loss = (1 - t) * x + sp
        g -= t
    else:
        k = 1 + (pos_weight - 1) * t
        loss = (1 - t) * x + k * sp
        g -= 1
        g *= k
        g += 1 - t
    if weight is not None:
        loss *= weight
        g *= weight
    g /= x.size
    return loss.mean(), g


def _np_huber(x, t, g, delta=1.0):
    d = x - t
    a = np.abs(d)
    loss = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)).mean()
    np.clip(d, -delta, delta, out=g)
    g /= x.size
    return loss, g


def _np_hinge(x, t, g):
    m = 1 - t * x
    np.multiply(-t / x.size, m > 0, out=g)
    return np.maximum(m, 0).mean(), g


def _np_multiclass_hinge(x, y, g, mode="weston_watkins", weight=None):
    n, c = x.shape
    r = np.arange(n)
    wy = np.ones(n, x.dtype) if weight is None else weight[y]
    xy = x[r, y]
    if mode == "crammer_singer":
        z = x.copy()
        z[r, y] = -np.inf
        j = z.argmax(1)
        h = 1 + z[r, j] - xy
        g.fill(0)
        g[r, j] = (h > 0) * wy / n
        g[r, y] -= g[r, j]
        return (np.maximum(h, 0) * wy).sum() / n, g
    m = 1 + x - xy[:, None]
    m[r, y] = 0
    np.greater(m, 0, out=g)
    g[r, y] = -g.sum(1)
    g *= (wy / (c * n))[:, None]
    return (np.maximum(m, 0).sum(1) * wy).sum() / (c * n), g


def _np_mse(x, t, g):
    np.subtract(x, t, out=g)
    loss = (g * g).mean()
    g *= 2 / x.size
    return loss, g


def _np_mae(x, t, g):
    np.subtract(x, t, out=g)
    loss = np.abs(g).mean()
    np.sign(g, out=g)
    g /= x.size
    return loss, g


def _np_kl_div(x, t, g, log_target=False):
    p = np.exp(t) if log_target else t
    loss = (p * ((t if log_target else np.log(t)) - x)).mean()
    np.multiply(p, -1 / x.size, out=g)
    return loss, g


def _np_smooth_l1(x, t, g, beta=1.0):
    d = x - t
    a = np.abs(d)
    small = a < beta
    loss = np.where(small, 0.5 * d * d / beta, a - 0.5 * beta).mean()
    np.copyto(g, np.where(small, d / beta, np.sign(d)))
    g /= x.size
    return loss, g


def _np_log_cosh(x, t, g):
    d = x - t
    loss = (np.logaddexp(d, -d) - np.log(2)).mean()
    np.tanh(d, out=g)
    g /= x.size
    return loss, g


def _np_msle(x, t, g):
    d = np.log1p(np.maximum(x, 1e-7)) - np.log1p(np.maximum(t, 1e-7))
    loss = (d * d).mean()
    np.divide(2 * d, 1 + x, out=g)
    g[x < 1e-7] = 0
    g /= x.size
    return loss, g


def _np_poisson_nll(x, t, g, log_input=True, full=False, eps=1e-8):
    if log_input:
        e = np.exp(x)
        loss = e - t * x
        np.subtract(e, t, out=g)
    else:
        loss = x - t * np.log(x + eps)
        np.subtract(1, t / (x + eps), out=g)
    if full:
        tt = np.where(t > 1, t, 1)
        loss += np.where(t > 1, tt * np.log(tt) - tt + 0.5 * np.log(2 * np.pi * tt), 0)
    g /= x.size
    return loss.mean(), g


def _np_sigmoid_focal(x, t, g, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    ce = np.logaddexp(0, -x) + (1 - t) * x  # bce with logits
    m = p + t - 2 * p * t  # 1 - p_t
    mod = m**gamma
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1
    loss = (a_t * ce * mod).mean()
    # d/dx: (p - t) * mod + ce * gamma * m**(gamma-1) * p*(1-p)*(1 - 2t)
    dm = p * (1 - p) * (1 - 2 * t)
    with np.errstate(divide="ignore", invalid="ignore"):
        dmod = np.where(m > 0, gamma * m ** (gamma - 1), 0) * dm
    np.multiply(a_t, (p - t) * mod + ce * dmod, out=g)
    g /= x.size
    return loss, g


def _np_cosine_similarity(x, t, g):
    nx = np.sqrt(np.maximum((x * x).sum(1), 1e-12))
    nt = np.sqrt(np.maximum((t * t).sum(1), 1e-12))
    cos = (x * t).sum(1) / (nx * nt)
    n = x.shape[0]
    # d(-cos)/dx = -(t/(|x||t|) - cos * x/|x|**2)
    np.multiply(x, (cos / (nx * nx))[:, None], out=g)
    g -= t / (nx * nt)[:, None]
    g /= n
    return -cos.mean(), g


SMALL_NUMPY = {"softmax_xent": _np_softmax_xent, "sigmoid_bce": _np_sigmoid_bce, "huber": _np_huber,
               "hinge": _np_hinge, "multiclass_hinge": _np_multiclass_hinge, "mse": _np_mse, "mae": _np_mae,
               "kl_div": _np_kl_div, "smooth_l1": _np_smooth_l1, "log_cosh": _np_log_cosh, "msle": _np_msle,
               "poisson_nll": _np_poisson_nll, "sigmoid_focal": _np_sigmoid_focal,
               "cosine_similarity": _np_cosine_similarity}
SMALL_TARGETS = {"cython": 3e-6, "numba": 10e-6}  # seconds per call


def small_cases(rng, n=32, c=10, dtype=np.float32):
    """[(loss, options label, x, targets, options)]: the rows of the --small table."""
    x, v = rng.standard_normal((2, n, c)).astype(dtype)
    y = rng.integers(0, c, n)
    u = rng.uniform(0, 1, (n, c)).astype(dtype)
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))  # log_softmax
    probs = np.exp(v) / np.exp(v).sum(1, keepdims=True)
    w = rng.uniform(0.5, 2, c).astype(dtype)
    counts = rng.poisson(2.0, (n, c)).astype(dtype)
    labels01 = (u < 0.2).astype(dtype)
    return [("softmax_xent", "defaults", x, y, {}), ("softmax_xent", "int32 labels", x, y.astype(np.int32), {}),
            ("softmax_xent", "weight=(C,)", x, y, dict(weight=w)),
            ("softmax_xent", "label_smoothing", x, y, dict(label_smoothing=0.1)),
            ("softmax_xent", "probs targets", x, probs, {}),
            ("softmax_xent", "reduction=sum", x, y, dict(reduction="sum")),
            ("sigmoid_bce", "defaults", x, u, {}), ("sigmoid_bce", "pos_weight=(C,)", x, u, dict(pos_weight=w)),
            ("sigmoid_bce", "weight=(N,C)", x, u, dict(weight=rng.uniform(0.5, 2, (n, c)).astype(dtype))),
            ("huber", "defaults", x, v, {}), ("huber", "delta=0.5", x, v, dict(delta=0.5)),
            ("hinge", "defaults", x, rng.choice(np.array([-1, 1], dtype), (n, c)), {}),
            ("multiclass_hinge", "defaults", x, y, {}),
            ("multiclass_hinge", "crammer_singer", x, y, dict(mode="crammer_singer")),
            ("multiclass_hinge", "weight=(C,)", x, y, dict(weight=w)),
            ("mse", "defaults", x, v, {}), ("mae", "defaults", x, v, {}),
            ("kl_div", "defaults", logp, probs, {}),
            ("kl_div", "log_target", logp, np.log(probs), dict(log_target=True)),
            ("smooth_l1", "defaults", x, v, {}), ("smooth_l1", "beta=0.5", x, v, dict(beta=0.5)),
            ("log_cosh", "defaults", x, v, {}), ("msle", "defaults", np.abs(x), np.abs(v), {}),
            ("poisson_nll", "defaults", x, counts, {}), ("poisson_nll", "full", x, counts, dict(full=True)),
            ("sigmoid_focal", "defaults", x, labels01, {}), ("sigmoid_focal", "soft targets", x, u, {}),
            ("cosine_similarity", "defaults", x, v, {})]


def run_small(rounds=None, min_seconds=1e-2):
    """The hot-loop table: each small case's fused ``*_and_grad`` on cython and numba beside
    ``SMALL_NUMPY``, checked to agree (rtol 1e-4) before timing; RuntimeError where they do not."""
    rounds = rounds or 7
    backends = [b for b in SMALL_TARGETS if available(b)]
    rows = []
    for name, label, x, t, options in small_cases(np.random.default_rng()):
        fused, by_hand = getattr(fastloss, name + "_and_grad"), SMALL_NUMPY[name]
        outs = {b: np.empty_like(x) for b in ("numpy", *backends)}
        funcs = {"numpy": lambda: by_hand(x, t, outs["numpy"], **options)}
        funcs.update({b: (lambda b=b: fused(x, t, out=outs[b], backend=b, **options)) for b in backends})
        want = funcs["numpy"]()
        for b in backends:
            got = funcs[b]()
            if not all(np.allclose(a, e, rtol=1e-4) for a, e in zip(got, want)):
                raise RuntimeError(f"{name} ({label}): {b} and NumPy disagree: loss {got[0]} vs {want[0]}, "
                                   f"largest gradient difference {np.abs(got[1] - want[1]).max()}")
        times = time_interleaved(funcs, rounds, min_seconds)
        rows += [dict(loss=name, options=label, backend=b, median_s=times[b], numpy_s=times["numpy"],
                      x_numpy=times["numpy"] / times[b], target_s=SMALL_TARGETS[b],
                      met=bool(times[b] <= min(SMALL_TARGETS[b], times["numpy"]))) for b in backends]
    return dict(machine=machine_info(fastloss.get_num_threads()), shape=[32, 10], dtype="float32",
                rounds=rounds, results=rows)


def format_small(report):
    m = report["machine"]
    lines = [f"fastloss bench --small: loss + gradient per call, 32x10 float32, {m['processor']}, {m['date']}",
             "", f"{'loss':17s} {'options':16s} {'backend':8s} {'median':>11s} {'numpy':>11s} {'numpy/fl':>9s} "
             f"{'target':>9s} met"]
    for r in report["results"]:
        lines.append(f"{r['loss']:17s} {r['options']:16s} {r['backend']:8s} {_fmt_time(r['median_s'])} "
                     f"{_fmt_time(r['numpy_s'])} {r['x_numpy']:8.1f}x {_fmt_time(r['target_s'])} "
                     f"{'yes' if r['met'] else 'no'}")
    met = sum(r["met"] for r in report["results"])
    lines += ["", f"met (at most the target and not slower than NumPy): {met} of {len(report['results'])}"]
    return "\n".join(lines)


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np, fastloss
from fastloss.bench import make_problem
t_import = time.perf_counter() - t0
x, t = make_problem({name!r}, (32, 10), np.float32, np.random.default_rng())
t1 = time.perf_counter()
getattr(fastloss, {name!r} + "_and_grad")(x, t, backend="numba")
print(t_import, time.perf_counter() - t1)
"""


def startup_times(losses):
    """{loss: (seconds to import fastloss, seconds to the first numba result)}, each in a fresh
    process (Numba compiles a kernel on its first call; its on-disk cache is off by default)."""
    import subprocess
    times = {}
    for name in losses:
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(name=name)], capture_output=True,
                             text=True, check=True).stdout.split()
        times[name] = (float(out[0]), float(out[1]))
    return times


def machine_info(threads):
    info = dict(date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                platform=platform.platform(), processor=_cpu_name(), threads=threads,
                numpy=np.__version__, fastloss=fastloss.__version__)
    for module in ("numba", "torch", "jax"):
        if _importable(module):
            info[module] = __import__(module).__version__
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


HALF_WORKLOADS = {  # loss -> (full shape, quick shape, the half/float32 speed-up the bench aims for)
    "softmax_xent": ((4096, 32000), (512, 32000), 1.4),
    "mse": ((4096, 8192), (1024, 8192), 1.6),
    "huber": ((4096, 8192), (1024, 8192), 1.6),
}
TORCH_HALF_TARGETS = (3.0, 0.8)  # fl.torch bf16 CE: >= 3x F.cross_entropy on bf16, <= 0.8x its float32 time


def _half_dtypes():
    """{name: dtype} of the half types this machine can make arrays of (bfloat16 needs ml_dtypes)."""
    found = {"float16": np.dtype(np.float16)}
    if _importable("ml_dtypes"):
        import ml_dtypes
        found["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
    return found


def run_half(quick=False, rounds=None):
    """Half precision beside float32 on each compiled backend (and fastloss.torch beside
    F.cross_entropy on bfloat16 CPU tensors): the same values in every dtype, timed interleaved
    in one run; bytes are counted at the element size (2 for half)."""
    rounds = rounds or (5 if quick else 9)
    threads = fastloss.get_num_threads()
    bandwidth = max(copy_bandwidths(threads).values())
    rng = np.random.default_rng()
    dtypes = {"float32": np.dtype(np.float32), **_half_dtypes()}
    backends = [b for b in ("cython", "numba") if available(b)]
    rows = []
    for name, (full, small, target) in HALF_WORKLOADS.items():
        shape = small if quick else full
        x32, t32 = make_problem(name, shape, np.float32, rng)
        funcs, nbytes = {}, {}
        for dn, dt in dtypes.items():
            x, t = x32.astype(dt), (t32 if t32.dtype.kind != "f" else t32.astype(dt))
            out, fused = np.empty_like(x), getattr(fastloss, name + "_and_grad")
            nbytes[dn] = moved_bytes(x, t)
            for b in backends:
                funcs[(b, dn)] = lambda x=x, t=t, out=out, b=b: fused(x, t, backend=b, out=out)
            del x, t
        times = time_interleaved(funcs, rounds)
        for (b, dn), sec in times.items():
            rows.append(dict(loss=name, shape=list(shape), backend=b, dtype=dn, median_s=sec,
                             pct_copy=100 * nbytes[dn] / sec / 1e9 / bandwidth,
                             x_float32=times[(b, "float32")] / sec, target=None if dn == "float32" else target))
        del funcs, x32, t32
    report = dict(machine=machine_info(threads), copy_gbps=bandwidth, results=rows)
    if _importable("torch") and "bfloat16" in dtypes:
        report["torch"] = _torch_half(HALF_WORKLOADS["softmax_xent"][1 if quick else 0], rounds, rng)
    return report


def _torch_half(shape, rounds, rng):
    """Forward + backward of fastloss.torch.cross_entropy on bfloat16 and float32 CPU tensors, and
    F.cross_entropy on the same bfloat16 tensors."""
    import torch
    import torch.nn.functional as F
    import fastloss.torch as flt
    torch.set_num_threads(fastloss.get_num_threads())
    x32 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, shape[1], shape[0]))
    x16 = x32.to(torch.bfloat16)

    def step(fn, x):
        def run():
            a = x.detach().requires_grad_()
            fn(a, y).backward()
            return a.grad
        return run
    times = time_interleaved({"fl.torch bf16": step(flt.cross_entropy, x16),
                              "F bf16": step(F.cross_entropy, x16),
                              "fl.torch f32": step(flt.cross_entropy, x32)}, rounds)
    return dict(shape=list(shape), median_s=times,
                x_F=times["F bf16"] / times["fl.torch bf16"],
                of_f32=times["fl.torch bf16"] / times["fl.torch f32"])


def format_half(report):
    lines = [f"half precision: fused *_and_grad(out=), the same values in each dtype, {report['machine']['threads']} "
             f"threads; copy bandwidth {report['copy_gbps']:.1f} GB/s, bytes at the element size", "",
             f"{'loss':13s} {'shape':>11s} {'backend':8s} {'dtype':9s} {'median':>11s} {'% copy':>7s} "
             f"{'vs float32':>10s} {'target':>7s} met"]
    for r in report["results"]:
        met = "" if r["target"] is None else ("yes" if r["x_float32"] >= r["target"] else "no")
        target = "" if r["target"] is None else f">={r['target']:.1f}x"
        lines.append(f"{r['loss']:13s} {'x'.join(map(str, r['shape'])):>11s} {r['backend']:8s} {r['dtype']:9s} "
                     f"{_fmt_time(r['median_s'])} {r['pct_copy']:6.0f}% {r['x_float32']:9.2f}x {target:>7s} {met}")
    if "torch" in report:
        t = report["torch"]
        ok = t["x_F"] >= TORCH_HALF_TARGETS[0] and t["of_f32"] <= TORCH_HALF_TARGETS[1]
        lines += ["", f"fastloss.torch cross_entropy, bfloat16 CPU tensors {'x'.join(map(str, t['shape']))}, "
                  "forward + backward: " + ", ".join(f"{k} {_fmt_time(v).strip()}" for k, v in t["median_s"].items()),
                  f"  {t['x_F']:.1f}x F.cross_entropy on bf16 (target >= {TORCH_HALF_TARGETS[0]:.0f}x), "
                  f"{t['of_f32']:.2f}x its own float32 time (target <= {TORCH_HALF_TARGETS[1]}): "
                  f"{'met' if ok else 'not met'}"]
    return "\n".join(lines)


def _fmt_time(s):
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.2f} ms"


def _copies_text(report):
    """'27.4 GB/s (memcpy 27.4, streaming 30.1)': the copy bandwidth used, and each measured."""
    each = ", ".join(f"{k} {v:.1f}" for k, v in report.get("copies_gbps", {}).items())
    return f"{report['copy_gbps']:.1f} GB/s" + (f" (the faster of {each})" if each else "")


def format_table(report):
    m = report["machine"]
    lines = [f"fastloss bench: {m['processor']}, {m['threads']} threads, {m['date']}",
             f"copy bandwidth (read + write, {m['threads']} threads): {_copies_text(report)}", "",
             f"{'loss':17s} {'shape':>14s} {'backend':8s} {'median':>11s} {'GB/s':>7s} {'% copy':>7s} "
             f"{'vs numpy':>9s} {'vs torch':>9s} {'vs jax':>7s} {'vs optax':>9s}"]
    for r in report["results"]:
        ratio = lambda k, w: f"{r[k]:{w}.1f}x" if k in r else " " * (w + 1)
        lines.append(f"{r['loss']:17s} {'x'.join(map(str, r['shape'])):>14s} {r['backend']:8s} "
                     f"{_fmt_time(r['median_s'])} {r['gbps']:7.1f} {r['pct_copy']:6.0f}% "
                     f"{ratio('x_numpy', 8)} {ratio('x_torch', 8)} {ratio('x_jax', 6)} {ratio('x_optax', 8)}")
    if report.get("forward_only"):
        lines += ["", f"forward only (softmax_xent, logits read once; read bandwidth {report['read_gbps']:.1f} GB/s):"]
        for r in report["forward_only"]:
            lines.append(f"{'x'.join(map(str, r['shape'])):>14s} {r['backend']:8s} {_fmt_time(r['median_s'])} "
                         f"{r['gbps']:7.1f} GB/s {r['pct_read']:5.0f}% of read {r['x_numpy']:6.1f}x numpy")
    if "numba_first_call_s" in report:
        lines += ["", f"import fastloss: {report['import_s'] * 1e3:.0f} ms; numba time to first result "
                  "(compile + run, fresh process): " + ", ".join(
                      f"{k} {v:.1f} s" for k, v in report["numba_first_call_s"].items())]
    return "\n".join(lines)


def format_markdown(report, min_elements=1 << 20):
    """The large workloads of ``report`` as a Markdown table (what README.md shows)."""
    m = report["machine"]
    lines = [f"{m['processor']}, {m['threads']} threads, {m['date']}; NumPy {m['numpy']}, Numba "
             f"{m.get('numba', '-')}, PyTorch {m.get('torch', '-')}, JAX {m.get('jax', '-')}; copy bandwidth "
             f"(read + write) {_copies_text(report)}.", "",
             "| loss | shape | backend | median | GB/s | % of copy | vs NumPy | vs PyTorch | vs JAX |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if np.prod(r["shape"]) < min_elements:
            continue
        ratio = lambda k: f"{r[k]:.1f}x" if k in r else ""
        lines.append(f"| {r['loss']} | {'x'.join(map(str, r['shape']))} | {r['backend']} | "
                     f"{_fmt_time(r['median_s']).strip()} | {r['gbps']:.1f} | {r['pct_copy']:.0f}% | "
                     f"{ratio('x_numpy')} | {ratio('x_torch')} | {ratio('x_jax')} |")
    return "\n".join(lines)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in report["results"] if np.prod(r["shape"]) >= 1 << 20]
    workloads = list(dict.fromkeys((r["loss"], "x".join(map(str, r["shape"]))) for r in rows))
    labels = list(dict.fromkeys(r["backend"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(workloads) * 1.2), 5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        vals = [next((r["pct_copy"] for r in rows if (r["loss"], "x".join(map(str, r["shape"]))) == w
                      and r["backend"] == label), 0) for w in workloads]
        ax.bar(np.arange(len(workloads)) + i * width, vals, width, label=label)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{a}\n{b}" for a, b in workloads], fontsize=7)
    ax.set_ylabel("% of copy bandwidth (higher is better; dashed = the copy)")
    ax.set_title(f"fused loss+grad, {report['machine']['threads']} threads, copy {report['copy_gbps']:.0f} GB/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastloss.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds: under a minute")
    parser.add_argument("--small", action="store_true", help="the hot loop: 32x10 float32, every loss and "
                        "common option, cython and numba beside hand-written NumPy, against per-call targets")
    parser.add_argument("--loss", action="append", choices=list(SPECS), help="only these losses")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--half", action="store_true", help="half precision: float16 and bfloat16 beside "
                        "float32 (softmax_xent, mse, huber; fastloss.torch on bfloat16), against targets")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per workload")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    parser.add_argument("--startup", action="store_true",
                        help="also time numba's first call per loss with --quick (always done without)")
    parser.add_argument("--json", metavar="FILE", help="also write the data as JSON")
    parser.add_argument("--markdown", metavar="JSON", help="print the large workloads of a kept JSON report "
                        "as a Markdown table, and exit")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw %% of copy bandwidth (needs matplotlib)")
    args = parser.parse_args(argv)
    if (args.small or args.half) and args.plot:
        parser.error("--plot draws the full report, not --small or --half")
    if args.markdown:
        with open(args.markdown) as f:
            print(format_markdown(json.load(f)))
        return
    if args.threads:
        fastloss.set_num_threads(args.threads)
    if args.small:
        report = run_small(args.rounds)
        print(format_small(report))
    elif args.half:
        report = run_half(args.quick, args.rounds)
        print(format_half(report))
    else:
        report = run(args.quick, args.loss, np.dtype(args.dtype), args.rounds, startup=not args.quick or args.startup)
        print(format_table(report))
        if not args.loss:  # the whole report: half precision too
            report["half"] = run_half(args.quick, args.rounds)
            print("\n" + format_half(report["half"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)


if __name__ == "__main__":
    main()
