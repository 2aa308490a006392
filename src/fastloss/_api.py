"""The three public entry points of every loss, generated from the spec table."""

import inspect

from ._dispatch import run
from ._specs import SPECS

_ENTRY_DOCS = {
    "loss": "The loss, reduced by ``reduction``. ``out`` receives the loss of ``reduction='none'``.",
    "grad": "d(loss)/d({x}) times ``grad_output``, same shape and dtype as ``{x}``; ``out`` receives "
            "it and may be ``{x}`` itself.",
    "loss_and_grad": "``(loss, grad)`` in one fused pass (``grad_output=1``); ``out`` receives the "
                     "gradient and may be ``{x}`` itself.",
}


def _make(spec, entry):
    suffix = "" if entry == "loss" else "_" + entry.replace("loss_", "")
    public_name = spec.name + suffix

    if entry == "grad":
        def func(x, target, *, reduction="mean", grad_output=1.0, backend="auto", out=None, **options):
            return run(spec, entry, x, target, reduction, grad_output, backend, out, options)
    else:
        def func(x, target, *, reduction="mean", backend="auto", out=None, **options):
            return run(spec, entry, x, target, reduction, 1.0, backend, out, options)

    keywords = [("reduction", "mean")] + ([("grad_output", 1.0)] if entry == "grad" else [])
    func.__signature__ = signature(spec, keywords + [("backend", "auto"), ("out", None)])
    func.__name__ = func.__qualname__ = public_name
    func.__module__ = "fastloss"
    options = options_text(spec)
    func.__doc__ = (
        f"{spec.name}: {spec.formula}.\n\n"
        f"{_ENTRY_DOCS[entry].format(x=spec.input_name)}\n\n"
        f"reduction: {', '.join(repr(r) for r in spec.reductions)}; options: {options}.\n"
        f"backend: 'auto', 'numpy', 'cython', 'numba' or 'cuda'. See API.md for every rule."
    )
    return public_name, func


def signature(spec, keywords):
    """The public signature of a loss: input and target, then the keyword-only ``keywords``
    ((name, default) pairs) and the loss's options with their defaults."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(spec.input_name, positional), inspect.Parameter(spec.target_name, positional)]
    params += [inspect.Parameter(k, keyword, default=d) for k, d in keywords + list(spec.options.items())]
    return inspect.Signature(params)


def options_text(spec):
    """'name=default, ...' of the loss's options, for docstrings."""
    return ", ".join(f"{k}={d!r}" for k, d in spec.options.items()) or "none"


def public_functions():
    """{public name: function} for every loss and entry point."""
    funcs = {}
    for spec in SPECS.values():
        for entry in ("loss", "grad", "loss_and_grad"):
            name, func = _make(spec, entry)
            funcs[name] = func
    return funcs
