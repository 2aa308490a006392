"""``python -m fastloss.bench``: every loss on every backend beside NumPy, PyTorch, JAX and the
machine's measured copy bandwidth.

Each workload times the fused ``*_and_grad`` call (forward + backward, gradient into a
preallocated ``out``) of every candidate in interleaved rounds and reports medians. The bytes a
kernel must move are its inputs read once and its gradient written once; GB/s is those bytes over
the median time, and "% copy" compares that with the copy bandwidth measured at the start with
the same number of threads (bytes read + written by a large parallel copy: the faster of a
memcpy and a copy with non-temporal stores, which do not read the destination).

``--frameworks`` (also part of the full report) puts fastloss.torch and fastloss.jax beside the
raw kernel (with and without ``out=``) and each framework's own loss (``torch.nn.functional``,
optax or jax.numpy), forward + backward per call, at the large sizes and at 32x10, with the
ratios the targets are about; every allocator gets the same huge-page policy, which the report
names and measures.
"""

import argparse
import json
import os
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
    """The main table's framework rows: PyTorch (F and fastloss.torch) and JAX's jax.numpy twin;
    for softmax_xent optax and fastloss.jax too (--frameworks has those for every loss)."""
    peers = _torch_steps(name, x, t)
    if _importable("jax"):
        twins = {"jax": _jax_loss(name)}
        if name == "softmax_xent" and _importable("optax"):
            twins["optax"] = _optax_loss(name)
        peers.update(_jax_steps(name, x, t, twins, fl=name == "softmax_xent"))
    return peers


# ---- the frameworks' twins: one definition each, used by the main table and --frameworks ---------

def _torch_loss(name):
    """The loss written with torch.nn.functional (or torch ops where F lacks it), reduction "mean"
    as fastloss's, class axis = dim 1; or None."""
    import torch
    import torch.nn.functional as F
    return {
        "softmax_xent": lambda a, b: F.cross_entropy(a, b),
        "multiclass_hinge": lambda a, b: F.multi_margin_loss(a, b),
        "sigmoid_bce": F.binary_cross_entropy_with_logits, "huber": F.huber_loss,
        "hinge": lambda a, b: F.relu(1 - a * b).mean(),  # no F twin: F.hinge_embedding_loss is another loss
        "mse": F.mse_loss, "mae": F.l1_loss, "kl_div": lambda a, b: F.kl_div(a, b, reduction="sum") / a.numel(),  # = "mean", without its warning
        "smooth_l1": F.smooth_l1_loss, "poisson_nll": F.poisson_nll_loss,
        "sigmoid_focal": _torch_sigmoid_focal,
        "log_cosh": lambda a, b: torch.log(torch.cosh(a - b)).mean(),
        "msle": lambda a, b: (torch.log1p(a.clamp(min=1e-7)) - torch.log1p(b.clamp(min=1e-7))).square().mean(),
        "cosine_similarity": lambda a, b: -F.cosine_similarity(a, b, dim=-1).mean(),  # ours, away from zero rows
    }.get(name)


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
            "huber": flt.huber_loss, "hinge": flt.hinge_loss, "mse": flt.mse_loss, "mae": flt.l1_loss,
            "multiclass_hinge": flt.multi_margin_loss, "kl_div": flt.kl_div, "smooth_l1": flt.smooth_l1_loss,
            "poisson_nll": flt.poisson_nll_loss,
            "sigmoid_focal": lambda a, b: flt.sigmoid_focal_loss(a, b, reduction="mean"),
            "log_cosh": flt.log_cosh_loss, "msle": flt.msle_loss,
            "cosine_similarity": flt.cosine_similarity_loss}.get(name)


def _jax_loss(name):
    """The loss in jax.numpy / jax.nn, as a user without optax writes it, or None."""
    import jax
    import jax.numpy as jnp
    if name == "softmax_xent":
        return lambda a, b: jnp.mean(jax.nn.logsumexp(a, -1) - jnp.take_along_axis(a, b[:, None], -1)[:, 0])
    if name == "multiclass_hinge":  # weston_watkins, fastloss's and F.multi_margin_loss's default
        def multiclass_hinge(a, b):
            m = jnp.maximum(1 + a - jnp.take_along_axis(a, b[:, None], -1), 0)
            return jnp.sum(jnp.where(jnp.arange(a.shape[-1]) == b[:, None], 0, m)) / a.size
        return multiclass_hinge
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


def _optax_loss(name):
    """optax.losses' twin, made to compute fastloss's loss (its default options, reduction "mean"),
    or None. optax's multiclass_hinge_loss is Crammer-Singer's (fastloss's default is Weston-Watkins'),
    and optax 0.2.x has no l1, smooth-l1, msle or poisson loss: those get the jax.numpy twin."""
    import optax.losses as ol
    return {
        "softmax_xent": lambda a, b: ol.softmax_cross_entropy_with_integer_labels(a, b).mean(),
        "sigmoid_bce": lambda a, b: ol.sigmoid_binary_cross_entropy(a, b).mean(),
        "huber": lambda a, b: ol.huber_loss(a, b).mean(),
        "hinge": lambda a, b: ol.hinge_loss(a, b).mean(),
        "mse": lambda a, b: ol.squared_error(a, b).mean(),  # = 2 * l2_loss
        "kl_div": lambda a, b: ol.kl_divergence(a, b, axis=None) / a.size,
        "log_cosh": lambda a, b: ol.log_cosh(a, b).mean(),
        "sigmoid_focal": lambda a, b: ol.sigmoid_focal_loss(a, b, alpha=0.25, gamma=2.0).mean(),
        "cosine_similarity": lambda a, b: -ol.cosine_similarity(a, b, epsilon=1e-12).mean(),
    }.get(name)


