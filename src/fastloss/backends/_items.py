"""The arithmetic item formulas of the elementwise losses, written once in plain Python and
compiled twice: inlined into Numba's CPU kernels (``_numba_math``/``numba_cpu``) and as CUDA
device functions (``cuda_kernels``).

Each takes an element ``x``, its target ``t`` and the loss's two parameters ``p0``, ``p1`` (unused
ones are ignored) and returns ``(loss, dloss/dx)`` in float64. Sub-gradients are PyTorch's: slope
0 at a hinge's kink and at ``x == t`` for mae. sigmoid_bce and kl_div are not here: their exp and
log run in the input's precision on the CPU (vectorised float32) and in float64 on the GPU.
"""

import numpy as np


def huber(x, t, delta, unused):
    """0.5 d**2 if |d| <= delta else delta (|d| - delta/2), d = x - t; gradient clip(d)."""
    d = np.float64(x) - np.float64(t)
    ad = abs(d)
    loss = 0.5 * d * d if ad <= delta else delta * (ad - 0.5 * delta)
    return loss, (delta if d > delta else (-delta if d < -delta else d))


def hinge(x, t, margin, squared):
    """max(0, margin - y x), y = +1 if t > 0 else -1, squared if ``squared``; NaN stays NaN."""
    y = 1.0 if t > 0 else -1.0
    zz = margin - y * np.float64(x)
    h = zz if not zz <= 0.0 else 0.0
    if squared:
        return h * h, -2.0 * h * y
    return h, (-y if zz > 0.0 else 0.0)


def mse(x, t, unused0, unused1):
    """(x - t)**2."""
    d = np.float64(x) - np.float64(t)
    return d * d, 2.0 * d


def mae(x, t, unused0, unused1):
    """|x - t|; gradient sign(x - t), 0 at 0, NaN for NaN."""
    d = np.float64(x) - np.float64(t)
    return abs(d), (1.0 if d > 0.0 else (-1.0 if d < 0.0 else d * 0.0))
