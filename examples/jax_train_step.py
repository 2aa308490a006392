"""A JAX training step with fastloss.jax.

What it shows: ``fastloss.jax.softmax_xent`` as the loss of a small MLP classifier inside
``jax.jit(jax.value_and_grad(loss_fn))``, trained for a few steps of plain SGD. On the CPU the
loss and its gradient are one XLA custom call into fastloss's compiled kernel. The same step
with ``optax.softmax_cross_entropy_with_integer_labels`` runs beside it from the same weights:
the script prints both losses at the start (the same value), each run's losses and its time
per step. Without optax installed, the reference is written with ``jax.nn.log_softmax``.

The data are Gaussian blobs, one per class, generated here (nothing is downloaded).

Run it:

    python examples/jax_train_step.py                     # defaults
    python examples/jax_train_step.py --steps 10 --batch-size 64 --hidden 32 --seed 1
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fastloss.jax as flj

try:
    import optax
except ImportError:  # optax is only the reference here
    optax = None


def reference_xent(logits, labels):
    """Mean softmax cross-entropy written with JAX's own ops (optax's where installed)."""
    if optax is not None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def init_params(key, n_in, n_hidden, n_out):
    k1, k2 = jax.random.split(key)
    return {
        "W1": jax.random.normal(k1, (n_in, n_hidden)) * jnp.sqrt(2.0 / n_in),
        "b1": jnp.zeros(n_hidden),
        "W2": jax.random.normal(k2, (n_hidden, n_out)) * jnp.sqrt(1.0 / n_hidden),
        "b2": jnp.zeros(n_out),
    }


def forward(params, x):
    h = jax.nn.relu(x @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def make_train_step(xent, lr):
    def loss_fn(params, x, y):
        return xent(forward(params, x), y)

    @jax.jit
    def train_step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params, loss

    return train_step


def fastloss_xent(logits, labels):
    # the logits are an intermediate: the gradient may take their buffer
    return flj.softmax_xent(logits, labels, inplace_grad=True)


def make_data(rng, n, n_features, n_classes):
    centres = rng.standard_normal((n_classes, n_features)) * 1.5
    y = rng.integers(0, n_classes, n)
    x = centres[y] + rng.standard_normal((n, n_features))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed: {seed}")
    print(f"jax {jax.__version__} on {jax.default_backend()}; MLP {args.features}-{args.hidden}-{args.classes}, "
          f"batch {args.batch_size}, {args.steps} SGD steps")

    rng = np.random.default_rng(seed)
    x, y = make_data(rng, args.batch_size * 8, args.features, args.classes)
    params0 = init_params(jax.random.PRNGKey(seed), args.features, args.hidden, args.classes)

    # the same loss at the start
    logits = forward(params0, x[:args.batch_size])
    ours = float(flj.softmax_xent(logits, y[:args.batch_size]))
    ref = float(reference_xent(logits, y[:args.batch_size]))
    ref_name = "optax" if optax is not None else "jax.nn.log_softmax"
    print(f"initial loss: fastloss.jax {ours:.7f}, {ref_name} {ref:.7f}, relative difference "
          f"{abs(ours - ref) / abs(ref):.1e}")

    runs = {"fastloss": make_train_step(fastloss_xent, args.lr),
            ref_name: make_train_step(reference_xent, args.lr)}
    params = {name: params0 for name in runs}
    losses = {name: [] for name in runs}
    times = {name: [] for name in runs}
    for name, step in runs.items():  # compile outside the timing
        jax.block_until_ready(step(params0, x[:args.batch_size], y[:args.batch_size]))
    n_batches = len(x) // args.batch_size
    for i in range(args.steps):
        batch = slice((i % n_batches) * args.batch_size, (i % n_batches + 1) * args.batch_size)
        for name, step in runs.items():  # the runs take turns, a step each: a fair timing
            start = time.perf_counter()
            params[name], loss = jax.block_until_ready(step(params[name], x[batch], y[batch]))
            times[name].append(time.perf_counter() - start)
            losses[name].append(float(loss))

    for name in runs:
        curve = losses[name]
        marks = [curve[i] for i in np.linspace(0, len(curve) - 1, min(len(curve), 6)).astype(int)]
        print(f"{name:>8}: loss {curve[0]:.4f} -> {curve[-1]:.4f}; curve {' '.join(f'{v:.4f}' for v in marks)}; "
              f"{1e3 * np.median(times[name]):.3f} ms/step (median)")
    a, b = times["fastloss"], times[ref_name]
    print(f"fastloss vs {ref_name}: {np.median(b) / np.median(a):.2f}x per step")


if __name__ == "__main__":
    main()