def _jax_twin(name):
    """(label, loss function) of what a JAX user has: optax's where it has the loss, else the
    jax.numpy one; (None, None) where neither."""
    fn = _optax_loss(name) if _importable("optax") else None
    if fn is not None:
        return "optax", fn
    fn = _jax_loss(name)
    return ("jax", fn) if fn is not None else (None, None)


def _torch_steps(name, x, t):
    """{'torch': the F twin, 'fl.torch': fastloss.torch}, each a zero-argument forward + backward
    from a fresh leaf (x a leaf requiring grad, its .grad cleared each call) returning (loss, grad);
    {} without torch."""
    if not _importable("torch"):
        return {}
    import torch
    torch.set_num_threads(fastloss.get_num_threads())
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def step(fn):
        leaf = xt.detach().requires_grad_()

        def run():
            leaf.grad = None
            loss = fn(leaf, tt)
            loss.backward()
            return loss, leaf.grad
        return run
    return {label: step(fn) for label, fn in (("torch", _torch_loss(name)), ("fl.torch", _fastloss_torch(name)))
            if fn is not None}


class Prepared:
    """A candidate whose every call takes fresh arguments made outside the timed region:
    ``prepare()`` returns them (untimed), ``call(*args)`` is timed. For donated buffers, which
    their call uses up."""

    def __init__(self, prepare, call):
        self.prepare, self.call = prepare, call

    def __call__(self):
        return self.call(*self.prepare())


def _jax_steps(name, x, t, twins, fl=True, donated=False):
    """JAX under ``jit(value_and_grad)``, each a zero-argument call returning (loss, grad) once
    ready: ``twins`` ({label: loss function}, None values skipped), 'fl.jax' (fastloss.jax) with
    ``fl``, and with ``donated`` 'fl.jax donated' (``inplace_grad=True`` under
    ``donate_argnums=0``, a ``Prepared``). {} without jax.

    The inputs are arguments of the jitted step, not constants closed over. XLA still
    constant-folds the part of a gradient that does not depend on them: value_and_grad's seed is
    the constant 1, the mean's backward spreads it as 1/N, and where the loss gathers (optax's
    softmax_cross_entropy_with_integer_labels ``take``s the label logits) its backward is a
    scatter-add of those constants, which at 1000000x10 XLA evaluates at compile time (seconds,
    with a slow_operation_alarm on stderr: ``silence_peers``). That is what an optax user's step
    compiles too, and it is compiled in the untimed warm-up, so the step is left as it is (a seed
    passed as an argument would make fl.jax's backward multiply its whole gradient by it)."""
    if not _importable("jax"):
        return {}
    import jax
    xj, tj = jax.device_put(x), jax.device_put(t)

    def step(fn):
        vg = jax.jit(jax.value_and_grad(fn))
        return lambda: jax.block_until_ready(vg(xj, tj))
    steps = {label: step(fn) for label, fn in twins.items() if fn is not None}
    if fl or donated:
        import fastloss.jax as flj
        fl_loss = getattr(flj, name)
    if fl:
        steps["fl.jax"] = step(lambda a, b: fl_loss(a, b))
    if donated:
        import jax.numpy as jnp
        vg = jax.jit(jax.value_and_grad(lambda a, b: fl_loss(a, b, inplace_grad=True)), donate_argnums=0)
        # Each call donates a fresh copy of x, made (and waited for) before the clock starts: the
        # timed part is the call alone, on a buffer already faulted in, as raw's with out= is (a
        # pool of copies would need one x per call; timing copy + call and subtracting a copy
        # timed apart would add the noise of two medians). The fresh copy is as warm in the cache
        # as a training step's logits, just written by the layer before; raw's x and g were last
        # touched a candidate earlier (all three fit a large last-level cache at --quick sizes).
        steps["fl.jax donated"] = Prepared(lambda: (jnp.array(xj, copy=True).block_until_ready(), tj),
                                           lambda a, b: jax.block_until_ready(vg(a, b)))
    return steps


