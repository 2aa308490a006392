"""A NumPy MLP trained on scikit-learn's digits, with fastloss in the hot loop.

What it shows: swapping a hand-written softmax cross-entropy + gradient for
``fastloss.softmax_xent_and_grad`` in a plain NumPy training loop. The gradient is written over
the logits (``out=logits``: the logits are a fresh intermediate nothing else needs, so no second
batch x classes buffer is allocated). Both loops start from the same weights and see the batches
in the same order, so they reach the same test accuracy; the script prints each one's accuracy,
its time per epoch and the time spent in the loss + gradient, and the ratios.

The digits data set (1797 8x8 images, 10 classes) ships with scikit-learn: nothing is downloaded.
At this size the loss is a small part of an epoch (the matmuls are the rest); the loss column
shows what fastloss changes.

Run it:

    python examples/numpy_mlp_digits.py                       # defaults
    python examples/numpy_mlp_digits.py --epochs 5 --hidden 32 --batch-size 64 --seed 1
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastloss


def numpy_softmax_xent_and_grad(logits, labels):
    """Mean softmax cross-entropy and its gradient to the logits, in plain NumPy."""
    n = len(labels)
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    loss = (np.log(sum_exp[:, 0]) - shifted[rows, labels]).mean()
    grad = exp / sum_exp
    grad[rows, labels] -= 1.0
    grad /= n
    return loss, grad


def fastloss_softmax_xent_and_grad(logits, labels):
    """The same with fastloss: one fused pass; the gradient overwrites the logits."""
    return fastloss.softmax_xent_and_grad(logits, labels, out=logits)


def init_params(n_in, n_hidden, n_out, seed, dtype):
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(dtype),
        "b1": np.zeros(n_hidden, dtype),
        "W2": (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1.0 / n_hidden)).astype(dtype),
        "b2": np.zeros(n_out, dtype),
    }


def predict(params, X):
    h = np.maximum(X @ params["W1"] + params["b1"], 0)
    return (h @ params["W2"] + params["b2"]).argmax(axis=1)


def train(loss_and_grad, params, X, y, *, epochs, batch_size, lr, seed):
    """Minibatch SGD on a copy of ``params``. A generator: after each epoch it yields the epoch's
    time, the time spent in the loss, the mean training loss, and the parameters."""
    p = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(seed)  # the batch order: the same for every loss function
    for _ in range(epochs):
        order = rng.permutation(len(X))
        in_loss, epoch_loss = 0.0, 0.0
        start = time.perf_counter()
        for first in range(0, len(X), batch_size):
            idx = order[first:first + batch_size]
            xb, yb = X[idx], y[idx]
            # forward
            pre = xb @ p["W1"] + p["b1"]
            h = np.maximum(pre, 0)
            logits = h @ p["W2"] + p["b2"]
            # loss and its gradient to the logits
            t = time.perf_counter()
            loss, dlogits = loss_and_grad(logits, yb)
            in_loss += time.perf_counter() - t
            epoch_loss += float(loss) * len(idx)
            # backward
            dW2 = h.T @ dlogits
            db2 = dlogits.sum(axis=0)
            dh = dlogits @ p["W2"].T
            dh[pre <= 0] = 0
            dW1 = xb.T @ dh
            db1 = dh.sum(axis=0)
            # SGD step
            for name, g in (("W1", dW1), ("b1", db1), ("W2", dW2), ("b2", db2)):
                p[name] -= lr * g
        yield time.perf_counter() - start, in_loss, epoch_loss / len(X), p


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed: {seed}")

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    print(f"digits: {len(X_train)} train, {len(X_test)} test, {X.shape[1]} features, 10 classes; "
          f"MLP {X.shape[1]}-{args.hidden}-10, batch {args.batch_size}, {args.epochs} epochs, "
          f"fastloss threads {fastloss.get_num_threads()}")

    params = init_params(X.shape[1], args.hidden, 10, seed, np.float32)
    runs = {"numpy": numpy_softmax_xent_and_grad, "fastloss": fastloss_softmax_xent_and_grad}
    trainers = [train(fn, params, X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=seed) for fn in runs.values()]
    history = {name: [] for name in runs}
    for epoch in zip(*trainers):  # the two runs take turns, an epoch each: a fair timing on a busy machine
        for name, record in zip(runs, epoch):
            history[name].append(record)

    timings = {}
    for name, records in history.items():
        epoch_t, loss_t, losses, trained = zip(*records)
        accuracy = (predict(trained[-1], X_test) == y_test).mean()
        # the fastest epoch: free of the first epoch's warm-up and of other work on a busy machine
        timings[name] = min(epoch_t), min(loss_t)
        print(f"{name:>8}: train loss {losses[0]:.4f} -> {losses[-1]:.4f}, test accuracy {accuracy:.4f}, "
              f"{1e3 * timings[name][0]:.2f} ms/epoch ({1e3 * timings[name][1]:.2f} ms in the loss), fastest epoch")

    (np_epoch, np_loss), (fl_epoch, fl_loss) = timings["numpy"], timings["fastloss"]
    print(f"fastloss vs numpy: {np_epoch / fl_epoch:.2f}x per epoch, {np_loss / fl_loss:.2f}x in the loss")

if __name__ == "__main__":
    main()
