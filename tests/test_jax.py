"""fastloss.jax under jit and grad: values and gradients against optax where optax has the loss,
otherwise against fastloss.reference. Class axis last."""

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import fastloss.jax as fj  # noqa: E402
from fastloss import reference  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
NEW_LOSSES = ("smooth_l1", "log_cosh", "msle", "poisson_nll", "sigmoid_focal", "cosine_similarity")


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """float32 is JAX's default; float64 runs with jax_enable_x64 switched on for the test."""
    if request.param is np.float64:
        request.getfixturevalue("jax_x64")
    return request.param


def rng(seed=0):
    return np.random.default_rng(seed)


def reduce(item, reduction):
    return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda a: a}[reduction](item)


def jit_value_and_grad(fn, x, reduction):
    """jit(value_and_grad) of the loss, or of (loss * r).sum() with a fixed random r for 'none'."""
    def objective(x):
        loss = fn(x)
        if reduction == "none":
            r = jnp.asarray(rng(99).uniform(0.5, 1.5, loss.shape), loss.dtype)
            return (loss * r).sum(), loss
        return loss, loss

    (_, loss), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(jnp.asarray(x))
    return np.asarray(loss), np.asarray(grad)


def assert_matches(ours, theirs, x, reduction, dtype):
    lo, go = jit_value_and_grad(ours, x, reduction)
    lt, gt = jit_value_and_grad(theirs, x, reduction)
    assert lo.dtype == go.dtype == dtype
    assert lo.shape == lt.shape and go.shape == x.shape
    np.testing.assert_allclose(lo, lt, **TOL[dtype])
    np.testing.assert_allclose(go, gt, **TOL[dtype])


def assert_matches_reference(name, x, target, reduction, dtype, backend="auto", **options):
    """Against fastloss.reference (float64), through the same jit/grad path."""
    lo, go = jit_value_and_grad(lambda x: getattr(fj, name)(x, target, reduction=reduction, backend=backend,
                                                            **options), x, reduction)
    np_options = {k: (np.asarray(v) if k in ("weight", "pos_weight") else v) for k, v in options.items()}
    lt = reference.loss(name, x, np.asarray(target), reduction=reduction, **np_options)
    r = rng(99).uniform(0.5, 1.5, np.shape(lt)).astype(dtype) if reduction == "none" else 1.0
    gt = reference.grad(name, x, np.asarray(target), reduction=reduction, grad_output=r, **np_options)
    assert lo.dtype == go.dtype == dtype
    np.testing.assert_allclose(lo, lt, **TOL[dtype])
    np.testing.assert_allclose(go, gt, **TOL[dtype])


def logits(shape, dtype, seed=0):
    return (rng(seed).standard_normal(shape) * 2).astype(dtype)


def labels(shape, n_classes, seed=1):
    return jnp.asarray(rng(seed).integers(0, n_classes, shape))


def probs(shape, dtype, seed=2):
    return rng(seed).dirichlet(np.ones(shape[-1]), shape[:-1]).astype(dtype)


# ---- against optax ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_xent_integer_labels(dtype, shape, reduction):
    x, y = logits(shape, dtype), labels(shape[:-1], shape[-1])
    assert_matches(lambda x: fj.softmax_xent(x, y, reduction=reduction),
                   lambda x: reduce(optax.softmax_cross_entropy_with_integer_labels(x, y), reduction),
                   x, reduction, dtype)


