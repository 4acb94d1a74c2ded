"""Colab readiness: every notebook opens in Colab from its badge and installs the course itself.

The install cell cannot be tested by uninstalling the package from the test's own interpreter, so
it is executed twice, as a notebook would run it: once as it is here (the package is importable:
it must do nothing), and once with the package reported missing and the commands captured (it must
clone the course, install it editable, make it importable and move into its notebooks folder).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))
COURSE_REPOSITORY = "kontext-lora/kontext-lora-course"


def _cells(path: Path):
    return json.loads(path.read_text())["cells"]


def _install_cell(path: Path) -> str:
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    return "".join(code[0]["source"])


def test_there_are_five_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_has_a_colab_badge_for_this_notebook(path):
    first = "".join(_cells(path)[0]["source"])
    url = f"https://colab.research.google.com/github/{COURSE_REPOSITORY}/blob/main/notebooks/{path.name}"
    assert f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})" in first


def test_readme_has_a_badge_per_notebook():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"github/{COURSE_REPOSITORY}/blob/main/notebooks/{path.name}" in readme


def test_install_cell_is_the_same_in_every_notebook():
    assert len({_install_cell(path) for path in NOTEBOOKS}) == 1


def _run_install_cell(monkeypatch, package_missing: bool):
    import importlib.util
    import os

    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, **kwargs: calls.append(("run", command)))
    monkeypatch.setattr(os, "chdir", lambda folder: calls.append(("chdir", folder)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    if package_missing:
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "kontext_lora_helpers" else real_find_spec(name, *a))
    exec(compile(_install_cell(NOTEBOOKS[0]), "install-cell", "exec"), {})
    return calls


def test_install_cell_does_nothing_where_the_course_is_installed(monkeypatch):
    assert _run_install_cell(monkeypatch, package_missing=False) == []


def test_install_cell_clones_installs_and_enters_the_course_on_colab(monkeypatch):
    calls = _run_install_cell(monkeypatch, package_missing=True)
    clone, install, chdir = calls
    assert clone == ("run", ["git", "clone", "--depth", "1", f"https://github.com/{COURSE_REPOSITORY}",
                             "/content/kontext-lora-course"])
    assert install[1][:2] == [sys.executable, "-m"] and install[1][-2:] == ["-e", "/content/kontext-lora-course"]
    assert chdir == ("chdir", "/content/kontext-lora-course/notebooks")
    assert sys.path[0] == "/content/kontext-lora-course"


def test_notebooks_pick_half_precision_by_compute_capability():
    # A T4 claims bf16 through emulation; the loader decides by compute capability (tests/test_models.py
    # checks the rule). Here: no notebook asks torch.cuda.is_bf16_supported() instead.
    for path in sorted(NOTEBOOKS[0].parent.glob("0*.py")):
        assert not re.search(r"is_bf16_supported\(", path.read_text()), path.name
