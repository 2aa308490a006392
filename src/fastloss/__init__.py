"""fastloss: fused loss + gradient kernels for Python (Cython/OpenMP, Numba, Numba CUDA, NumPy).

Every loss has three entry points, e.g. ``softmax_xent``, ``softmax_xent_grad`` and
``softmax_xent_and_grad``. See README.md and API.md.
"""

from ._api import public_functions as _public_functions
from ._config import show_config
from ._dispatch import BackendUnavailable
from ._include import get_include
from ._linear import linear_softmax_xent, linear_softmax_xent_and_grad
from ._specs import SPECS as _SPECS
from ._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"


_functions = _public_functions()
globals().update(_functions)
LOSSES = tuple(_SPECS)

__all__ = ["BackendUnavailable", "LOSSES", "get_include", "get_num_threads", "set_num_threads", "show_config",
           "linear_softmax_xent", "linear_softmax_xent_and_grad", *_functions]
del _functions
