"""CPU threads of the compiled backends, and the cut-off below which a call runs on one thread."""

import os

# Below this many input elements a call runs on one thread: starting threads costs more than
# the work (scikit-learn #30662 measured a 15x slow-down from OpenMP start-up on small data).
PARALLEL_MIN = 1 << 15


def _default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()
_watchers = []  # told the thread count now and at every change (compiled code that keeps its own)


def on_change(fn):
    """Call ``fn(n_threads)`` now and whenever the thread count changes."""
    _watchers.append(fn)
    fn(_num_threads)


def set_num_threads(n):
    """Set the CPU threads used by the cython and numba backends (default: usable cores)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n
    for fn in _watchers:
        fn(n)


def get_num_threads():
    """The CPU threads the cython and numba backends use for large inputs."""
    return _num_threads


def threads_for(n_elements):
    """Threads for a call over n_elements inputs: one below PARALLEL_MIN."""
    return 1 if n_elements < PARALLEL_MIN else _num_threads
