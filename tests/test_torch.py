"""fastloss.torch against torch.nn.functional: values, gradients, gradcheck, torch.compile,
the in-place gradient and the nn.Module wrappers. Class axis dim 1, as F."""

import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss.torch as ft  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed, scale=2.0):
    return torch.randn(shape, generator=gen(seed), dtype=dtype) * scale


def value_and_grad(fn, x, reduction, seed=99):
    """The loss and d(loss . r)/dx for a random r ('none') or d(loss)/dx (reduced)."""
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x)
    # r drawn in float64 whatever the dtype (torch.rand draws other numbers in other dtypes)
    r = (torch.rand(loss.shape, generator=gen(seed), dtype=torch.float64) + 0.5).to(loss.dtype) \
        if reduction == "none" else 1.0
    (loss * r).sum().backward()
    return loss.detach(), x.grad


def assert_matches(ours, theirs, x, reduction, dtype):
    lo, go = value_and_grad(ours, x, reduction)
    lt, gt = value_and_grad(theirs, x, reduction)
    assert lo.shape == lt.shape and lo.dtype == lt.dtype == dtype
    torch.testing.assert_close(lo, lt, **TOL[dtype])
    assert go.shape == x.shape and go.dtype == dtype
    torch.testing.assert_close(go, gt, **TOL[dtype])


# ---- one F-equivalent per loss, for every option and reduction -----------------------------

def ce_inputs(shape, dtype, probs=False, ignore=None, seed=0):
    x = randn(shape, dtype, seed)
    c = shape[1] if len(shape) > 1 else shape[0]
    target_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if probs:
        t = torch.rand(shape, generator=gen(seed + 1), dtype=dtype)
        return x, t / t.sum(dim=1 if len(shape) > 1 else 0, keepdim=True)
    y = torch.randint(0, c, target_shape, generator=gen(seed + 1))
    if ignore is not None and y.numel() > 1:
        y.view(-1)[::3] = ignore
    return x, y