@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_xent_label_smoothing_and_probs(dtype, target, reduction):
    shape, alpha = (6, 5), 0.1
    x = logits(shape, dtype)
    if target == "labels":
        t = labels(shape[:-1], 5)
        smoothed = optax.smooth_labels(jax.nn.one_hot(t, 5, dtype=dtype), alpha)
    else:
        t = jnp.asarray(probs(shape, dtype))
        smoothed = optax.smooth_labels(t, alpha)
    assert_matches(lambda x: fj.softmax_xent(x, t, reduction=reduction, label_smoothing=alpha),
                   lambda x: reduce(optax.softmax_cross_entropy(x, smoothed), reduction), x, reduction, dtype)
    if target == "probs":
        assert_matches(lambda x: fj.softmax_xent(x, t, reduction=reduction),
                       lambda x: reduce(optax.softmax_cross_entropy(x, t), reduction), x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_bce(dtype, reduction):
    x, t = logits((5, 4), dtype), jnp.asarray(rng(1).uniform(0, 1, (5, 4)).astype(dtype))
    assert_matches(lambda x: fj.sigmoid_bce(x, t, reduction=reduction),
                   lambda x: reduce(optax.sigmoid_binary_cross_entropy(x, t), reduction), x, reduction, dtype)


@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huber(dtype, delta, reduction):
    x, t = logits((5, 4), dtype), jnp.asarray(logits((5, 4), dtype, 1))
    assert_matches(lambda x: fj.huber(x, t, reduction=reduction, delta=delta),
                   lambda x: reduce(optax.huber_loss(x, t, delta=delta), reduction), x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_is_twice_optax_l2_loss(dtype, reduction):
    x, t = logits((5, 4), dtype), jnp.asarray(logits((5, 4), dtype, 1))
    assert_matches(lambda x: fj.mse(x, t, reduction=reduction),
                   lambda x: reduce(2 * optax.l2_loss(x, t), reduction), x, reduction, dtype)  # l2_loss has 0.5


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge(dtype, reduction):
    x = logits((5, 4), dtype)
    y = jnp.asarray(rng(1).choice([-1.0, 1.0], (5, 4)).astype(dtype))
    assert_matches(lambda x: fj.hinge(x, y, reduction=reduction),
                   lambda x: reduce(optax.hinge_loss(x, y), reduction), x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multiclass_hinge_crammer_singer(dtype, reduction):
    x, y = logits((6, 5), dtype), labels((6,), 5)
    assert_matches(lambda x: fj.multiclass_hinge(x, y, reduction=reduction, mode="crammer_singer"),
                   lambda x: reduce(optax.losses.multiclass_hinge_loss(x, y), reduction), x, reduction, dtype)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_kl_div(dtype, log_target, reduction):
    """optax's kl_divergence sums over the last axis: one value per row."""
    x = np.log(probs((6, 5), dtype, 3))
    t = jnp.asarray(probs((6, 5), dtype, 4))
    t = jnp.log(t) if log_target else t
    theirs_rows = optax.losses.kl_divergence_with_log_targets if log_target else optax.losses.kl_divergence
    reduce_rows = {"none": lambda a: a, "sum": jnp.sum, "batchmean": jnp.mean}[reduction]

    def ours(x):
        loss = fj.kl_div(x, t, reduction="none" if reduction == "none" else reduction, log_target=log_target)
        return loss.sum(-1) if reduction == "none" else loss

    assert_matches(ours, lambda x: reduce_rows(theirs_rows(x, t)), x, reduction, dtype)


# ---- options optax does not have: against fastloss.reference -----------------------------------

REFERENCE_CASES = [
    ("softmax_xent", {"weight": "classes", "ignore_index": 1}),
    ("softmax_xent", {"weight": "classes", "label_smoothing": 0.2, "z_loss": 1e-2, "ignore_index": 0}),
    ("softmax_xent", {"probs": True, "weight": "classes", "label_smoothing": 0.1, "z_loss": 1e-2}),
    ("sigmoid_bce", {"weight": "elements", "pos_weight": "last"}),
    ("sigmoid_bce", {"weight": "last"}),
    ("hinge", {"margin": 0.5, "squared": True}),
    ("hinge", {"margin": 2.0, "zero_one": True}),
    ("multiclass_hinge", {}),
    ("multiclass_hinge", {"squared": True, "weight": "classes", "margin": 0.7}),
    ("multiclass_hinge", {"mode": "crammer_singer", "squared": True, "weight": "classes", "margin": 0.5}),
    ("mae", {}),
    ("kl_div", {"log_target": True}),
    ("smooth_l1", {}),
    ("smooth_l1", {"beta": 0.4}),
    ("smooth_l1", {"beta": 0.0}),
    ("msle", {}),
    ("poisson_nll", {}),
    ("poisson_nll", {"full": True}),
    ("poisson_nll", {"log_input": False}),
    ("poisson_nll", {"log_input": False, "full": True, "eps": 1e-3}),
    ("sigmoid_focal", {"alpha": 0.7, "gamma": 0.5}),
    ("sigmoid_focal", {"alpha": -1.0, "gamma": 0.0}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, case", REFERENCE_CASES,
                         ids=[f"{n}-" + "-".join(c) for n, c in REFERENCE_CASES])
def test_against_reference(dtype, name, case, reduction):
    x, t, options = reference_case(name, case, dtype)
    assert_matches_reference(name, x, t, reduction, dtype, "auto", **options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, case", REFERENCE_CASES,
                         ids=[f"{n}-" + "-".join(c) for n, c in REFERENCE_CASES])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_half_against_reference(dtype, name, case, reduction):
    """float16/bfloat16 straight through jit and grad: each result within its dtype's unit
    roundoff of the float64 reference on the same half values (the backward folds the cotangent
    into one gradient kernel, so the gradient is rounded once)."""
    x, t, options = reference_case(name, case, dtype)
    lo, go = jit_value_and_grad(lambda x: getattr(fj, name)(x, t, reduction=reduction, **options), x, reduction)
    np_options = {k: (np.asarray(v) if k in ("weight", "pos_weight") else v) for k, v in options.items()}
    lt = reference.loss(name, x, np.asarray(t), reduction=reduction, **np_options)
    r = rng(99).uniform(0.5, 1.5, np.shape(lt)).astype(dtype) if reduction == "none" else 1.0
    gt = reference.grad(name, x, np.asarray(t), reduction=reduction, grad_output=r, **np_options)
    assert lo.dtype == go.dtype == dtype
    u = 2.0**-11 if dtype == jnp.float16 else 2.0**-8
    np.testing.assert_allclose(np.asarray(lo, np.float64), lt, rtol=u + 1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(go, np.float64), gt, rtol=u + 1e-4, atol=1e-6)


def reference_case(name, case, dtype):
    """(x, target, options) of a REFERENCE_CASES row, every float in ``dtype``."""
    shape = (6, 5)
    x = logits(shape, dtype)
    r = rng(5)
    options = {}
    for key, value in case.items():
        if value == "classes" or value == "last":
            value = jnp.asarray(r.uniform(0.2, 2.0, shape[-1]).astype(dtype))
        elif value == "elements":
            value = jnp.asarray(r.uniform(0.2, 2.0, shape).astype(dtype))
        if key not in ("probs", "zero_one"):
            options[key] = value
    if name in ("softmax_xent", "multiclass_hinge") and not case.get("probs"):
        t = np.array(labels(shape[:-1], shape[-1]))
        if "ignore_index" in options:
            t[::3] = options["ignore_index"]
    elif case.get("probs") or name == "kl_div":
        t = probs(shape, dtype)
        t = np.log(t) if case.get("log_target") else t
    elif name == "hinge":
        t = r.choice([0.0 if case.get("zero_one") else -1.0, 1.0], shape).astype(dtype)
    elif name == "poisson_nll":  # counts; rates > 0 when the input is not their log
        t = r.poisson(2.0, shape).astype(dtype)
        if not options.get("log_input", True):
            x = r.uniform(0.1, 4.0, shape).astype(dtype)
    elif name in ("smooth_l1", "msle"):
        t = (r.uniform(0, 3, shape) if name == "msle" else r.standard_normal(shape) * 2).astype(dtype)
    else:
        t = r.uniform(0, 1, shape).astype(dtype)
    return x, jnp.asarray(t), options


# ---- the losses optax has among smooth_l1, log_cosh, msle, poisson_nll, sigmoid_focal, cosine_similarity

@pytest.mark.parametrize("beta", [1.0, 0.3, 2.5, 0.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1_is_huber_over_beta(dtype, beta, reduction):
    """PyTorch's smooth_l1 is optax's huber_loss (delta = beta) divided by beta; beta = 0 is |d|."""
    x, t = logits((5, 4), dtype), jnp.asarray(logits((5, 4), dtype, 1))

    def theirs(x):
        return reduce(optax.huber_loss(x, t, delta=beta) / beta if beta else jnp.abs(x - t), reduction)

    assert_matches(lambda x: fj.smooth_l1(x, t, reduction=reduction, beta=beta), theirs,
                   x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_log_cosh(dtype, reduction):
    x, t = logits((5, 4), dtype), jnp.asarray(logits((5, 4), dtype, 1))
    assert_matches(lambda x: fj.log_cosh(x, t, reduction=reduction),
                   lambda x: reduce(optax.losses.log_cosh(x, t), reduction), x, reduction, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_msle_keras_formula(dtype, reduction):
    x = logits((5, 4), dtype)  # some below the clamp
    t = jnp.asarray(rng(1).uniform(0, 3, (5, 4)).astype(dtype))

    def keras(x):
        return reduce((jnp.log1p(jnp.maximum(x, 1e-7)) - jnp.log1p(jnp.maximum(t, 1e-7))) ** 2, reduction)

    assert_matches(lambda x: fj.msle(x, t, reduction=reduction), keras, x, reduction, dtype)


@pytest.mark.parametrize("case", [dict(alpha=0.25, gamma=2.0), dict(alpha=0.7, gamma=0.5), dict(alpha=-1.0, gamma=0.0),
                                  dict(alpha=0.25, gamma=3.0, binary=True), dict(alpha=-1.0, gamma=1.5, binary=True)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_focal(dtype, case, reduction):
    """optax's sigmoid_focal_loss; its alpha=None is fastloss's (and torchvision's) alpha < 0."""
    x = logits((6, 5), dtype)
    u = rng(1).uniform(0, 1, (6, 5))
    t = jnp.asarray((u < 0.3 if case.get("binary") else u).astype(dtype))
    alpha, gamma = case["alpha"], case["gamma"]
    assert_matches(lambda x: fj.sigmoid_focal(x, t, reduction=reduction, alpha=alpha, gamma=gamma),
                   lambda x: reduce(optax.losses.sigmoid_focal_loss(x, t, alpha=alpha if alpha >= 0 else None,
                                                                    gamma=gamma), reduction),
                   x, reduction, dtype)


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5), (5,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_similarity(dtype, shape, reduction):
    """Minus optax's cosine_similarity with its squared norms clipped at 1e-12 (Keras' l2_normalize),
    over the last axis; a zero row has loss 0."""
    x, t = logits(shape, dtype), logits(shape, dtype, 1)
    if len(shape) > 1:
        x[(0,) * (len(shape) - 1)] = 0.0
        t[(1,) + (0,) * (len(shape) - 2)] = 0.0
    t = jnp.asarray(t)
    assert_matches(lambda x: fj.cosine_similarity(x, t, reduction=reduction),
                   lambda x: reduce(-optax.losses.cosine_similarity(x, t, epsilon=1e-12), reduction),
                   x, reduction, dtype)


def test_cosine_similarity_vmap_and_trace_time_errors():
    x = jnp.asarray(logits((3, 6, 5), np.float32))
    t = jnp.asarray(logits((6, 5), np.float32, 1))
    batched = jax.jit(jax.vmap(lambda x: fj.cosine_similarity(x, t)))(x)
    expected = -optax.losses.cosine_similarity(x, jnp.broadcast_to(t, x.shape), epsilon=1e-12).mean(-1)
    np.testing.assert_allclose(batched, expected, rtol=2e-5, atol=1e-7)
    g = jax.grad(lambda x: jax.vmap(lambda x: fj.cosine_similarity(x, t))(x).sum())(x)
    g_expected = jax.grad(lambda x: -optax.losses.cosine_similarity(x, jnp.broadcast_to(t, x.shape),
                                                                     epsilon=1e-12).mean(-1).sum())(x)
    np.testing.assert_allclose(g, g_expected, rtol=2e-5, atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        fj.cosine_similarity(x[0], t[:, :3])
    with pytest.raises(ValueError, match="gamma"):
        fj.sigmoid_focal(x, x, gamma=-1.0)
    with pytest.raises(ValueError, match="beta"):
        fj.smooth_l1(x, x, beta=-0.5)


def test_no_gradient_to_float_targets_of_new_losses():
    x, t = logits((6, 5), np.float32), jnp.asarray(logits((6, 5), np.float32, 1))
    for name in NEW_LOSSES:
        gx, gt = jax.grad(lambda x, t: getattr(fj, name)(jnp.abs(x) if name != "cosine_similarity" else x,
                                                         jnp.abs(t)), argnums=(0, 1))(x, t)
        assert np.all(np.asarray(gt) == 0) and np.any(np.asarray(gx) != 0), name


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
@pytest.mark.parametrize("name", NEW_LOSSES)
def test_new_losses_on_every_cpu_backend(name, backend):
    from fastloss._dispatch import BackendUnavailable, get_backend
    try:
        get_backend(backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    x = logits((6, 5), np.float32)
    t = rng(1).poisson(2.0, (6, 5)) if name == "poisson_nll" else rng(1).uniform(0, 1, (6, 5))
    assert_matches_reference(name, x, jnp.asarray(t.astype(np.float32)), "mean", np.float32, backend)


# ---- JAX integration ---------------------------------------------------------------------------

def test_no_gradient_to_targets_or_weights():
    x, y = logits((6, 5), np.float32), labels((6,), 5)
    w = jnp.linspace(0.5, 1.5, 5, dtype=jnp.float32)
    p = jnp.asarray(probs((6, 5), np.float32))
    gx, gw = jax.jit(jax.grad(lambda x, w: fj.softmax_xent(x, y, weight=w), argnums=(0, 1)))(x, w)
    assert np.all(np.asarray(gw) == 0) and np.any(np.asarray(gx) != 0)
    gp = jax.grad(lambda p: fj.softmax_xent(x, p), argnums=0)(p)
    assert np.all(np.asarray(gp) == 0)
    gy = jax.grad(lambda x, y: fj.softmax_xent(x, y), argnums=1, allow_int=True)(x, y)
    assert gy.dtype == jax.dtypes.float0


def test_vmap_and_value_without_grad():
    x = jnp.asarray(logits((3, 6, 5), np.float32))
    y = labels((6,), 5)
    batched = jax.jit(jax.vmap(lambda x: fj.softmax_xent(x, y)))(x)
    yy = jnp.broadcast_to(y, (3, 6))
    expected = optax.softmax_cross_entropy_with_integer_labels(x, yy).mean(-1)
    np.testing.assert_allclose(batched, expected, rtol=2e-5)
    g = jax.grad(lambda x: jax.vmap(lambda x: fj.softmax_xent(x, y))(x).sum())(x)
    g_expected = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, yy).mean(-1).sum())(x)
    np.testing.assert_allclose(g, g_expected, rtol=2e-5, atol=1e-7)


def test_training_step_under_jit():
    """A linear model trained a few SGD steps with fastloss matches the same with optax."""
    r = rng(0)
    h = jnp.asarray(r.standard_normal((32, 16)).astype(np.float32))
    y = labels((32,), 10)
    w0 = jnp.asarray(r.standard_normal((16, 10)).astype(np.float32) * 0.1)

    def train(loss_fn):
        step = jax.jit(lambda w: jax.value_and_grad(lambda w: loss_fn(h @ w, y))(w))
        w, losses = w0, []
        for _ in range(3):
            loss, g = step(w)
            w = w - 0.5 * g
            losses.append(float(loss))
        return losses, w

    ours, w_ours = train(lambda z, y: fj.softmax_xent(z, y, label_smoothing=0.1))
    theirs, w_theirs = train(lambda z, y: optax.softmax_cross_entropy(
        z, optax.smooth_labels(jax.nn.one_hot(y, 10), 0.1)).mean())
    assert ours[-1] < ours[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(w_ours, w_theirs, rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs():
    x = jnp.asarray(logits((8, 7), np.float32))
    y = labels((8,), 7)
    loss, g = jax.value_and_grad(lambda x: fj.softmax_xent(x, y))(x.astype(jnp.bfloat16))
    assert loss.dtype == g.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), float(optax.softmax_cross_entropy_with_integer_labels(x, y).mean()),
                               rtol=2e-2)


def test_errors_at_trace_time():
    x, y = logits((6, 5), np.float32), labels((6,), 5)
    with pytest.raises(ValueError, match="reduction"):
        jax.jit(lambda x: fj.softmax_xent(x, y, reduction="batchmean"))(x)
    with pytest.raises(ValueError, match="label_smoothing"):
        fj.softmax_xent(x, y, label_smoothing=2.0)
    with pytest.raises(ValueError, match="shape"):
        fj.softmax_xent(x, y[:3])
    with pytest.raises(TypeError, match="unknown option"):
        fj.huber(x, x, margin=1.0)
    with pytest.raises(Exception, match="not a valid class index"):  # raised when the result is read
        jax.block_until_ready(fj.softmax_xent(x, y.at[2].set(9)))


def test_importing_fastloss_does_not_import_jax():
    code = "import sys, fastloss; fastloss.softmax_xent; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
