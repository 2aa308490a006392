"""``fastloss.show_config()``: which backends are present, and how they were built."""

import platform
import sys

import numpy as np

from ._dispatch import BACKENDS, available, get_backend, _why_not
from ._threads import get_num_threads


def config():
    """A dict describing the build and the backends that can run here."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "threads": get_num_threads(),
        "backends": {},
    }
    for name in BACKENDS:
        if available(name):
            module = get_backend(name)
            info["backends"][name] = {"available": True, **getattr(module, "BUILD_INFO", {})}
        else:
            info["backends"][name] = {"available": False, "why": _why_not.get(name, "")}
    return info


def show_config():
    """Print which backends are available, whether OpenMP was compiled in, and versions."""
    info = config()
    print(f"fastloss on Python {info['python']}, NumPy {info['numpy']}, {info['platform']}")
    print(f"CPU threads: {info['threads']}")
    for name, b in info["backends"].items():
        if b["available"]:
            extra = ", ".join(f"{k}={v}" for k, v in b.items() if k != "available")
            print(f"  {name:7s} available   {extra}")
        else:
            print(f"  {name:7s} unavailable ({b['why']})")
