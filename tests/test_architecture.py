"""The package's layout stays the one the README and the package docstring describe.

* Each module belongs to a stage, in the order the notebooks teach them; a module never imports one
  of a later stage (not even inside a function), so each stage can be read, tested and changed
  knowing only the stages before it.
* Presentation (matplotlib, ipywidgets) stays in the `viz*` and `widgets` modules: core modules
  never import them at import time, so the trainer and the commands run headless.
* No module-level import cycles.
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
    "data": 2, "pairs": 2, "models": 2, "latents": 2, "inference": 2, "random_kontext": 2,
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


def imported_modules(name: str, top_level_only: bool) -> set[str]:
    """Package modules `name` imports (absolute names without the package prefix)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # include imports under `if TYPE_CHECKING:` blocks? no: they never run
        nodes = [node for node in nodes if isinstance(node, (ast.Import, ast.ImportFrom))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{alias.name}".strip(".") for alias in node.names]
            found |= {candidate for candidate in candidates if candidate in MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kontext_lora_helpers"):
            found.add(node.module.removeprefix("kontext_lora_helpers").strip("."))
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("kontext_lora_helpers.") for alias in node.names
                      if alias.name.startswith("kontext_lora_helpers.")}
    found.discard(name)
    return {module for module in found if module in MODULES}


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


def test_no_module_level_import_cycles():
    graph = {name: imported_modules(name, top_level_only=True) for name in MODULES}
    visiting, done = set(), set()

    def visit(node, path):
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join(path + [node])}"
        visiting.add(node)
        for neighbour in graph[node]:
            # a package imports its own modules and they import their siblings through it: not a cycle
            if not neighbour.startswith(node + ".") and not node.startswith(neighbour + "."):
                visit(neighbour, path + [node])
        visiting.discard(node)
        done.add(node)

    for name in graph:
        visit(name, [])


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
