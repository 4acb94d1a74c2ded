"""The package's layout stays the one the README and the package docstring describe.

* Each module belongs to a stage, in the order the notebooks teach them; a module never imports one
  of a later stage (not even inside a function), so each stage can be read, tested and changed
  knowing only the stages before it.
* Presentation (matplotlib, ipywidgets) stays in the `viz*` and `widgets` modules: core modules
  never import them at import time, so the trainer and the commands run headless.
* No import cycles, counting the imports inside functions too (those under ``if TYPE_CHECKING:``
  never run and are left out): the model loader depends on the model sources, never the reverse.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kontext_lora_helpers"

STAGES: dict[str, int] = {
    # base: files, photos, the one metric, command-line helpers
    "course": 0, "faults": 0, "fileio": 0, "statefiles": 0, "images": 0, "metrics": 0, "cli": 0,
    # 01 degradations
    "degradations": 1, "prompts": 1, "degrade": 1,
    # 02 pairs, the model, latents, running the pipeline
    "data": 2, "pairs": 2, "kontext": 2, "models": 2, "latents": 2, "inference": 2, "random_kontext": 2,
    "nano": 2, "nano.model": 2, "nano.tokenizers": 2, "nano.pool": 2, "nano.edits": 2,
    # 03 objective, loss, LoRA
    "objective": 3, "losses": 3, "lora": 3,
    # 04 training
    "train": 4, "gpu_settings": 4, "preflight": 4,
    # 05 restoration
    "restore": 5, "classical": 5, "evaluate": 5, "export": 5,
    # tools that build and check nano with everything above
    "nano.train": 6, "nano.evaluate": 6, "nano.__main__": 6,
}
PRESENTATION = {"viz", "viz_degradations", "viz_objective", "viz_training", "viz_restoration", "widgets"}
PLOTTING_LIBRARIES = ("matplotlib", "ipywidgets", "IPython")
LAZY_PRESENTATION_ALLOWED = {
    # the trainer writes loss_curve.png at the end of a run, with a figure that needs no display
    ("train.loop", "viz_training"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
MODULES.pop("")  # the package's own __init__: an index that loads names lazily


def stage_of(name: str) -> int | None:
    """The stage of a module: its own entry, else its subpackage's (`lora.files` -> `lora`)."""
    while name:
        if name in STAGES:
            return STAGES[name]
        name = name.rpartition(".")[0]
    return None


def _import_nodes(tree: ast.Module, top_level_only: bool) -> list[ast.AST]:
    """The import statements of a module: the top level only, or every one, inside functions and
    classes too, except those under ``if TYPE_CHECKING:`` (they never run)."""
    if top_level_only:
        return [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(name: str, top_level_only: bool, modules: dict[str, Path] | None = None,
                     package_name: str = "kontext_lora_helpers") -> set[str]:
    """Package modules `name` imports (absolute names without the package prefix)."""
    modules = MODULES if modules is None else modules
    tree = ast.parse(modules[name].read_text())
    package = name.split(".") if modules[name].name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in _import_nodes(tree, top_level_only):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}".strip(".") for alias in node.names]
            found |= {candidate for candidate in candidates if candidate in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package_name):
            found.add(node.module.removeprefix(package_name).strip("."))
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix(package_name + ".") for alias in node.names
                      if alias.name.startswith(package_name + ".")}
    found.discard(name)
    return {module for module in found if module in modules}


def find_import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` ({module: modules it imports}) as a path that ends where it
    starts, or None. A module importing the package it lives in is left out (that package imports
    it in turn, which is how a package is built, not a cycle); a package importing its modules is
    kept, so a cycle through a package's ``__init__`` is found."""
    visiting, done = set(), set()

    def visit(node, path):
        if node in done:
            return None
        if node in visiting:
            return path[path.index(node):] + [node]
        visiting.add(node)
        for neighbour in sorted(graph[node]):
            if not node.startswith(neighbour + "."):
                cycle = visit(neighbour, path + [node])
                if cycle:
                    return cycle
        visiting.discard(node)
        done.add(node)
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def test_every_module_has_a_stage_or_is_presentation():
    unplaced = [name for name in MODULES if stage_of(name) is None and name not in PRESENTATION]
    assert not unplaced, f"add these modules to STAGES or PRESENTATION (and to the README's map): {unplaced}"


@pytest.mark.parametrize("name", [name for name in MODULES if name not in PRESENTATION])
def test_no_stage_imports_a_later_stage_or_presentation(name):
    own = stage_of(name)
    for imported in imported_modules(name, top_level_only=False):
        if imported in PRESENTATION:
            assert (name, imported) in LAZY_PRESENTATION_ALLOWED, f"{name} imports the presentation module {imported}"
            assert imported not in imported_modules(name, top_level_only=True), f"{name} imports {imported} at import time"
            continue
        later = stage_of(imported)
        # a subpackage's modules may import each other; `nano`'s tools are their own stage
        assert later <= own, f"{name} (stage {own}) imports {imported} (stage {later}), a later stage"


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "inside functions too"])
def test_no_import_cycles(top_level_only):
    graph = {name: imported_modules(name, top_level_only) for name in MODULES}
    cycle = find_import_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_planted_cycle_through_a_function(tmp_path):
    """Two modules of a planted package: `loader` imports `source` at the top, and `source` imports
    `loader` inside a function (as a model source reading a constant from the loader would)."""
    package = tmp_path / "planted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "loader.py").write_text("from . import source\n")
    (package / "source.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from . import unused\n\n\n"
                                       "def build():\n    from .loader import CONSTANT\n    return CONSTANT\n")
    (package / "unused.py").write_text("")
    modules = {"": package / "__init__.py", "loader": package / "loader.py", "source": package / "source.py",
               "unused": package / "unused.py"}
    graph = {name: imported_modules(name, False, modules, "planted") for name in modules}
    assert find_import_cycle(graph) in (["loader", "source", "loader"], ["source", "loader", "source"])
    assert "unused" not in graph["source"]  # under TYPE_CHECKING: never runs
    top_level = {name: imported_modules(name, True, modules, "planted") for name in modules}
    assert find_import_cycle(top_level) is None  # the module-level scan alone cannot see it


def test_the_top_level_is_a_lazy_index_and_core_modules_load_no_plotting_library():
    core = [name for name in MODULES if name not in PRESENTATION and not name.endswith("__main__")]
    script = (
        "import importlib, sys\n"
        "import kontext_lora_helpers as k\n"
        "assert 'torch' not in sys.modules, 'importing the package alone loads torch'\n"
        "from kontext_lora_helpers import DegDataset, apply_degradation, VGGPerceptualLoss\n"
        "from kontext_lora_helpers import load_pipeline, TrainConfig, train_lora, restore_image, psnr\n"
        "from kontext_lora_helpers.train import train\n"
        "assert train_lora is train and DegDataset.__module__ == 'kontext_lora_helpers.data'\n"
        "assert set(k.__all__) <= set(dir(k))\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module('kontext_lora_helpers.' + name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PLOTTING_LIBRARIES!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"loaded at import time: {result.stdout.strip()}"
