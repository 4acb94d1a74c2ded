"""What the stored notebooks may and must contain: the checks `tests/test_stored_notebooks.py` runs on
every commit and `tools/regenerate_notebooks.py` runs before it writes a notebook."""

from __future__ import annotations

import re

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")

# Absolute paths of the machine that executed a notebook: a checkout, a home or temporary folder, a
# Colab folder, a Windows drive. A student's machine has none of them.
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/(?:work|tmp|home|root|Users|content|private|mnt|var/folders|opt)/[^\s'\"<>)]*"
    r"|[A-Za-z]:\\\\?[^\s'\"<>]+)"
)


def text_outputs(notebook) -> list[str]:
    """Every text a notebook's outputs show: streams, text/plain, HTML, markdown and tracebacks."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    texts.append("".join(value))
            texts.extend(output.get("traceback", []))
    return texts


def machine_paths_in(notebook) -> list[str]:
    """The absolute machine paths found in a notebook's outputs (empty when there are none)."""
    return sorted({match for text in text_outputs(notebook) for match in MACHINE_PATH.findall(text)})


def image_output_count(notebook) -> int:
    """How many pictures the stored outputs hold (each figure is one output)."""
    return sum(any(mime in output.get("data", {}) for mime in IMAGE_MIMES)
               for cell in notebook.cells for output in cell.get("outputs", []))
