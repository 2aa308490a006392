"""The documentation: a generated page for every loss of the spec table, and a strict mkdocs build."""

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository, wherever pytest runs from


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hook = _load("_docs_loss_pages", ROOT / "docs" / "hooks" / "loss_pages.py")


def test_every_loss_gets_a_page_with_its_formula_and_options():
    specs = hook.load_specs()
    pages = hook.pages(specs)
    assert set(pages) == {"losses/index.md", *(f"losses/{name}.md" for name in specs.SPECS)}
    for name, s in specs.SPECS.items():
        page = pages[f"losses/{name}.md"]
        assert page.startswith(f"# {name}\n"), name
        assert s.formula in page and s.math in page, name
        for option, default in s.options.items():
            assert f"| `{option}` | `{default!r}` |" in page, (name, option)
        for where, twin in s.twins.items():
            assert f"| {where} | {twin} |" in page, (name, where)
        for note in s.differs:
            assert note in page, name
        assert f"[`{name}(" in pages["losses/index.md"], name


def test_every_loss_has_its_docs_data():
    for name, s in hook.load_specs().SPECS.items():
        assert s.math and s.twins, name
        assert set(s.option_notes) <= set(s.options), name


def test_the_page_signature_is_the_public_one():
    fastloss = pytest.importorskip("fastloss")
    for name, s in hook.load_specs().SPECS.items():
        shown = " ".join(hook._signature(s).split()).replace("( ", "(").replace(", )", ")")
        assert shown == f"fastloss.{name}{inspect.signature(getattr(fastloss, name))}"


def test_mkdocs_build_strict(tmp_path):
    """The build CI runs (a few seconds): broken links, missing files or API names fail it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    site = tmp_path / "site"
    for name in hook.load_specs().SPECS:
        assert (site / "losses" / name / "index.html").exists(), name
    assert (site / "results" / "2026-11-24-xeon-2core.png").exists()
    assert not (site / "hooks").exists()
