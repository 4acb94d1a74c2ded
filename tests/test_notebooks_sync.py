"""Every notebook is stored twice, as .ipynb (with outputs) and as a py:percent file (for review);
jupytext pairs them. Both must hold the same cells, so `jupytext --sync` would change nothing."""

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")) + sorted(NOTEBOOKS.glob("solutions.py"))


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_notebook_has_both_files():
    stems_py = {p.stem for p in SCRIPTS}
    stems_ipynb = {p.stem for p in [*NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), *NOTEBOOKS.glob("solutions.ipynb")]}
    assert stems_py and stems_py == stems_ipynb


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_pair_holds_the_same_cells(script):
    from_script = jupytext.read(script)
    from_notebook = jupytext.read(script.with_suffix(".ipynb"))
    assert _cells(from_script) == _cells(from_notebook), f"run: jupytext --sync {script.relative_to(NOTEBOOKS.parent)}"
    assert from_notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_stored_notebook_was_executed_in_order(script):
    # nbval fails on a cell with outputs but no execution count; stored runs must be complete
    notebook = jupytext.read(script.with_suffix(".ipynb"))
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert all(counts) and counts == sorted(counts), "re-execute the notebook top to bottom"
