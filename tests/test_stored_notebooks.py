"""The committed notebooks are what students read on GitHub: executed, with their figures, with an
exercises section and a summary, and without anything of the machine that executed them.

`python tools/regenerate_notebooks.py` re-executes them all and stores the result."""

from pathlib import Path

import nbformat
import pytest
from stored_outputs import MACHINE_PATH, WIDGET_MIME, image_output_count, machine_paths_in

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COURSE = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
REGENERATE = "python tools/regenerate_notebooks.py"
MIN_FIGURES_PER_NOTEBOOK = 4
MIN_FIGURES_IN_ALL = 25
MAX_NOTEBOOK_BYTES = 2_500_000  # compressed 72 dpi figures; a notebook beyond this stores too much


def _read(path):
    return nbformat.read(path, as_version=4)


def _markdown(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.stem)
def test_stored_notebook_shows_its_figures(path):
    count = image_output_count(_read(path))
    assert count >= MIN_FIGURES_PER_NOTEBOOK, f"{path.name} stores {count} figures; run {REGENERATE}"


def test_the_course_stores_enough_figures():
    assert sum(image_output_count(_read(path)) for path in COURSE) >= MIN_FIGURES_IN_ALL


@pytest.mark.parametrize("path", [*COURSE, *NOTEBOOKS.glob("solutions.ipynb")], ids=lambda p: p.stem)
def test_stored_outputs_hold_no_machine_paths_or_widget_state(path):
    notebook = _read(path)
    assert not machine_paths_in(notebook), f"{path.name}: {machine_paths_in(notebook)}; run {REGENERATE}"
    assert "widgets" not in notebook.metadata, f"{path.name} stores widget state; run {REGENERATE}"
    widget_outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])
                      if WIDGET_MIME in output.get("data", {})]
    assert not widget_outputs, f"{path.name} stores widget views; run {REGENERATE}"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.parametrize("path", COURSE, ids=lambda p: p.stem)
def test_notebook_ends_with_a_summary_and_exercises(path):
    text = _markdown(_read(path))
    assert "## Summary" in text and "## Exercises" in text, path.name
    exercises = text.split("## Exercises", 1)[1]
    assert 3 <= exercises.count("**Exercise ") <= 5, f"{path.name}: 3 to 5 exercises, each starting **Exercise N.**"


@pytest.mark.parametrize("path", [*COURSE, *NOTEBOOKS.glob("solutions.ipynb")], ids=lambda p: p.stem)
def test_nbval_markers_are_cell_tags_not_code(path):
    # students read the code; nbval reads the tags (`nbval-check-output`, `nbval-ignore-output`, ...)
    sources = "\n".join(cell.source for cell in _read(path).cells)
    assert "NBVAL_" not in sources, f"{path.name}: use a cell tag such as nbval-check-output"


@pytest.mark.parametrize("text, found", [
    ("saved to /work/main/notebooks/outputs/x.png", ["/work/main/notebooks/outputs/x.png"]),
    ("PosixPath('/tmp/pytest-3/a')", ["/tmp/pytest-3/a"]),
    ("C:\\Users\\ana\\course", ["C:\\Users\\ana\\course"]),
    ("outputs/04-restoration-lora/metrics.json and 1/tmp ratio", []),
    ("see ../data_samples/held_out", []),
])
def test_machine_path_pattern(text, found):
    assert MACHINE_PATH.findall(text) == found


def test_regenerate_tidies_widgets_and_compresses_photos():
    import base64
    import importlib.util
    import io

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("regenerate", NOTEBOOKS.parent / "tools" / "regenerate_notebooks.py")
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    noisy_photo = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB as PNG
    chart = np.full((100, 200, 3), 255, dtype=np.uint8)
    notebook = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}})
    notebook.cells.append(nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data={WIDGET_MIME: {"model_id": "1"}, "text/plain": "VBox('/work/x')"}),
        nbformat.v4.new_output("display_data", data={"image/png": png(noisy_photo), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": png(chart), "image/jpeg": "...", "text/plain": "<PIL>"}),
    ]))
    regenerate.tidy_outputs(notebook)
    widget, photo, small = (output["data"] for output in notebook.cells[0].outputs)
    assert "widgets" not in notebook.metadata and list(widget) == ["text/plain"] and not machine_paths_in(notebook)
    assert "image/png" not in photo and len(base64.b64decode(photo["image/jpeg"])) < len(base64.b64decode(png(noisy_photo)))
    assert list(small) == ["image/png", "text/plain"]  # a small chart stays one sharp PNG
    assert image_output_count(notebook) == 2
