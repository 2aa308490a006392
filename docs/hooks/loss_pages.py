"""mkdocs hook: the loss pages, generated from the spec table (``src/fastloss/_specs.py``), and
the files the docs take from the rest of the repository, kept where they are: the curated
benchmark results and sections of README.md and CONTRIBUTING.md."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# a line "<!-- from README.md: Quick start -->" of a page: that section of that file, kept single
INCLUDE = re.compile(r"^<!-- from (?P<name>[\w.]+): (?P<title>.+?) -->$", re.MULTILINE)


def load_specs():
    """The spec table module: the source tree's (the docs describe the tree they are built from),
    loaded by path so that nothing else of the package is imported; else the installed one."""
    path = ROOT / "src" / "fastloss" / "_specs.py"
    if not path.exists():
        from fastloss import _specs
        return _specs
    name = "_fastloss_specs_for_docs"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _signature(s):
    """``fastloss.<loss>(...)`` as ``_api.signature`` makes it, its options on a line of their own."""
    head = f"fastloss.{s.name}({s.input_name}, {s.target_name}, *, reduction='mean', backend='auto', out=None"
    if not s.options:
        return head + ")"
    return head.replace("(", "(\n    ", 1) + ",\n    " + ", ".join(f"{k}={d!r}" for k, d in s.options.items()) + ",\n)"


def _mean_divisor(s, specs):
    if s.label_weighted_mean:
        return ("`Σ w[y]` over the rows not ignored (their count without `weight`); the rows, "
                "for probability targets")
    return "the rows" if s.layout == specs.ROWS else "the elements"


def _shapes(s, specs):
    x = f"`{s.input_name}`"
    if s.layout == specs.ROWS:
        shape = f"A row loss: {x} is `(..., C)`, one loss per row over the last (class) axis"
    else:
        shape = f"Elementwise: one loss per element of {x}, any shape"
    targets = {
        specs.CLASSES: "integer class indices of the batch shape `(...)`",
        specs.CLASSES_OR_PROBS: "integer class indices of the batch shape `(...)`, or float "
                                "probabilities of the input's shape",
        specs.VALUES: "floats of the input's shape",
    }[s.targets]
    if s.binary_labels:
        targets = "labels in {-1, +1} or {0, 1} (0 means -1), of the input's shape"
    return f"{shape}; `{s.target_name}`: {targets}."


def loss_page(s, specs):
    """The Markdown page of spec ``s`` (``specs``: the spec table module)."""
    lines = [
        f"# {s.name}", "",
        f"```python\n{_signature(s)}\n```",
        "", _shapes(s, specs), "",
        "## Formula", "",
        "Per element or row, before reduction (`x` is the first argument, `t` the target, `w` the weight):", "",
        s.math or f"`{s.formula}`", "",
        "In one line (the docstring's):", "", f"```\n{s.formula}\n```", "",
        "## Entry points", "",
        "| call | returns |", "|---|---|",
        f"| `fastloss.{s.name}(...)` | the loss, reduced by `reduction`; `out` receives the loss of "
        f"`reduction=\"none\"` |",
        f"| `fastloss.{s.name}_grad(..., grad_output=1.0)` | d(loss)/d(`{s.input_name}`) times "
        f"`grad_output`; `out` receives it and may be `{s.input_name}` itself |",
        f"| `fastloss.{s.name}_and_grad(...)` | `(loss, grad)` in one fused pass |", "",
        "`reduction`: " + ", ".join(f"`{r!r}`" for r in s.reductions) + f". `'mean'`, the default, divides "
        f"by {_mean_divisor(s, specs)}" + ("; `'batchmean'` by `shape[0]`" if "batchmean" in s.reductions else "")
        + ".",
        "`backend`: `'auto'`, `'cython'`, `'numba'`, `'cuda'` or `'numpy'` ([Backends and threads](../backends.md)).",
        "",
        "## Options", "",
    ]
    if s.options:
        lines += ["| option | default | |", "|---|---|---|"]
        for k, d in s.options.items():
            note = s.option_notes.get(k, "")
            if k in s.choices:
                note += (": " if note else "") + "one of " + ", ".join(f"`{c!r}`" for c in s.choices[k])
            lines.append(f"| `{k}` | `{d!r}` | {note} |")
    else:
        lines.append("None.")
    lines += ["", "## Twins", "", "| framework | the same loss |", "|---|---|"]
    lines += [f"| {where} | {twin} |" for where, twin in s.twins.items()]
    lines.append(f"| JAX | `fastloss.jax.{s.name}` (the same arguments, plus `inplace_grad`) |")
    lines += ["", "## Where fastloss differs, and why", ""]
    lines += [f"- {note}" for note in s.differs] or ["Nowhere beyond the rules every loss shares."]
    lines += ["", "Every loss also follows the [choices where the contract is silent](../choices.md).", ""]
    return "\n".join(lines)


def index_page(specs):
    """The Markdown overview of every loss."""
    lines = [
        "# Losses", "",
        "Per element or per row, before reduction (`x` is the first argument; class axis last). "
        "Each loss has three entry points, `name`, `name_grad` and `name_and_grad`; "
        "the page of each says its options, its twins in PyTorch, Keras and optax, and where "
        "fastloss differs. These pages are generated from the spec table, `src/fastloss/_specs.py`.", "",
        "| function | formula | options (defaults) | `\"mean\"` divides by |", "|---|---|---|---|",
    ]
    for s in specs.SPECS.values():
        options = ", ".join(f"`{k}={d!r}`" for k, d in s.options.items()) or "—"
        lines.append(f"| [`{s.name}({s.input_name}, {s.target_name})`]({s.name}.md) | `{s.formula}` | "
                     f"{options} | {_mean_divisor(s, specs)} |")
    lines += ["", RULES]
    return "\n".join(lines)


RULES = """`reduction` is `"mean"` (default), `"sum"` or `"none"`; `"mean"` of an empty batch is NaN,
`"sum"` 0. `*_grad` takes `grad_output` (a scalar, or an array of the unreduced loss's shape with
`"none"`). Results are NumPy scalars of the input's float dtype (`"mean"`/`"sum"`) or arrays of
the batch shape (row losses) or the input shape (elementwise), and gradients have the input's
shape and dtype.
"""


def pages(specs=None):
    """{docs path: Markdown} of every generated page."""
    specs = specs or load_specs()
    out = {"losses/index.md": index_page(specs)}
    out.update({f"losses/{name}.md": loss_page(s, specs) for name, s in specs.SPECS.items()})
    return out


def section(name, title):
    """The body of the ``## title`` section of the repository's file ``name`` (README.md, ...)."""
    text = (ROOT / name).read_text(encoding="utf-8")
    head = f"## {title}\n"
    if head not in text:
        raise ValueError(f"docs: {name} has no '## {title}' section")
    return text.split(head, 1)[1].split("\n## ", 1)[0].strip() + "\n"


# ---- mkdocs events -----------------------------------------------------------------------------

def on_config(config):
    """List every loss page under the nav's "Losses" section."""
    specs = load_specs()
    losses = [f"losses/{name}.md" for name in specs.SPECS]
    for item in config.nav or []:
        if isinstance(item, dict) and "Losses" in item:
            item["Losses"] = ["losses/index.md", *losses]
            break
    return config


def on_files(files, config):
    from mkdocs.structure.files import File  # here: the page generators above need no mkdocs

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    for path in sorted(RESULTS.iterdir()):  # served as results/<name>, never copied into docs/
        if path.suffix in (".png", ".json"):
            files.append(File(f"results/{path.name}", str(RESULTS.parent), config.site_dir,
                              config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace each ``<!-- from README.md: Title -->`` line by that section of that file."""
    return INCLUDE.sub(lambda m: section(m["name"], m["title"]), markdown)