CE_CASES = [
    {},
    {"weight": True},
    {"ignore_index": 2},
    {"ignore_index": -100},
    {"label_smoothing": 0.1},
    {"weight": True, "ignore_index": 1, "label_smoothing": 0.2},
    {"probs": True},
    {"probs": True, "weight": True, "label_smoothing": 0.15},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, case", [(shape, case) for shape in [(6, 5), (4, 5, 3), (5,)] for case in CE_CASES
                                         if len(shape) > 1 or "ignore_index" not in case],  # (5,): one label
                         ids=lambda v: str(v) if isinstance(v, tuple) else "-".join(v) or "defaults")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_F(case, shape, dtype, reduction):
    x, y = ce_inputs(shape, dtype, probs=case.get("probs", False), ignore=case.get("ignore_index"))
    opts = {k: v for k, v in case.items() if k in ("ignore_index", "label_smoothing")}
    if case.get("weight"):
        opts["weight"] = torch.rand(shape[1] if len(shape) > 1 else shape[0], generator=gen(7), dtype=dtype) + 0.2
    assert_matches(lambda x: ft.cross_entropy(x, y, reduction=reduction, **opts),
                   lambda x: F.cross_entropy(x, y, reduction=reduction, **opts), x, reduction, dtype)


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_z_loss(probs, reduction):
    """z_loss adds z * lse(x)**2 per row, weighted like the row."""
    dtype, z = torch.float64, 1e-2
    x, y = ce_inputs((4, 6, 2), dtype, probs=probs)
    w = torch.rand(6, generator=gen(3), dtype=dtype) + 0.2

    def expected(x):
        item = F.cross_entropy(x, y, weight=w, reduction="none")
        row_w = (w[:, None] * y).sum(1) if probs else w[y]
        item = item + z * row_w * torch.logsumexp(x, dim=1) ** 2
        if reduction == "none":
            return item
        return item.sum() / (row_w.sum() if not probs else item.numel()) if reduction == "mean" else item.sum()

    assert_matches(lambda x: ft.cross_entropy(x, y, w, z_loss=z, reduction=reduction),
                   expected, x, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", [{}, {"weight": "elements"}, {"pos_weight": True},
                                  {"weight": "row", "pos_weight": True}], ids=lambda c: "-".join(c) or "defaults")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_F(case, dtype, reduction):
    shape = (5, 4)
    x = randn(shape, dtype, 0)
    t = torch.rand(shape, generator=gen(1), dtype=dtype)
    opts = {}
    if case.get("weight") == "elements":
        opts["weight"] = torch.rand(shape, generator=gen(2), dtype=dtype) + 0.2
    elif case.get("weight") == "row":
        opts["weight"] = torch.rand(shape[-1], generator=gen(2), dtype=dtype) + 0.2
    if case.get("pos_weight"):
        opts["pos_weight"] = torch.rand(shape[-1], generator=gen(3), dtype=dtype) * 3 + 0.2
    assert_matches(lambda x: ft.binary_cross_entropy_with_logits(x, t, reduction=reduction, **opts),
                   lambda x: F.binary_cross_entropy_with_logits(x, t, reduction=reduction, **opts),
                   x, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huber_matches_F(delta, dtype, reduction):
    x, t = randn((4, 3, 2), dtype, 0), randn((4, 3, 2), dtype, 1)
    assert_matches(lambda x: ft.huber_loss(x, t, reduction, delta),
                   lambda x: F.huber_loss(x, t, reduction=reduction, delta=delta), x, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_l1_match_F(name, dtype, reduction):
    x, t = randn((4, 3, 2), dtype, 0), randn((4, 3, 2), dtype, 1)
    assert_matches(lambda x: getattr(ft, name)(x, t, reduction=reduction),
                   lambda x: getattr(F, name)(x, t, reduction=reduction), x, reduction, dtype)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
def test_kl_div_matches_F(log_target, dtype, reduction):
    x = torch.log_softmax(randn((4, 5), dtype, 0), dim=1)
    t = torch.softmax(randn((4, 5), dtype, 1), dim=1)
    t = t.log() if log_target else t
    assert_matches(lambda x: ft.kl_div(x, t, reduction=reduction, log_target=log_target),
                   lambda x: F.kl_div(x, t, reduction=reduction, log_target=log_target), x, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", [dict(margin=1.0), dict(margin=0.5, squared=True), dict(margin=2.0, zero_one=True)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_matches_formula(case, dtype, reduction):
    x = randn((5, 4), dtype, 0)
    y = torch.randint(0, 2, (5, 4), generator=gen(1)).to(dtype)
    signs = y * 2 - 1
    if not case.get("zero_one"):
        y = signs
    margin, squared = case["margin"], case.get("squared", False)

    def expected(x):
        h = torch.clamp(margin - signs * x, min=0)
        h = h**2 if squared else h
        return {"mean": h.mean(), "sum": h.sum(), "none": h}[reduction]

    assert_matches(lambda x: ft.hinge_loss(x, y, margin, squared=squared, reduction=reduction),
                   expected, x, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(6, 5), (5,), (4, 5, 3)], ids=str)
@pytest.mark.parametrize("case", [dict(p=1), dict(p=2), dict(p=1, margin=0.5, weight=True),
                                  dict(p=2, margin=2.0, weight=True)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin_matches_F(case, shape, dtype, reduction):
    x, y = ce_inputs(shape, dtype)
    opts = dict(p=case["p"], margin=case.get("margin", 1.0))
    if case.get("weight"):
        opts["weight"] = torch.rand(5, generator=gen(5), dtype=dtype) + 0.2

    def theirs(x):
        if x.dim() <= 2:
            return F.multi_margin_loss(x, y, reduction=reduction, **opts)
        # F takes (N, C) only: move the class axis last and flatten the rest
        item = F.multi_margin_loss(x.movedim(1, -1).reshape(-1, x.shape[1]), y.reshape(-1), reduction="none", **opts)
        item = item.reshape(y.shape)
        return {"mean": item.mean(), "sum": item.sum(), "none": item}[reduction]

    assert_matches(lambda x: ft.multi_margin_loss(x, y, reduction=reduction, **opts), theirs, x, reduction, dtype)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin_crammer_singer(squared, reduction):
    dtype = torch.float64
    x, y = ce_inputs((6, 5, 2), dtype)
    w = torch.rand(5, generator=gen(5), dtype=dtype) + 0.2

    def expected(x):
        s_y = x.gather(1, y[:, None]).squeeze(1)
        others = x.masked_fill(F.one_hot(y, 5).movedim(-1, 1).bool(), float("-inf"))
        h = torch.clamp(0.5 + others.amax(1) - s_y, min=0)
        item = w[y] * (h**2 if squared else h)
        return {"mean": item.mean(), "sum": item.sum(), "none": item}[reduction]

    assert_matches(lambda x: ft.multi_margin_loss(x, y, 2 if squared else 1, 0.5, w, mode="crammer_singer",
                                                  reduction=reduction), expected, x, reduction, dtype)
    # squared= is the fastloss spelling of p=2
    assert_matches(lambda x: ft.multi_margin_loss(x, y, margin=0.5, weight=w, squared=squared,
                                                  mode="crammer_singer", reduction=reduction),
                   expected, x, reduction, dtype)


# ---- gradcheck in float64 for every loss --------------------------------------------------

def _gradcheck_cases():
    d = torch.float64
    x = randn((4, 5), d, 10)
    y = torch.randint(0, 5, (4,), generator=gen(11))
    t = randn((4, 5), d, 12)
    probs = torch.softmax(randn((4, 5), d, 13), 1)
    signs = torch.randint(0, 2, (4, 5), generator=gen(14)).to(d) * 2 - 1
    w = torch.rand(5, generator=gen(15), dtype=d) + 0.2
    counts = torch.poisson(torch.full((4, 5), 2.0, dtype=d), generator=gen(16))
    return {
        "cross_entropy": (lambda x, r: ft.cross_entropy(x, y, w, label_smoothing=0.1, z_loss=0.01, reduction=r), x),
        "cross_entropy_probs": (lambda x, r: ft.cross_entropy(x, probs, reduction=r), x),
        "cross_entropy_3d": (lambda x, r: ft.cross_entropy(x, y[:4].reshape(1, 4), reduction=r), x.T[None]),
        "bce": (lambda x, r: ft.binary_cross_entropy_with_logits(x, probs, w, pos_weight=w * 2, reduction=r), x),
        "huber": (lambda x, r: ft.huber_loss(x, t, r, 0.7), x),
        "hinge": (lambda x, r: ft.hinge_loss(x, signs, 0.8, reduction=r), x),
        "hinge_squared": (lambda x, r: ft.hinge_loss(x, signs, squared=True, reduction=r), x),
        "multi_margin": (lambda x, r: ft.multi_margin_loss(x, y, 2, 0.9, w, reduction=r), x),
        "crammer_singer": (lambda x, r: ft.multi_margin_loss(x, y, mode="crammer_singer", reduction=r), x),
        "mse": (lambda x, r: ft.mse_loss(x, t, reduction=r), x),
        "l1": (lambda x, r: ft.l1_loss(x, t, reduction=r), x),
        "kl_div": (lambda x, r: ft.kl_div(torch.log_softmax(x, 1), probs, reduction=r), x),
        "kl_div_log_target": (lambda x, r: ft.kl_div(x, probs.log(), log_target=True, reduction=r), x),
        "smooth_l1": (lambda x, r: ft.smooth_l1_loss(x, t, beta=0.6, reduction=r), x),
        "log_cosh": (lambda x, r: ft.log_cosh_loss(x, t, reduction=r), x),
        "msle": (lambda x, r: ft.msle_loss(x, t.abs(), reduction=r), x.abs() + 0.1),
        "poisson_nll": (lambda x, r: ft.poisson_nll_loss(x, counts, full=True, reduction=r), x),
        "poisson_nll_rates": (lambda x, r: ft.poisson_nll_loss(x, counts, False, eps=1e-3, reduction=r),
                              x.abs() + 0.1),
        "sigmoid_focal": (lambda x, r: ft.sigmoid_focal_loss(x, probs, 0.6, 1.5, r), x),
        "cosine_similarity": (lambda x, r: ft.cosine_similarity_loss(x, t, reduction=r), x),
        "cosine_similarity_3d": (lambda x, r: ft.cosine_similarity_loss(x, t.T[None], reduction=r),
                                 x.T[None]),
    }


GRADCHECK = _gradcheck_cases()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck(name, reduction):
    fn, x = GRADCHECK[name]
    x = x.detach().clone().contiguous().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, reduction), (x,), eps=1e-6, atol=1e-7)


# ---- custom op registration, torch.compile --------------------------------------------------

@pytest.mark.parametrize("name", ["softmax_xent", "sigmoid_bce", "multiclass_hinge"])
def test_opcheck(name):
    """The ops' schema, fake (meta) kernel and autograd registration agree with their eager runs."""
    x = randn((4, 5), torch.float32, 0).requires_grad_(True)
    if name == "sigmoid_bce":
        args = (x, torch.rand(4, 5, generator=gen(1)), "mean", "auto", None, torch.ones(5) * 2)
    elif name == "softmax_xent":
        args = (x, torch.randint(0, 5, (4,), generator=gen(1)), "none", "auto", torch.ones(5), -100, 0.1, 0.0)
    else:
        args = (x, torch.randint(0, 5, (4,), generator=gen(1)), "sum", "auto", 1.0, False, None, "weston_watkins")
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(getattr(torch.ops.fastloss, name).default, args, test_utils=utils)
    torch.library.opcheck(getattr(torch.ops.fastloss, name + "_forward").default, args, test_utils=utils[:2])


def _train(loss_fn, steps=3, compile_=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    h = torch.randn(32, 16, generator=gen(1))
    y = torch.randint(0, 10, (32,), generator=gen(2))

    def step_loss(h, y):
        return loss_fn(model(h), y)

    fn = torch.compile(step_loss, fullgraph=True) if compile_ else step_loss
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fn(h, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.weight.detach().clone()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_training_step():
    torch._dynamo.reset()
    ours, w_ours = _train(lambda z, y: ft.cross_entropy(z, y, label_smoothing=0.1), compile_=True)
    theirs, w_theirs = _train(lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1))
    assert ours[-1] < ours[0]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_ours, w_theirs, rtol=1e-5, atol=1e-6)


# ---- in-place gradient ---------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_grad_matches_and_reuses_the_logits(reduction):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6)
    h = torch.randn(10, 8, generator=gen(1))
    y = torch.randint(0, 6, (10,), generator=gen(2))
    r = torch.rand(10, generator=gen(3)) + 0.5 if reduction == "none" else torch.tensor(2.0)
    grads = []
    for inplace in (True, False):
        lin.zero_grad()
        logits = lin(h)
        if inplace:
            loss = ft.cross_entropy(logits, y, reduction=reduction, inplace_grad=True)
            # the forward already wrote d(loss)/d(logits), per row for 'none', over the logits
            fresh = lin(h).detach().requires_grad_(True)
            F.cross_entropy(fresh, y, reduction=reduction).sum().backward()
            torch.testing.assert_close(logits.detach(), fresh.grad)
        else:
            loss = F.cross_entropy(logits, y, reduction=reduction)
        (loss * r).sum().backward()
        grads.append((loss.detach(), lin.weight.grad.clone(), lin.bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inplace_grad_on_a_leaf_does_not_alias_it():
    x = randn((5, 4), torch.float64, 0).requires_grad_(True)
    y = torch.randint(0, 4, (5,), generator=gen(1))
    expected = value_and_grad(lambda x: F.cross_entropy(x, y), x, "mean")[1]
    storage = x.detach().clone()
    ft.cross_entropy(x, y, inplace_grad=True).backward()
    torch.testing.assert_close(x.grad, expected)
    assert x.grad.data_ptr() != x.data_ptr()
    torch.testing.assert_close(x.detach(), expected)  # documented: the input now holds the gradient
    assert not torch.equal(x.detach(), storage)


def test_inplace_grad_refuses_what_it_would_corrupt():
    torch.manual_seed(0)
    z = (torch.randn(5, 4) * 1.0).requires_grad_(True)
    y = torch.randint(0, 4, (5,))
    logits = z * 2.0
    other = (logits * logits).sum()  # saves logits for its backward
    loss = ft.cross_entropy(logits, y, inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()
    loss = ft.cross_entropy(z * 2.0, y, inplace_grad=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    with pytest.raises(ValueError, match="inplace_grad"):
        ft.cross_entropy(randn((3, 4, 2), torch.float32, 0).requires_grad_(True), torch.zeros(3, 2, dtype=torch.long),
                         inplace_grad=True)


# ---- the eager path: the kernel's gradient buffer is .grad, never copied ----------------------

def record_gradients(monkeypatch, name):
    """Patch fastloss.<name>_and_grad to record the address of every gradient it returns."""
    import fastloss
    fused = getattr(fastloss, name + "_and_grad")
    written = []

    def spy(*args, **kwargs):
        loss, grad = fused(*args, **kwargs)
        written.append(grad.__array_interface__["data"][0])
        return loss, grad

    monkeypatch.setattr(fastloss, name + "_and_grad", spy)
    return written


def ce_or_mse(name, dtype):
    x = randn((64, 33), dtype, 0)
    if name == "softmax_xent":
        return x, torch.randint(0, 33, (64,), generator=gen(1)), ft.cross_entropy, F.cross_entropy
    return x, randn((64, 33), dtype, 1), ft.mse_loss, F.mse_loss


@pytest.mark.parametrize("scale", ["one", "scalar", "per_item"])
@pytest.mark.parametrize("name", ["softmax_xent", "mse"])
def test_fresh_leaf_grad_is_the_kernels_buffer(name, scale, monkeypatch):
    """A fresh leaf's .grad is the buffer the kernel wrote: autograd takes it without a copy, and
    a grad_output other than 1 (a scalar, or per item with reduction='none') scales it in place
    rather than into a second N x C buffer."""
    x, t, ours, theirs = ce_or_mse(name, torch.float32)
    reduction = "none" if scale == "per_item" else "mean"
    r = {"one": 1.0, "scalar": 0.3, "per_item": torch.rand(64 if name == "softmax_xent" else (64, 33),
                                                          generator=gen(2)) + 0.5}[scale]
    written = record_gradients(monkeypatch, name)
    leaf = x.clone().requires_grad_(True)
    loss = ours(leaf, t, reduction=reduction)
    loss.backward() if scale == "one" else (loss * r).sum().backward()
    assert len(written) == 1 and leaf.grad.data_ptr() == written[0]
    expected = x.clone().requires_grad_(True)
    (theirs(expected, t, reduction=reduction) * r).sum().backward()
    torch.testing.assert_close(leaf.grad, expected.grad, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_retain_graph_accumulates(scale, dtype):
    """retain_graph=True keeps the buffer (autograd copies it into .grad): every further backward
    adds the same gradient, and a backward after the graph is freed raises."""
    x, y = ce_inputs((6, 5), dtype)
    leaf = x.clone().requires_grad_(True)
    loss = ft.cross_entropy(leaf, y, label_smoothing=0.1) * scale
    loss.backward(retain_graph=True)
    once = leaf.grad.clone()
    torch.testing.assert_close(once.double(), value_and_grad(
        lambda x: F.cross_entropy(x, y, label_smoothing=0.1) * scale, x.double(), "mean")[1],
        **(TOL[torch.float64] if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-3)))
    for k in (2, 3):
        loss.backward(retain_graph=k < 3)
        assert torch.equal(leaf.grad, once * k)  # exact: once + once (+ once) in any float dtype
    with pytest.raises(RuntimeError, match="backward ran twice|second time"):
        loss.backward()
    loss = ft.cross_entropy(leaf, y)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward ran twice|second time"):
        loss.backward()


def test_a_gradient_handed_out_is_never_overwritten():
    """A gradient returned while the graph is kept is a tensor of its own: a later backward that
    owns the buffer (and scales it in place) leaves it alone."""
    x, t = randn((6, 5), torch.float64, 0), randn((6, 5), torch.float64, 1)
    leaf = x.clone().requires_grad_(True)
    loss = ft.mse_loss(leaf, t)
    (first,) = torch.autograd.grad(loss, leaf, retain_graph=True)
    kept = first.clone()
    (loss * 2).backward()
    assert torch.equal(first, kept)
    torch.testing.assert_close(leaf.grad, 2 * kept)
    torch.testing.assert_close(kept, value_and_grad(lambda x: F.mse_loss(x, t), x, "mean")[1])


def test_same_leaf_twice_accumulates():
    """Two losses on one leaf sum into one .grad, and a further step accumulates into it."""
    d = torch.float64
    x, y = ce_inputs((6, 5), d)
    t = randn((6, 5), d, 3)

    def step(f, mse, ce, x):
        return f(mse(x, t) + 0.5 * ce(x, y, reduction="none").sum())

    def expected(k):
        leaf = x.clone().requires_grad_(True)
        for _ in range(k):
            step(lambda loss: loss.backward(), F.mse_loss, F.cross_entropy, leaf)
        return leaf.grad

    leaf = x.clone().requires_grad_(True)
    step(lambda loss: loss.backward(), ft.mse_loss, ft.cross_entropy, leaf)
    torch.testing.assert_close(leaf.grad, expected(1), **TOL[d])
    step(lambda loss: loss.backward(), ft.mse_loss, ft.cross_entropy, leaf)
    torch.testing.assert_close(leaf.grad, expected(2), **TOL[d])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_fresh_leaf_and_scaled_backward(dtype, monkeypatch):
    """Half inputs: loss.backward() takes the kernel's buffer as .grad; a scaled backward is the
    recomputed gradient with the scale folded in, bit for bit (kept graph or not)."""
    import fastloss
    from fastloss.torch import _as_numpy
    x, y = ce_inputs((64, 33), torch.float32)
    xh = x.to(dtype)
    written = record_gradients(monkeypatch, "softmax_xent")
    leaf = xh.clone().requires_grad_(True)
    ft.cross_entropy(leaf, y).backward()
    assert leaf.grad.data_ptr() == written[-1] and leaf.grad.dtype == dtype
    scale = torch.tensor(0.3, dtype=dtype).item()
    want = torch.from_numpy(fastloss.softmax_xent_grad(_as_numpy(xh), y.numpy(), grad_output=scale).view("int16"))
    leaf = xh.clone().requires_grad_(True)
    loss = ft.cross_entropy(leaf, y) * 0.3
    loss.backward(retain_graph=True)
    assert torch.equal(leaf.grad.view(torch.int16), want)
    loss.backward()
    assert torch.equal((leaf.grad / 2).view(torch.int16), want)


def test_compile_traces_the_custom_op():
    """Under torch.compile the custom op is what is traced (fullgraph: no break), and its
    gradient scales by a non-unit grad_output as eagerly."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    x, y = ce_inputs((6, 5), torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ft.cross_entropy(x, y, reduction="none"), backend=backend, fullgraph=True)
    assert_matches(compiled, lambda x: F.cross_entropy(x, y, reduction="none"), x, "none", torch.float64)
    assert any("fastloss.softmax_xent" in g for g in graphs)


def test_compiled_autograd_traces_the_eager_backward():
    """Compiled autograd traces the eager path's backward (kept buffer, no graph-task query):
    each step's gradient is that step's, never one baked into the trace."""
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5)
    h, y = torch.randn(6, 8, generator=gen(1)), torch.randint(0, 5, (6,), generator=gen(2))
    r = torch.rand(6, generator=gen(3)) + 0.5

    def grads(loss_fn):
        out = []
        for i in range(3):
            lin.zero_grad()
            (loss_fn(lin(h * (i + 1)), y, reduction="none") * r).sum().backward()
            out.append(lin.weight.grad.clone())
        return out

    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        ours = grads(ft.cross_entropy)
    for a, b in zip(ours, grads(F.cross_entropy)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fake_tensors_take_the_custom_op(reduction):
    """FakeTensorMode (shape propagation, export) sees the op and its fake kernel, backward
    included (a fake grad_output has no value to compare with 1)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        x = mode.from_tensor(randn((6, 5), torch.float32, 0)).requires_grad_(True)
        y = mode.from_tensor(torch.randint(0, 5, (6,), generator=gen(1)))
        loss = ft.cross_entropy(x, y, reduction=reduction)
        assert loss.shape == ((6,) if reduction == "none" else ())
        loss.sum().backward()
        assert x.grad.shape == (6, 5)


# ---- modules, no-grad path, dtypes, errors ----------------------------------------------------

def test_modules_match_torch_nn():
    d = torch.float64
    x = randn((6, 5), d, 0)
    y = torch.randint(0, 5, (6,), generator=gen(1))
    t = randn((6, 5), d, 2)
    p = torch.rand(6, 5, generator=gen(3), dtype=d)
    w = torch.rand(5, generator=gen(4), dtype=d) + 0.2
    pairs = [
        (ft.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.1), torch.nn.CrossEntropyLoss(w, ignore_index=1, label_smoothing=0.1), y),
        (ft.BCEWithLogitsLoss(w, pos_weight=w, reduction="sum"), torch.nn.BCEWithLogitsLoss(w, reduction="sum", pos_weight=w), p),
        (ft.HuberLoss("none", 0.5), torch.nn.HuberLoss("none", 0.5), t),
        (ft.MultiMarginLoss(2, 0.7, w), torch.nn.MultiMarginLoss(2, 0.7, w), y),
        (ft.MSELoss(), torch.nn.MSELoss(), t),
        (ft.L1Loss(reduction="sum"), torch.nn.L1Loss(reduction="sum"), t),
        (ft.KLDivLoss(reduction="batchmean"), torch.nn.KLDivLoss(reduction="batchmean"), p),
    ]
    for ours, theirs, target in pairs:
        reduction = theirs.reduction
        assert_matches(lambda x: ours(x, target), lambda x: theirs(x, target), x, reduction, d)
    hinge = ft.HingeLoss(0.5, squared=True)
    signs = torch.sign(t)
    assert_matches(lambda x: hinge(x, signs), lambda x: torch.clamp(0.5 - signs * x, min=0).pow(2).mean(),
                   x, "mean", d)
    # buffers follow the module
    assert "weight" in dict(pairs[0][0].named_buffers())
    assert pairs[0][0].to(torch.float32).weight.dtype == torch.float32


def test_no_grad_and_no_requires_grad_give_the_same_loss():
    x, y = ce_inputs((6, 5, 2), torch.float32)
    expected = F.cross_entropy(x, y, label_smoothing=0.1)
    with torch.no_grad():
        torch.testing.assert_close(ft.cross_entropy(x.requires_grad_(True), y, label_smoothing=0.1), expected)
    loss = ft.cross_entropy(x.detach(), y, label_smoothing=0.1)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected)


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def rel_norm_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_half_precision_inputs(name, dtype, reduction):
    """Half tensors straight through: results of the input's dtype, within the unit roundoff of
    the same call in float64 on the same half values (x2 and slack: the road also rounds the
    float64 targets and weights of these cases to the half dtype)."""
    fn, x = GRADCHECK[name]
    xh = x.to(dtype)
    lo, go = value_and_grad(lambda x: fn(x, reduction), xh, reduction)
    lt, gt = value_and_grad(lambda x: fn(x, reduction), xh.double(), reduction)
    assert lo.dtype == go.dtype == dtype and go.shape == xh.shape
    bound = 2 * UNIT_ROUNDOFF[dtype] + 1e-4
    assert rel_norm_err(lo, lt) <= bound and rel_norm_err(go, gt) <= bound


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_backward_with_a_scale_rounds_once(dtype):
    """loss * 0.3: the gradient is recomputed with 0.3 folded in, bit for bit fastloss's own
    grad entry, not the forward's rounded gradient times 0.3 (two roundings)."""
    import fastloss
    from fastloss.torch import _as_numpy
    x, y = ce_inputs((64, 33), torch.float32)
    xh = x.to(dtype).requires_grad_(True)
    (ft.cross_entropy(xh, y, label_smoothing=0.1) * 0.3).backward()
    scale = torch.tensor(0.3, dtype=dtype).item()  # what autograd hands the backward: 0.3 in the half dtype
    want = fastloss.softmax_xent_grad(_as_numpy(xh), y.numpy(), label_smoothing=0.1, grad_output=scale)
    assert torch.equal(xh.grad.view(torch.int16), torch.from_numpy(want.view("int16")))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inplace_grad_and_compile(dtype):
    """inplace_grad=True writes the half gradient over the half logits; torch.compile traces a
    half training step with no graph break (fullgraph) and matches eager."""
    x, y = ce_inputs((16, 9), torch.float32)
    xh = x.to(dtype)
    eager = value_and_grad(lambda x: ft.cross_entropy(x, y), xh, "mean")
    logits = (xh * 1).requires_grad_(True)
    storage = logits.data_ptr()
    loss = ft.cross_entropy(logits * 1, y, inplace_grad=True)
    loss.backward()
    assert logits.grad.data_ptr() != storage and torch.equal(logits.grad, eager[1])
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ft.cross_entropy(x, y), fullgraph=True)
    got = value_and_grad(compiled, xh, "mean")
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


def test_every_cpu_backend():
    from fastloss._dispatch import available
    x, y = ce_inputs((6, 5), torch.float64)
    expected = value_and_grad(lambda x: F.cross_entropy(x, y), x, "mean")
    backends = [b for b in ("cython", "numba", "numpy") if available(b)]
    assert backends
    for backend in backends:
        got = value_and_grad(lambda x: ft.cross_entropy(x, y, backend=backend), x, "mean")
        torch.testing.assert_close(got, expected, msg=backend)


def test_errors():
    x = randn((4, 5), torch.float64, 0).requires_grad_(True)
    y = torch.randint(0, 5, (4,))
    t = randn((4, 5), torch.float64, 1)
    with pytest.raises(ValueError, match="target requires grad"):
        ft.mse_loss(x, t.requires_grad_(True))
    with pytest.raises(ValueError, match="p == 1 and p == 2"):
        ft.multi_margin_loss(x, y, p=3)
    with pytest.raises(ValueError, match="p=2 and squared=False"):
        ft.multi_margin_loss(x, y, p=2, squared=False)
    with pytest.raises(TypeError, match="floating-point"):
        ft.mse_loss(torch.ones(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        ft.cross_entropy(x, torch.tensor([0, 7, 1, 1]))
    # double backward would silently miss the second derivative: it raises instead
    for inplace in (False, True):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(ft.cross_entropy(x * 1.0, y, inplace_grad=inplace), x, create_graph=True)


def test_importing_fastloss_does_not_import_torch():
    code = "import sys, fastloss; fastloss.softmax_xent; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- smooth_l1, poisson_nll, sigmoid_focal, log_cosh, msle, cosine_similarity ----------------

def reduce(item, reduction):
    return {"mean": item.mean(), "sum": item.sum(), "none": item}[reduction]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("beta", [1.0, 0.4, 0.0, 3.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1_matches_F(beta, dtype, reduction):
    x, t = randn((4, 3, 2), dtype, 0), randn((4, 3, 2), dtype, 1)
    assert_matches(lambda x: ft.smooth_l1_loss(x, t, reduction=reduction, beta=beta),
                   lambda x: F.smooth_l1_loss(x, t, reduction=reduction, beta=beta), x, reduction, dtype)


POISSON_CASES = [{}, {"full": True}, {"log_input": False}, {"log_input": False, "full": True, "eps": 1e-3}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", POISSON_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poisson_nll_matches_F(case, dtype, reduction):
    shape = (5, 4, 3)
    t = torch.poisson(torch.full(shape, 2.0, dtype=dtype), generator=gen(1))  # counts: 0, 1 and above
    assert (t == 0).any() and (t == 1).any() and (t > 1).any()
    log_input = case.get("log_input", True)
    x = randn(shape, dtype, 0, scale=1.0) if log_input else torch.rand(shape, generator=gen(0), dtype=dtype) * 4 + 0.05
    full, eps = case.get("full", False), case.get("eps", 1e-8)
    assert_matches(lambda x: ft.poisson_nll_loss(x, t, log_input, full, eps=eps, reduction=reduction),
                   lambda x: F.poisson_nll_loss(x, t, log_input, full, eps=eps, reduction=reduction),
                   x, reduction, dtype)


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, line for line (torchvision is not a test dependency)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return reduce(loss, reduction)


FOCAL_CASES = [{}, {"alpha": 0.7, "gamma": 0.5}, {"alpha": -1.0, "gamma": 0.0}, {"gamma": 3.0, "binary": True},
               {"alpha": 0.0, "gamma": 1, "binary": True}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", FOCAL_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal_matches_torchvision(case, dtype, reduction):
    shape = (6, 5)
    x = randn(shape, dtype, 0)
    t = torch.rand(shape, generator=gen(1), dtype=dtype)
    if case.get("binary"):
        t = (t < 0.3).to(dtype)  # detection's 0/1 labels
    opts = {k: v for k, v in case.items() if k != "binary"}
    assert_matches(lambda x: ft.sigmoid_focal_loss(x, t, reduction=reduction, **opts),
                   lambda x: torchvision_sigmoid_focal_loss(x, t, reduction=reduction, **opts), x, reduction, dtype)


def test_sigmoid_focal_takes_torchvisions_arguments():
    x, t = randn((4, 3), torch.float64, 0), torch.rand(4, 3, generator=gen(1), dtype=torch.float64)
    loss = ft.sigmoid_focal_loss(x, t)  # reduction "none" by default, as torchvision's
    torch.testing.assert_close(loss, torchvision_sigmoid_focal_loss(x, t))
    torch.testing.assert_close(ft.sigmoid_focal_loss(x, t, 0.5, 1, "sum"),
                               torchvision_sigmoid_focal_loss(x, t, 0.5, 1, "sum"))
    torch.testing.assert_close(ft.sigmoid_focal_loss(inputs=x, targets=t, alpha=0.1, gamma=3, reduction="mean"),
                               torchvision_sigmoid_focal_loss(x, t, 0.1, 3, "mean"))
    assert list(inspect.signature(ft.sigmoid_focal_loss).parameters)[:5] == [
        "inputs", "targets", "alpha", "gamma", "reduction"]
    assert inspect.signature(ft.sigmoid_focal_loss).parameters["reduction"].default == "none"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_log_cosh_matches_formula(dtype, reduction):
    x, t = randn((4, 3, 2), dtype, 0), randn((4, 3, 2), dtype, 1)
    x.view(-1)[0] = t.view(-1)[0] + 1e-3  # near 0, where log(cosh(d)) ~ d**2/2
    assert_matches(lambda x: ft.log_cosh_loss(x, t, reduction=reduction),
                   lambda x: reduce(torch.log(torch.cosh(x - t)), reduction), x, reduction, dtype)


def test_log_cosh_does_not_overflow():
    x = torch.tensor([1e4, -1e4, 3e38, 0.0], requires_grad=True)
    t = torch.zeros(4)
    loss = ft.log_cosh_loss(x, t, reduction="none")
    log2 = torch.log(torch.tensor(2.0))
    expected = torch.stack([1e4 - log2, 1e4 - log2, torch.tensor(3e38), torch.tensor(0.0)])
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, -1.0, 1.0, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_msle_matches_keras_formula(dtype, reduction):
    shape = (5, 4, 3)
    x = torch.rand(shape, generator=gen(0), dtype=dtype) * 4
    x.view(-1)[::5] *= -1  # below the clamp: no gradient there
    t = torch.rand(shape, generator=gen(1), dtype=dtype) * 4
    t.view(-1)[::7] = 0.0

    def keras(x):
        return reduce((torch.log1p(x.clamp(min=1e-7)) - torch.log1p(t.clamp(min=1e-7))) ** 2, reduction)

    assert_matches(lambda x: ft.msle_loss(x, t, reduction=reduction), keras, x, reduction, dtype)
    _, g = value_and_grad(lambda x: ft.msle_loss(x, t, reduction=reduction), x, reduction)
    assert torch.all(g[x < 1e-7] == 0) and torch.all(g[x > 1e-7] != 0)


def cosine_by_normalize(x, t, dim):
    """Keras' CosineSimilarity loss in torch ops: -sum(normalize(x) * normalize(t)), norms clamped at 1e-6."""
    return -(F.normalize(x, dim=dim, eps=1e-6) * F.normalize(t, dim=dim, eps=1e-6)).sum(dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, dim", [((6, 5), 1), ((6, 5), -1), ((4, 5, 3), 1), ((4, 5, 3), -1), ((4, 5, 3), 0),
                                        ((5,), 1), ((5,), 0)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_similarity_matches_F(shape, dim, dtype, reduction):
    x, t = randn(shape, dtype, 0), randn(shape, dtype, 1)
    f_dim = dim if len(shape) > 1 else 0  # a 1-D input is one row
    assert_matches(lambda x: ft.cosine_similarity_loss(x, t, dim, reduction=reduction),
                   lambda x: reduce(-F.cosine_similarity(x, t, dim=f_dim), reduction), x, reduction, dtype)
    assert_matches(lambda x: ft.cosine_similarity_loss(x, t, dim=dim, reduction=reduction),
                   lambda x: reduce(cosine_by_normalize(x, t, f_dim), reduction), x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_similarity_zero_rows(reduction):
    """A zero row (input or target) has loss 0; the clamp on the norm gives its gradient."""
    d = torch.float64
    x, t = randn((5, 4), d, 0), randn((5, 4), d, 1)
    x[1] = 0.0
    t[3] = 0.0
    x[4] = 1e-9  # squared norm below the clamp
    assert_matches(lambda x: ft.cosine_similarity_loss(x, t, reduction=reduction),
                   lambda x: reduce(cosine_by_normalize(x, t, 1), reduction), x, reduction, d)


NEW_LOSS_CALLS = {  # name -> (fastloss.torch call, its torch twin, targets from a (32, 10) model output)
    "smooth_l1": (lambda z, y, b: ft.smooth_l1_loss(z, y, beta=0.5, backend=b),
                  lambda z, y: F.smooth_l1_loss(z, y, beta=0.5), "values"),
    "poisson_nll": (lambda z, y, b: ft.poisson_nll_loss(z, y, full=True, backend=b),
                    lambda z, y: F.poisson_nll_loss(z, y, full=True), "counts"),
    "sigmoid_focal": (lambda z, y, b: ft.sigmoid_focal_loss(z, y, 0.6, 1.5, "mean", backend=b),
                      lambda z, y: torchvision_sigmoid_focal_loss(z, y, 0.6, 1.5, "mean"), "unit"),
    "log_cosh": (lambda z, y, b: ft.log_cosh_loss(z, y, backend=b),
                 lambda z, y: torch.log(torch.cosh(z - y)).mean(), "values"),
    "msle": (lambda z, y, b: ft.msle_loss(z, y, backend=b),
             lambda z, y: ((torch.log1p(z.clamp(min=1e-7)) - torch.log1p(y.clamp(min=1e-7))) ** 2).mean(), "unit"),
    "cosine_similarity": (lambda z, y, b: ft.cosine_similarity_loss(z, y, backend=b),
                          lambda z, y: -F.cosine_similarity(z, y).mean(), "values"),
}


def new_loss_targets(kind, shape=(32, 10)):
    if kind == "counts":
        return torch.poisson(torch.full(shape, 2.0), generator=gen(2))
    if kind == "unit":
        return torch.rand(shape, generator=gen(2))
    return torch.randn(shape, generator=gen(2))


def _train_on(loss_fn, target, steps=3, compile_=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = torch.randn(32, 16, generator=gen(1))
    fn = torch.compile(lambda h, y: loss_fn(model(h), y), fullgraph=True) if compile_ else (
        lambda h, y: loss_fn(model(h), y))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fn(h, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.weight.detach().clone()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", list(NEW_LOSS_CALLS))
def test_new_losses_train_under_torch_compile(name):
    """A few SGD steps through torch.compile(fullgraph=True) match the same steps with the torch twin."""
    torch._dynamo.reset()
    ours_fn, theirs_fn, kind = NEW_LOSS_CALLS[name]
    y = new_loss_targets(kind)
    ours, w_ours = _train_on(lambda z, y: ours_fn(z, y, "auto"), y, compile_=True)
    theirs, w_theirs = _train_on(theirs_fn, y)
    assert ours[-1] < ours[0]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_ours, w_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_new_losses_per_item_grad_output_under_torch_compile(reduction):
    """Unreduced losses (one per element, one per row) weighted by a per-item upstream gradient, compiled."""
    d = torch.float64
    x, t = randn((6, 5, 3), d, 0), randn((6, 5, 3), d, 1)
    r = torch.rand(6, 3, generator=gen(2), dtype=d) + 0.5
    re = torch.rand(6, 5, 3, generator=gen(3), dtype=d) + 0.5

    rows, elements = (r, re) if reduction == "none" else (1, 1)

    def ours(x):
        return ((ft.cosine_similarity_loss(x, t, reduction=reduction) * rows).sum()
                + (ft.smooth_l1_loss(x, t, reduction=reduction, beta=0.3) * elements).sum())

    def theirs(x):
        return ((reduce(-F.cosine_similarity(x, t), reduction) * rows).sum()
                + (F.smooth_l1_loss(x, t, reduction=reduction, beta=0.3) * elements).sum())

    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    assert_matches(compiled, theirs, x, "mean", d)


@pytest.mark.parametrize("name", ["smooth_l1", "poisson_nll", "sigmoid_focal", "cosine_similarity"])
def test_new_ops_opcheck(name):
    """Schema, fake kernel and autograd registration of the new losses' ops."""
    x = randn((4, 5), torch.float32, 0).requires_grad_(True)
    t = torch.rand(4, 5, generator=gen(1))
    options = {"smooth_l1": (0.5,), "poisson_nll": (False, True, 1e-3), "sigmoid_focal": (0.25, 2.0),
               "cosine_similarity": ()}[name]
    if name == "poisson_nll":
        x = (x.detach().abs() + 0.1).requires_grad_(True)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    for reduction in ("mean", "none"):
        args = (x, t, reduction, "auto", *options)
        torch.library.opcheck(getattr(torch.ops.fastloss, name).default, args, test_utils=utils)
        torch.library.opcheck(getattr(torch.ops.fastloss, name + "_forward").default, args, test_utils=utils[:2])


def test_new_modules_match_their_functions():
    d = torch.float64
    x, t = randn((6, 5), d, 0), randn((6, 5), d, 1)
    counts = torch.poisson(torch.full((6, 5), 2.0, dtype=d), generator=gen(2))
    unit = torch.rand(6, 5, generator=gen(3), dtype=d)
    pairs = [
        (ft.SmoothL1Loss(reduction="sum", beta=0.4), torch.nn.SmoothL1Loss(reduction="sum", beta=0.4), t),
        (ft.PoissonNLLLoss(True, True), torch.nn.PoissonNLLLoss(True, True), counts),
        (ft.PoissonNLLLoss(log_input=True, eps=1e-3, reduction="none"),
         torch.nn.PoissonNLLLoss(eps=1e-3, reduction="none"), counts),
        (ft.SigmoidFocalLoss(0.3, 1.5), lambda x, y: torchvision_sigmoid_focal_loss(x, y, 0.3, 1.5), unit),
        (ft.SigmoidFocalLoss(reduction="mean"),
         lambda x, y: torchvision_sigmoid_focal_loss(x, y).mean(), unit),
        (ft.LogCoshLoss(), lambda x, y: torch.log(torch.cosh(x - y)).mean(), t),
        (ft.MSLELoss(reduction="sum"),
         lambda x, y: ((torch.log1p(x.clamp(min=1e-7)) - torch.log1p(y.clamp(min=1e-7))) ** 2).sum(), unit),
        (ft.CosineSimilarityLoss(), lambda x, y: -F.cosine_similarity(x, y).mean(), t),
        (ft.CosineSimilarityLoss(0, reduction="none"), lambda x, y: -F.cosine_similarity(x, y, dim=0), t),
    ]
    for ours, theirs, target in pairs:
        reduction = ours.reduction
        assert_matches(lambda x: ours(x, target), lambda x: theirs(x, target), x, reduction, d)
    assert ft.SigmoidFocalLoss().reduction == "none"  # torchvision's default, as the function's


def test_new_losses_inplace_grad():
    """inplace_grad=True: the gradient overwrites the (non-leaf) input, the parameters' gradients agree."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6)
    h = torch.randn(10, 8, generator=gen(1))
    t = torch.randn(10, 6, generator=gen(2))
    pairs = [(lambda z, **k: ft.smooth_l1_loss(z, t, beta=0.5, **k), lambda z: F.smooth_l1_loss(z, t, beta=0.5)),
             (lambda z, **k: ft.cosine_similarity_loss(z, t, **k), lambda z: -F.cosine_similarity(z, t).mean())]
    for ours, theirs in pairs:
        lin.zero_grad()
        ours(lin(h), inplace_grad=True).backward()
        got = lin.weight.grad.clone()
        lin.zero_grad()
        theirs(lin(h)).backward()
        torch.testing.assert_close(got, lin.weight.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(NEW_LOSS_CALLS))
def test_new_losses_half_precision_inputs(name, dtype):
    ours_fn, theirs_fn, kind = NEW_LOSS_CALLS[name]
    x = randn((8, 10), torch.float32, 0, scale=1.0)
    y = new_loss_targets(kind, (8, 10))
    lo, go = value_and_grad(lambda x: ours_fn(x, y, "auto"), x.to(dtype), "mean")
    lt, gt = value_and_grad(lambda x: theirs_fn(x, y), x.to(dtype).float(), "mean")
    assert lo.dtype == go.dtype == dtype
    torch.testing.assert_close(lo.float(), lt, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(go.float(), gt, rtol=2e-2, atol=1e-3)


def test_new_losses_errors():
    x, t = randn((4, 5), torch.float64, 0), randn((4, 5), torch.float64, 1)
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        ft.cosine_similarity_loss(x, t, dim=2)
    with pytest.raises(ValueError, match="reduction"):
        ft.sigmoid_focal_loss(x, t.sigmoid(), reduction="batchmean")
    with pytest.raises(ValueError, match="beta"):
        ft.smooth_l1_loss(x, t, beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        ft.sigmoid_focal_loss(x, t.sigmoid(), gamma=-1)
    with pytest.raises(ValueError, match="shape"):
        ft.cosine_similarity_loss(x, t[:, :3])
    with pytest.raises(ValueError, match="target requires grad"):
        ft.msle_loss(x, t.requires_grad_(True))


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
@pytest.mark.parametrize("name", list(NEW_LOSS_CALLS))
def test_new_losses_on_every_cpu_backend(name, backend):
    from fastloss._dispatch import BackendUnavailable, get_backend
    try:
        get_backend(backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    ours_fn, theirs_fn, kind = NEW_LOSS_CALLS[name]
    x = randn((6, 10), torch.float64, 0, scale=1.0)
    y = new_loss_targets(kind, (6, 10)).double()
    assert_matches(lambda x: ours_fn(x, y, backend), lambda x: theirs_fn(x, y), x, "mean", torch.float64)
