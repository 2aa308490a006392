"""A PyTorch character-level language model trained with fastloss's losses.

What it shows: a small GRU language model (embedding -> GRU -> linear head over the characters)
trained twice from the same initial weights on the same batches:

* ``unfused``: the head computes the logits, ``fastloss.torch.cross_entropy`` takes them (the
  drop-in for ``torch.nn.functional.cross_entropy``);
* ``fused``: ``fastloss.torch.linear_cross_entropy(hidden, head.weight, target,
  linear_bias=head.bias)`` computes the head and the loss together and never holds the
  (batch x time) x vocabulary logits. That matters for a vocabulary of 32k-256k tokens; with the
  few dozen characters here it only shows the call.

It prints the loss at step 0 of both runs and of ``torch.nn.functional.cross_entropy`` (the same
value), each run's loss curve (first -> last) and its time per step, and a few characters
sampled from the trained model. The text is a public-domain paragraph embedded below: nothing is
downloaded.

Run it:

    python examples/torch_char_lm.py                      # defaults
    python examples/torch_char_lm.py --steps 20 --hidden 32 --batch-size 8 --seq-len 32 --seed 1
"""

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastloss.torch as flt

# Charles Dickens, A Tale of Two Cities (1859), the opening of Book 1, Chapter 1: public domain.
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season "
    "of Light, it was the season of Darkness, it was the spring of hope, it was the winter of "
    "despair, we had everything before us, we had nothing before us, we were all going direct to "
    "Heaven, we were all going direct the other way -- in short, the period was so far like the "
    "present period, that some of its noisiest authorities insisted on its being received, for "
    "good or for evil, in the superlative degree of comparison only.\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne of England; "
    "there were a king with a large jaw and a queen with a fair face, on the throne of France. In "
    "both countries it was clearer than crystal to the lords of the State preserves of loaves and "
    "fishes, that things in general were settled for ever.\n"
)


class CharGRU(torch.nn.Module):
    def __init__(self, vocab_size, embed_dim, hidden_dim):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, embed_dim)
        self.gru = torch.nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.head = torch.nn.Linear(hidden_dim, vocab_size)

    def hidden(self, tokens):
        """(batch, time) character ids -> (batch, time, hidden) states."""
        return self.gru(self.embed(tokens))[0]

    def forward(self, tokens):
        """The logits, (batch, time, vocab)."""
        return self.head(self.hidden(tokens))


def unfused_loss(model, x, y):
    logits = model(x)  # (B, T, V): the full logits
    return flt.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def fused_loss(model, x, y):
    h = model.hidden(x)  # (B, T, H): the logits are never formed
    return flt.linear_cross_entropy(h, model.head.weight, y, linear_bias=model.head.bias)


def batches(data, batch_size, seq_len, steps, seed):
    """Random windows of the text: inputs and the next characters as targets."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - seq_len - 1, batch_size)
        window = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts]))
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def sample(model, prompt, n_chars, chars, index, seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([[index[c] for c in prompt]])
    out, state = model.gru(model.embed(tokens))
    text = prompt
    for _ in range(n_chars):
        probs = torch.softmax(model.head(out[:, -1]), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)
        text += chars[nxt.item()]
        out, state = model.gru(model.embed(nxt), state)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed: {seed}")

    chars = sorted(set(TEXT))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in TEXT], dtype=np.int64)
    print(f"text: {len(TEXT)} characters, vocabulary {len(chars)}; GRU {args.embed}-{args.hidden}, "
          f"batch {args.batch_size} x {args.seq_len} characters, {args.steps} steps, "
          f"torch threads {torch.get_num_threads()}")

    torch.manual_seed(seed)
    base = CharGRU(len(chars), args.embed, args.hidden)
    runs = {"unfused": unfused_loss, "fused": fused_loss}
    models = {name: copy.deepcopy(base) for name in runs}  # the same initial weights for both runs
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    losses = {name: [] for name in runs}
    step_times = {name: [] for name in runs}

    for step, (x, y) in enumerate(batches(data, args.batch_size, args.seq_len, args.steps, seed)):
        if step == 0:  # the same weights and batch: the three losses agree
            with torch.no_grad():
                reference = F.cross_entropy(base(x).reshape(-1, len(chars)), y.reshape(-1)).item()
        for name, loss_fn in runs.items():  # the runs take turns, a step each: a fair timing
            model, opt = models[name], optimizers[name]
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            step_times[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())

    print(f"step 0 loss: F.cross_entropy {reference:.6f}, unfused {losses['unfused'][0]:.6f}, "
          f"fused {losses['fused'][0]:.6f} (|fused - unfused| = "
          f"{abs(losses['fused'][0] - losses['unfused'][0]):.1e}; uniform guess ln V = {np.log(len(chars)):.4f})")
    for name in runs:
        curve = losses[name]
        tail = np.mean(curve[-max(1, len(curve) // 10):])  # the last tenth: smoother than one step
        marks = [curve[i] for i in np.linspace(0, len(curve) - 1, min(len(curve), 6)).astype(int)]
        print(f"{name:>7}: loss {curve[0]:.4f} -> {tail:.4f} (mean of the last {max(1, len(curve) // 10)} steps); "
              f"curve {' '.join(f'{v:.3f}' for v in marks)}; "
              f"{1e3 * np.median(step_times[name]):.1f} ms/step (median)")
    print("sample (fused model):", repr(sample(models["fused"], "It was the ", 60, chars, index, seed)))


if __name__ == "__main__":
    main()