def _importable(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def time_interleaved(funcs, rounds, min_seconds=2e-3, what=None):
    """Median seconds per call of each function, the rounds interleaved (in an order rotated each
    round) so that noise from other tenants hits every candidate alike. Fast calls (under
    ``min_seconds``) are repeated within a round, after one untimed call: what is timed is a hot
    loop, whose thread pools are awake (after another candidate ran, waking a sleeping pool can
    take milliseconds on a loaded machine, which would swamp a call of microseconds). A
    ``Prepared`` candidate's arguments are made before each call, untimed. ``what`` (the
    workload, e.g. "mse 4096x8192") is what the report's progress line says is being timed."""
    progress = _PROGRESS if what is not None else None
    if progress:
        progress.start(what, len(funcs), rounds)
    reps = {}
    for label, f in funcs.items():
        f()  # warm up: compile, allocate, fault pages in
        once = _seconds_per_call(f, 1)
        if once < min_seconds:  # the best of three, so one disturbed call does not set the count
            once = min(once, _seconds_per_call(f, 1), _seconds_per_call(f, 1))
        reps[label] = max(1, int(min_seconds / max(once, 1e-7)))
    samples = {label: [] for label in funcs}
    labels = list(funcs)
    for r in range(rounds):
        t0 = time.perf_counter()
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotated: no one always first
            if reps[label] > 1:
                funcs[label]()
            samples[label].append(_seconds_per_call(funcs[label], reps[label]))
        if progress:
            progress.round(r + 1, rounds, time.perf_counter() - t0)
    if progress:
        progress.done()
    return {label: float(np.median(s)) for label, s in samples.items()}


# ---- progress: what is being timed, how far it has got, how long the rest will take (stderr) -----

_PROGRESS = None  # the running report's Progress (set by main); None: silent, as a library call is

PLAN_SLOWDOWN = 5  # a typical candidate's call, in copies of its bytes (fastloss ~1-2, NumPy and the frameworks ~10)
PLAN_FIRST_CALL_S = 0.5  # a candidate's first calls: Numba's or XLA's compilation, faulting pages in
PLAN_FRESH_PROCESS_S = 4.0  # numba's time to first result: a fresh Python, fastloss imported, one kernel compiled


def planned_seconds(nbytes, candidates, rounds, min_seconds=2e-3, bandwidth_gbps=10.0):
    """What ``time_interleaved`` of ``candidates`` calls moving ``nbytes`` each should take, from
    the plan alone: each call ``PLAN_SLOWDOWN`` times a copy of its bytes at the measured copy
    bandwidth; every sample at least ``min_seconds`` (fast calls are repeated); per candidate a
    few untimed calls (warm-up, the repeat count) and ``PLAN_FIRST_CALL_S`` of compilation."""
    call = PLAN_SLOWDOWN * nbytes / (bandwidth_gbps * 1e9)
    return candidates * (rounds * (max(call, min_seconds) + call) + 3 * call + PLAN_FIRST_CALL_S)


class Progress:
    """The bench's progress on ``stream`` (stderr: stdout stays the report, e.g. piped to a file).
    ``plan``: [(workload, planned seconds)] in the order they run (``plan_report``). ``begin``
    says what will be timed and the estimate; then each workload's ``start``, ``round`` and
    ``done`` (``time_interleaved`` calls them) update one line in place on a terminal (a bar,
    k/n, elapsed, time left, what is timed now) or, on a pipe or file, print one plain line per
    workload. The time left: the rest of the plan scaled by the elapsed time over the plan of the
    workloads done (the first estimate is the plan's), the current workload's rounds still to run
    times its last round's time once a round is timed."""

    BAR = 20

    def __init__(self, plan, stream=None):
        self.plan = list(plan)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.k = 0  # workloads started
        self.planned_done = self.elapsed_done = 0.0
        self.what, self.started, self.left_here, self.frac, self.note = None, self.t0, None, 0.0, ""
        self.width = 0  # of the line on the terminal now

    def estimate(self):
        return sum(p[1] for p in self.plan)

    def begin(self, header):
        self._line(f"{header}; estimated {_fmt_duration(self.estimate())} (from the plan: each call "
                   f"{PLAN_SLOWDOWN}x a copy of its bytes, {PLAN_FIRST_CALL_S} s of compilation per candidate; "
                   "refined as it runs)")

    def start(self, what, candidates=None, rounds=None):
        self.k += 1
        self.what, self.started, self.left_here, self.frac = what, time.perf_counter(), None, 0.0
        self.note = f"{candidates} x {rounds} rounds" if candidates else ""
        if self.tty:
            self._update()
        else:
            self._line(f"[{self.k}/{self._n()}] {what}{f' ({self.note})' if self.note else ''}; "
                       f"{_fmt_duration(self.started - self.t0)} elapsed, about {_fmt_duration(self.left())} left")

    def round(self, r, rounds, seconds):
        self.left_here, self.frac = (rounds - r) * seconds, r / rounds
        self.note = f"round {r}/{rounds}"
        if self.tty:
            self._update()

    def done(self):
        now = time.perf_counter()
        if self.k <= len(self.plan):
            self.planned_done += self.plan[self.k - 1][1]
            self.elapsed_done = now - self.t0  # the time between workloads (making inputs) too
        self.what = None

    def left(self):
        now = time.perf_counter()
        scale = self.elapsed_done / self.planned_done if self.planned_done > 0 else 1.0
        rest = scale * sum(p[1] for p in self.plan[self.k:])
        if self.what is not None:
            planned = self.plan[self.k - 1][1] if self.k <= len(self.plan) else 0.0
            here = self.left_here if self.left_here is not None else planned * scale - (now - self.started)
            rest += max(here, 0.0)
        return rest

    def finish(self):
        total = time.perf_counter() - self.t0
        self._line(f"done: {self.k} workloads in {_fmt_duration(total)} (estimated {_fmt_duration(self.estimate())} "
                   "at the start)")

    def clear(self):
        """Take the terminal's progress line away (before the report prints)."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def _n(self):
        return max(len(self.plan), self.k)

    def _update(self):
        n, elapsed = self._n(), time.perf_counter() - self.t0
        filled = int(self.BAR * (self.k - 1 + self.frac) / n)
        text = (f"[{'#' * filled}{'.' * (self.BAR - filled)}] {self.k}/{n} {_fmt_duration(elapsed)} elapsed, "
                f"~{_fmt_duration(self.left())} left: {self.what}" + (f" ({self.note})" if self.note else ""))
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def _line(self, text):
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()


def _fmt_duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def _seconds_per_call(f, n):
    """Mean seconds of ``n`` calls of ``f`` (a ``Prepared``: of its timed part only)."""
    if isinstance(f, Prepared):
        total = 0.0
        for _ in range(n):
            args = f.prepare()
            t0 = time.perf_counter()
            f.call(*args)
            total += time.perf_counter() - t0
            del args
        return total / n
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n


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
            times = time_interleaved(candidates(name, x, t), rounds, what=f"{name} {_shape_text(shape)}")
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
            times = time_interleaved(funcs, rounds, what=f"softmax_xent {_shape_text(shape)} forward only")
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
        times = time_interleaved(funcs, rounds, min_seconds, what=f"--small {name} ({label})")
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
        if _PROGRESS:
            _PROGRESS.start(f"numba first call {name} (a fresh process)")
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(name=name)], capture_output=True,
                             text=True, check=True).stdout.split()
        times[name] = (float(out[0]), float(out[1]))
        if _PROGRESS:
            _PROGRESS.done()
    return times


def machine_info(threads):
    info = dict(date=time.strftime("%Y-%m-%d"), python=platform.python_version(),
                platform=platform.platform(), processor=_cpu_name(), threads=threads,
                numpy=np.__version__, fastloss=fastloss.__version__)
    for module in ("numba", "torch", "jax", "optax"):
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
        times = time_interleaved(funcs, rounds, what=f"half precision {name} {_shape_text(shape)}")
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
                              "fl.torch f32": step(flt.cross_entropy, x32)}, rounds,
                             what=f"half precision fl.torch cross_entropy bf16 {_shape_text(shape)}")
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


# --frameworks: fastloss inside PyTorch and JAX beside the raw kernel and each framework's own loss.
# Every call computes the mean loss and its gradient from float32 inputs; the rows of a workload are
# timed interleaved in one run, so only the ratios within a run compare.

FRAMEWORK_RATIOS = (  # (numerator, denominator, target (op, value) or None); "twin": optax's or jax's loss
    ("fl.torch", "raw", ("<=", 1.3)), ("fl.jax", "raw", ("<=", 1.3)), ("fl.jax donated", "raw out=", ("<=", 1.2)),
    ("torch", "fl.torch", None), ("twin", "fl.jax", (">", 1.0)))
SMALL_FRAMEWORK_RATIOS = (("torch", "fl.torch", (">", 1.0)), ("twin", "fl.jax", (">", 1.0)),
                          ("fl.torch", "raw out=", None), ("fl.jax", "raw out=", None))
_FRAMEWORK_LABELS = ("raw", "raw out=", "fl.torch", "torch", "fl.jax", "fl.jax donated", "twin")
HUGEPAGE_PROBE_MB = 64


def framework_sizes(quick=False):
    """{loss: [shapes]}: the bench's large sizes (2**20 elements or more), or with ``quick`` one
    smaller size per loss (its largest quick size)."""
    sizes = QUICK if quick else FULL
    pick = (lambda shapes: shapes[-1:]) if quick else (lambda shapes: [s for s in shapes if np.prod(s) >= 1 << 20])
    return {name: pick(sizes.get(name, sizes["elements"])) for name in SPECS}


def _twin_losses(losses):
    """The losses that have a PyTorch twin or a JAX (optax or jax.numpy) twin in what is installed."""
    has_torch, has_jax = _importable("torch"), _importable("jax")
    return [name for name in losses if (has_torch and _torch_loss(name) is not None)
            or (has_jax and _jax_twin(name)[1] is not None)]


def run_frameworks(quick=False, losses=None, rounds=None, sizes=None, small_shape=(32, 10), min_seconds=1e-2):
    """fastloss.torch and fastloss.jax beside the raw kernel and the frameworks' own losses, at
    ``sizes`` (default ``framework_sizes(quick)``) and at ``small_shape`` (the hot loop), float32,
    every loss that has a twin. Large buffers get one huge-page policy for all (see
    ``_equal_hugepages``); the report says which. Rows of a missing framework are left out."""
    rounds = rounds or (5 if quick else 11)
    sizes = sizes or framework_sizes(quick)
    rng = np.random.default_rng()
    names = _twin_losses(losses or SPECS)
    with _equal_hugepages() as allocation:
        large = [_framework_workload(name, shape, rng, rounds, large=True)
                 for name in names for shape in sizes.get(name, sizes.get("elements", []))]
        small = [_framework_workload(name, small_shape, rng, rounds, large=False, min_seconds=min_seconds)
                 for name in names]
    return dict(section="frameworks", machine=machine_info(fastloss.get_num_threads()),
                threads=_framework_threads(), allocation=allocation, dtype="float32", rounds=rounds,
                load_avg=_load_average(),
                missing=[m for m in ("torch", "jax", "optax") if not _importable(m)],
                results=large, small=dict(shape=list(small_shape), results=small))


def _framework_workload(name, shape, rng, rounds, large, min_seconds=2e-3):
    """One loss at one shape: every candidate timed interleaved, with ratios and targets. ``large``:
    raw without ``out=`` and the donated fl.jax call too (the small part has the fast call only)."""
    x, t = make_problem(name, shape, np.float32, rng)
    fused, g = getattr(fastloss, name + "_and_grad"), np.empty_like(x)
    found = {"raw": lambda: fused(x, t), "raw out=": lambda: fused(x, t, out=g)}
    if not large:
        del found["raw"]
    found.update(_torch_steps(name, x, t))
    twin, notes = None, []
    if _importable("jax"):
        twin, twin_fn = _jax_twin(name)
        found.update(_jax_steps(name, x, t, {} if twin is None else {twin: twin_fn}, fl=True, donated=large))
    if "fl.jax donated" in found:
        note = _check_donated(found["fl.jax donated"])
        if note:
            notes.append(note)
            if note.startswith("skipped"):
                del found["fl.jax donated"]
    twin_label = lambda label: twin if label == "twin" else label
    funcs = {twin_label(label): found[twin_label(label)] for label in _FRAMEWORK_LABELS if twin_label(label) in found}
    scalar = lambda v: float(v.detach() if hasattr(v, "detach") else v)  # numpy, torch or jax
    want = scalar(funcs["raw out="]()[0])
    for label, f in funcs.items():  # each computes the same loss, or the row says not
        got = scalar(f()[0])
        if not np.isclose(got, want, rtol=1e-3, atol=1e-6):
            notes.append(f"{label}'s loss {got:.6g} is not the kernel's {want:.6g}")
    times = time_interleaved(funcs, rounds, min_seconds, what=f"frameworks {name} {_shape_text(shape)}")
    record = dict(loss=name, shape=list(shape), twin=twin, median_s=times, ratios={}, targets={}, met={}, notes=notes)
    for num, den, target in FRAMEWORK_RATIOS if large else SMALL_FRAMEWORK_RATIOS:
        if twin_label(num) in times and twin_label(den) in times:
            key = f"{num}/{den}"
            record["ratios"][key] = ratio = times[twin_label(num)] / times[twin_label(den)]
            if target:
                record["targets"][key] = f"{target[0]}{target[1]}"
                record["met"][key] = bool(ratio <= target[1] if target[0] == "<=" else ratio > target[1])
    del funcs, found, x, t, g
    return record


def _check_donated(step):
    """None if a donated fl.jax call took the donated buffer and left its gradient there; else a
    note ('skipped: ...' where fastloss.jax takes no ``inplace_grad`` yet: the row is left out)."""
    import warnings
    a, b = step.prepare()
    where = a.unsafe_buffer_pointer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _, grad = step.call(a, b)
        except TypeError as e:
            if "inplace_grad" not in str(e):
                raise
            return f"skipped fl.jax donated: fastloss.jax takes no inplace_grad yet ({type(e).__name__})"
    if not a.is_deleted():
        return "fl.jax donated: XLA did not take the donated logits" + "".join(f"; {w.message}" for w in caught)
    if grad.unsafe_buffer_pointer() != where:
        return "fl.jax donated: the gradient is not in the donated logits' buffer"
    return None


def _load_average():
    """The 1-minute load average at the end of the run (others' work shows here), or None. On a
    loaded machine a framework's thread pool waits for its threads to be scheduled: multi-thread
    calls suffer most there, a torch op on 32x10 can take a scheduler slice (~20 ms) instead of
    40 us."""
    import os
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _framework_threads():
    """The threads each side computes with: fastloss's count (torch is set to it); XLA's CPU
    pool is its own, one thread per usable core, and cannot be resized once started."""
    import os
    threads = dict(fastloss=fastloss.get_num_threads())
    if _importable("torch"):
        import torch
        threads["torch"] = torch.get_num_threads()
    if _importable("jax"):
        threads["xla"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return threads


def _thp_policy():
    """The kernel's transparent huge page policy ('always', 'madvise' or 'never'), or None."""
    import re
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    found = re.search(r"\[(\w+)\]", text)
    return found.group(1) if found else text.strip()


def _numpy_madvise_setter():
    """NumPy's switch for asking huge pages (madvise) for its large buffers, or None."""
    import importlib
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._set_madvise_hugepage
        except (ImportError, AttributeError):
            continue
    return None


GLIBC_HUGEPAGES = "glibc.malloc.hugetlb=1"  # in GLIBC_TUNABLES: malloc asks huge pages for every mmap'd chunk


class _equal_hugepages:
    """One huge-page policy for NumPy's, torch's and XLA's large buffers while it is entered, and
    (as the value entered) what it is, with the huge pages measured in a fresh buffer of each.

    The kernel's policy is not changed. Under 'always' every large anonymous buffer may get huge
    pages and under 'never' none does, whoever allocates it. Under 'madvise' only a buffer whose
    allocator asks does: NumPy asks by default, torch only with THP_MEM_ALLOC_ENABLE=1, XLA's
    CPU allocator never. So, under 'madvise':

    * by default NumPy's asking is turned off here: no large buffer gets huge pages (torch's
      THP_MEM_ALLOC_ENABLE, if set, is reported, not changed: torch reads it once per process);
    * started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35 or later; it must be set
      before the process starts), glibc's malloc, under all three, asks for every large buffer:
      every one gets huge pages, NumPy's as by default.

    The probe in the report shows what each allocator got either way."""

    def __enter__(self):
        import os
        policy = _thp_policy()
        glibc_asks = GLIBC_HUGEPAGES in os.environ.get("GLIBC_TUNABLES", "").split(":")
        setter = _numpy_madvise_setter()
        self.setter = setter
        self.restore = setter(False) if (policy == "madvise" and setter and not glibc_asks) else None
        info = dict(thp=policy, glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
                    numpy_madvise="off" if self.restore is not None else "as it was",
                    torch_thp_env=os.environ.get("THP_MEM_ALLOC_ENABLE"))
        info["huge_mb"] = _hugepage_probe()
        info["probe_mb"] = HUGEPAGE_PROBE_MB
        huge = [v for v in info["huge_mb"].values() if v is not None]
        info["equal"] = bool(huge) and (max(huge) - min(huge) <= 4)  # within two 2 MB pages
        said = [f"THP '{policy}'" if policy else "THP unknown (no /sys/kernel/mm/transparent_hugepage)"]
        if policy == "madvise" and glibc_asks:
            said.append(f"glibc's malloc asks for every large buffer (GLIBC_TUNABLES={GLIBC_HUGEPAGES})")
        elif self.restore is not None:
            said.append("NumPy's madvise turned off for this section (torch "
                        + ("asks: THP_MEM_ALLOC_ENABLE is set" if info["torch_thp_env"] not in (None, "", "0")
                           else "and XLA do not ask") + ")")
        if info["equal"]:
            said.append("no large buffer gets huge pages" if max(huge) <= 4 else
                        "every large buffer gets huge pages" if min(huge) >= HUGEPAGE_PROBE_MB - 4 else
                        "every large buffer gets the same share of huge pages")
        else:
            said.append("NOT EQUAL: " + ", ".join(f"{k} {v:.0f} MB" for k, v in info["huge_mb"].items()
                                                  if v is not None) + f" of huge pages in {HUGEPAGE_PROBE_MB} MB")
        info["policy"] = "; ".join(said)
        return info

    def __exit__(self, *exc):
        if self.restore is not None:
            self.setter(self.restore)
        return False


def _hugepage_probe(mb=HUGEPAGE_PROBE_MB):
    """{allocator: MB of huge pages backing a fresh, touched ``mb`` MB buffer} for NumPy, torch and
    XLA (what is installed), read from /proc/self/smaps; values None where it cannot be read."""
    n = mb << 18  # float32 elements
    found = {}
    a = np.ones(n, np.float32)
    found["numpy"] = _huge_mb_at(a.ctypes.data, a.nbytes)
    del a
    if _importable("torch"):
        import torch
        a = torch.ones(n)
        found["torch"] = _huge_mb_at(a.data_ptr(), a.nbytes)
        del a
    if _importable("jax"):
        import jax.numpy as jnp
        a = jnp.ones(n, jnp.float32).block_until_ready()
        found["xla"] = _huge_mb_at(a.unsafe_buffer_pointer(), a.nbytes)
        del a
    return found


def _huge_mb_at(address, nbytes):
    """MB of AnonHugePages in the mappings overlapping [address, address + nbytes) (a buffer that
    was madvised is split from its unaligned head into a mapping of its own), or None."""
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(maxsplit=1)[0] if line.strip() else ""
                if "-" in first and not first.endswith(":"):  # a mapping's header: lo-hi perms ...
                    lo, hi = (int(v, 16) for v in first.split("-"))
                    inside = lo < address + nbytes and address < hi
                elif inside and first == "AnonHugePages:":
                    total += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return total / 1024


def _framework_header(report):
    m, th, al = report["machine"], report["threads"], report["allocation"]
    pools = ([f"torch {th['torch']}"] if "torch" in th else []) + ([f"XLA its own pool of {th['xla']}"]
                                                                   if "xla" in th else [])
    threads = f"{th['fastloss']} threads" + (f" ({', '.join(pools)})" if pools else "")
    probe = ", ".join(f"{k} {'?' if v is None else f'{v:.0f}'}" for k, v in al["huge_mb"].items())
    load = report.get("load_avg")
    lines = [f"fastloss bench --frameworks: loss + gradient per call, float32, {threads}, "
             f"{m['processor']}, {m['date']}" + ("" if load is None else f", load average {load:.1f}"),
             f"allocation: {al['policy']} (huge pages in a fresh {al['probe_mb']} MB buffer: {probe} MB)",
             "raw: fastloss.<loss>_and_grad(x, t), allocating its gradient; raw out=: into a preallocated g; "
             "fl.torch, torch: fastloss.torch / F",
             "forward + backward from a fresh leaf; fl.jax, twin (optax's loss where optax has it, else "
             "jax.numpy's): jit(value_and_grad);",
             "donated: fl.jax with inplace_grad=True under donate_argnums=0, a fresh copy of x per call made "
             "untimed"]
    if report["missing"]:
        lines.append(f"not installed (their rows left out): {', '.join(report['missing'])}")
    return lines


def _framework_columns(rows, large):
    """(time labels, ratio keys, {ratio key: target text}) that some row of ``rows`` has."""
    labels = [label for label in _FRAMEWORK_LABELS if any(
        (r["twin"] if label == "twin" else label) in r["median_s"] for r in rows)]
    keys = [f"{a}/{b}" for a, b, _ in (FRAMEWORK_RATIOS if large else SMALL_FRAMEWORK_RATIOS)
            if any(f"{a}/{b}" in r["ratios"] for r in rows)]
    targets = {k: next((r["targets"][k] for r in rows if k in r["targets"]), "") for k in keys}
    return labels, keys, targets


def _framework_table(rows, large):
    """Text lines: a times table and a ratios table (each ratio with its target and met/NO)."""
    labels, keys, targets = _framework_columns(rows, large)
    head = f"{'loss':17s} {'shape':>11s}"
    lines = [head + "".join(f" {('donated' if l == 'fl.jax donated' else l):>11s}" for l in labels)
             + ("  twin is" if "twin" in labels else "")]
    for r in rows:
        cells = [r["median_s"].get(r["twin"] if l == "twin" else l) for l in labels]
        lines.append(f"{r['loss']:17s} {'x'.join(map(str, r['shape'])):>11s}"
                     + "".join(f" {_fmt_time(c) if c is not None else '-':>11s}" for c in cells)
                     + (f"  {r['twin'] or '-'}" if "twin" in labels else ""))
    width = [max(len(k), len(targets[k]) + 2, 10) for k in keys]
    lines += ["", f"{'ratios':17s} {'':>11s}" + "".join(f" {k:>{w}s}" for k, w in zip(keys, width)),
              f"{'(target)':17s} {'':>11s}" + "".join(
                  f" {('(' + targets[k] + ')') if targets[k] else '':>{w}s}" for k, w in zip(keys, width))]
    for r in rows:
        cells = []
        for k, w in zip(keys, width):
            if k not in r["ratios"]:
                cells.append(f" {'-':>{w}s}")
                continue
            text = f"{r['ratios'][k]:.2f}x" + ("" if k not in r["met"] else (" ok" if r["met"][k] else " NO"))
            cells.append(f" {text:>{w}s}")
        lines.append(f"{r['loss']:17s} {'x'.join(map(str, r['shape'])):>11s}" + "".join(cells))
    met = [v for r in rows for v in r["met"].values()]
    lines.append(f"targets met: {sum(met)} of {len(met)}")
    notes = {}  # note: the workloads it is about
    for r in rows:
        for n in r["notes"]:
            notes.setdefault(n, []).append(f"{r['loss']} {'x'.join(map(str, r['shape']))}")
    for n, where in notes.items():
        lines.append(f"note ({'every row' if len(where) == len(rows) > 1 else ', '.join(where)}): {n}")
    return lines


def format_frameworks(report):
    lines = _framework_header(report) + [""] + _framework_table(report["results"], large=True)
    small = report["small"]
    lines += ["", f"small calls, {'x'.join(map(str, small['shape']))} float32 (raw out=: the fast call):", ""]
    return "\n".join(lines + _framework_table(small["results"], large=False))


def format_frameworks_markdown(report):
    """The --frameworks report as Markdown tables (README): times, then ratios; a ratio off its
    target in bold."""
    m, al = report["machine"], report["allocation"]
    lines = [f"{m['processor']}, {m['threads']} threads, {m['date']}; PyTorch {m.get('torch', '-')}, JAX "
             f"{m.get('jax', '-')}, optax {m.get('optax', '-')}; float32, loss + gradient per call; "
             f"allocation: {al['policy']}.", ""]
    for title, rows, large in (("", report["results"], True),
                               (f"Small calls, {'x'.join(map(str, report['small']['shape']))}:",
                                report["small"]["results"], False)):
        if not rows:
            continue
        labels, keys, targets = _framework_columns(rows, large)
        if title:
            lines += [title, ""]
        lines += ["| loss | shape | " + " | ".join(labels) + " | " + " | ".join(
                      f"{k} ({targets[k]})" if targets[k] else k for k in keys) + " |",
                  "|---|---|" + "---|" * (len(labels) + len(keys))]
        for r in rows:
            times = []
            for label in labels:
                s = r["median_s"].get(r["twin"] if label == "twin" else label)
                times.append("" if s is None else _fmt_time(s).strip() + (f" ({r['twin']})" if label == "twin" else ""))
            ratios = [("" if k not in r["ratios"] else (f"{r['ratios'][k]:.2f}x" if r["met"].get(k, True)
                                                       else f"**{r['ratios'][k]:.2f}x**")) for k in keys]
            lines.append(f"| {r['loss']} | {'x'.join(map(str, r['shape']))} | " + " | ".join(times + ratios) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


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


def _shape_text(shape):
    return "x".join(map(str, shape))


def _planned_bytes(name, shape, itemsize=4):
    """moved_bytes of ``make_problem(name, shape)`` without making it: class labels (int64) or
    targets the input's size."""
    spec, n = SPECS[name], int(np.prod(shape))
    labels = spec.layout == ROWS and spec.targets != VALUES
    return 2 * n * itemsize + (8 * n // shape[-1] if labels else n * itemsize)


def plan_report(small=False, half=False, frameworks=False, quick=False, losses=None, dtype=np.float32,
                rounds=None, startup=False, whole=False, bandwidth_gbps=10.0):
    """[(workload, planned seconds, candidates, shape, rounds)]: what ``main`` will time, in order,
    each with ``planned_seconds`` at ``bandwidth_gbps`` (the arguments are main's; ``whole``: the
    full report's half precision and frameworks sections after the main table)."""
    has = {m: _importable(m) for m in ("torch", "jax", "optax")}
    compiled = [b for b in ("cython", "numba") if available(b)]
    plan = []

    def add(what, shape, nbytes, candidates, r, min_seconds=2e-3):
        plan.append((what, planned_seconds(nbytes, candidates, r, min_seconds, bandwidth_gbps), candidates,
                     tuple(shape), r))
    if small:
        for name, label, x, *_ in small_cases(np.random.default_rng()):
            add(f"--small {name} ({label})", x.shape, _planned_bytes(name, x.shape), 1 + len(compiled), rounds or 7, 1e-2)
        return plan
    if not (half or frameworks):
        sizes, r, itemsize = QUICK if quick else FULL, rounds or (5 if quick else 11), np.dtype(dtype).itemsize
        for name in losses or SPECS:
            peers = 2 * has["torch"] + (has["jax"] and _jax_loss(name) is not None)  # as _peers
            if name == "softmax_xent" and has["jax"]:
                peers += 1 + has["optax"]  # fl.jax, optax
            for shape in sizes.get(name, sizes["elements"]):
                add(f"{name} {_shape_text(shape)}", shape, _planned_bytes(name, shape, itemsize),
                    1 + len(compiled) + peers, r)
        if "softmax_xent" in (losses or SPECS):
            for shape in sizes["softmax_xent"][1:]:
                add(f"softmax_xent {_shape_text(shape)} forward only", shape, _planned_bytes("softmax_xent", shape)
                    - 4 * int(np.prod(shape)), 1 + len(compiled), r)
        if startup and available("numba"):
            plan += [(f"numba first call {name} (a fresh process)", PLAN_FRESH_PROCESS_S, 1, (32, 10), 1)
                     for name in losses or SPECS]
    if half or whole:
        r, dtypes = rounds or (5 if quick else 9), 1 + len(_half_dtypes())
        for name, (full, short, _) in HALF_WORKLOADS.items():
            shape = short if quick else full
            add(f"half precision {name} {_shape_text(shape)}", shape, _planned_bytes(name, shape),
                len(compiled) * dtypes, r)
        if has["torch"] and "bfloat16" in _half_dtypes():
            shape = HALF_WORKLOADS["softmax_xent"][1 if quick else 0]
            add(f"half precision fl.torch cross_entropy bf16 {_shape_text(shape)}", shape,
                _planned_bytes("softmax_xent", shape), 3, r)
    if frameworks or whole:
        r, sizes = rounds or (5 if quick else 11), framework_sizes(quick)
        names = _twin_losses((losses if frameworks else None) or SPECS)
        for large in (True, False):
            for name in names:
                torch_rows = 2 * (has["torch"] and _torch_loss(name) is not None)
                jax_rows = has["jax"] and (1 + (_jax_twin(name)[1] is not None) + large)
                for shape in (sizes.get(name, sizes.get("elements", [])) if large else [(32, 10)]):
                    add(f"frameworks {name} {_shape_text(shape)}", shape, _planned_bytes(name, shape),
                        1 + large + torch_rows + jax_rows, r, 2e-3 if large else 1e-2)
    return plan


def _plan_header(plan, threads):
    """'timing 41 workloads (263 candidate rows), 32x10 to 4096x32000, 2 threads, 5-11 rounds'."""
    shapes = sorted({p[3] for p in plan}, key=lambda s: (int(np.prod(s)), s))
    rounds = sorted({p[4] for p in plan})
    return (f"timing {len(plan)} workloads ({sum(p[2] for p in plan)} candidate rows), "
            + (f"{_shape_text(shapes[0])} to {_shape_text(shapes[-1])}" if len(shapes) > 1 else _shape_text(shapes[0]))
            + f", {threads} threads, {rounds[0]}" + (f"-{rounds[-1]}" if len(rounds) > 1 else "") + " rounds")


def silence_peers():
    """Keep the frameworks' log noise out of the report (the command line calls it first): XLA's
    C++ logs (absl; e.g. its 20-line slow_operation_alarm when it constant-folds optax's gradient
    at 1000000x10, see ``_jax_steps``) with TF_CPP_MIN_LOG_LEVEL=3, read when jax is imported (the
    "jax" Python logger is left alone: setting its level resets XLA's); torch's C++ logs with
    TORCH_CPP_LOG_LEVEL=ERROR; Python warnings raised in torch, jax, jaxlib or optax. A value of
    either variable already set is kept (set TF_CPP_MIN_LOG_LEVEL=0 to see XLA's logs); errors
    still raise, and fastloss's and NumPy's warnings still show."""
    import warnings
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", module=r"(torch|jax|jaxlib|optax)(\.|$)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastloss.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds: under a minute")
    parser.add_argument("--small", action="store_true", help="the hot loop: 32x10 float32, every loss and "
                        "common option, cython and numba beside hand-written NumPy, against per-call targets")
    parser.add_argument("--loss", action="append", choices=list(SPECS), help="only these losses")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--half", action="store_true", help="half precision: float16 and bfloat16 beside "
                        "float32 (softmax_xent, mse, huber; fastloss.torch on bfloat16), against targets")
    parser.add_argument("--frameworks", action="store_true", help="fastloss.torch and fastloss.jax beside "
                        "the raw kernel and PyTorch's, optax's or jax.numpy's own loss, large sizes and 32x10, "
                        "with ratios against targets; one huge-page policy for every allocator: none by default, "
                        f"all when started with GLIBC_TUNABLES={GLIBC_HUGEPAGES}")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per workload")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    parser.add_argument("--startup", action="store_true",
                        help="also time numba's first call per loss with --quick (always done without)")
    parser.add_argument("--json", metavar="FILE", help="also write the data as JSON")
    parser.add_argument("--markdown", metavar="JSON", help="print the large workloads of a kept JSON report "
                        "as a Markdown table (and its framework section's), and exit")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw %% of copy bandwidth (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (what is timed, how far it "
                        "has got, the time left; a line updated in place on a terminal, plain lines otherwise)")
    args = parser.parse_args(argv)
    if (args.small or args.half or args.frameworks) and args.plot:
        parser.error("--plot draws the full report, not --small, --half or --frameworks")
    if args.markdown:
        with open(args.markdown) as f:
            kept = json.load(f)
        if kept.get("section") == "frameworks":
            print(format_frameworks_markdown(kept))
            return
        print(format_markdown(kept))
        if "frameworks" in kept:
            print("\n" + format_frameworks_markdown(kept["frameworks"]))
        return
    silence_peers()
    if args.threads:
        fastloss.set_num_threads(args.threads)
    global _PROGRESS
    startup = not args.quick or args.startup
    if not args.quiet:
        threads = fastloss.get_num_threads()
        plan = plan_report(args.small, args.half, args.frameworks, args.quick, args.loss, np.dtype(args.dtype),
                           args.rounds, startup, whole=not (args.small or args.half or args.frameworks or args.loss),
                           bandwidth_gbps=max(copy_bandwidths(threads, 1 << 26, 3).values()))
        _PROGRESS = Progress(plan)
        _PROGRESS.begin("fastloss bench: " + _plan_header(plan, threads))

    def show(text):
        if _PROGRESS:
            _PROGRESS.clear()
        print(text, flush=True)
    try:
        report = _run_main(args, startup, show)
        if _PROGRESS:
            _PROGRESS.finish()
    finally:
        if _PROGRESS:
            _PROGRESS.clear()
        _PROGRESS = None
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)


def _run_main(args, startup, show):
    """The report ``args`` ask for, each section shown as it is done."""
    if args.small:
        report = run_small(args.rounds)
        show(format_small(report))
    elif args.half:
        report = run_half(args.quick, args.rounds)
        show(format_half(report))
    elif args.frameworks:
        report = run_frameworks(args.quick, args.loss, args.rounds)
        show(format_frameworks(report))
    else:
        report = run(args.quick, args.loss, np.dtype(args.dtype), args.rounds, startup=startup)
        show(format_table(report))
        if not args.loss:  # the whole report: half precision and the frameworks too
            report["half"] = run_half(args.quick, args.rounds)
            show("\n" + format_half(report["half"]))
            report["frameworks"] = run_frameworks(args.quick, rounds=args.rounds)
            show("\n" + format_frameworks(report["frameworks"]))
    return report


if __name__ == "__main__":
    main()
