"""Where the course's files are, wherever a notebook or command runs from, and where the course lives.

The notebooks run with `notebooks/` as their working folder, the commands usually from the
repository root, and Colab from `/content/<repo>`; `data_samples()` finds the sample photos in each
case (the folder next to the installed package in a clone, else the working folder or its parents).
Everything a notebook writes goes under `outputs()`: `outputs/` next to the notebook, or the folder
named by `OUTPUTS_VARIABLE` (the test suite's own, so a test run never touches a student's results).

`REPOSITORY_URL` is the one home of the course's GitHub address. Each notebook opens with a Colab
badge (`colab_badge`) and a bootstrap cell (`bootstrap_cell`) that installs the course on Colab; the
README has a badge per notebook. All of them are generated from `REPOSITORY_URL`, and one command
points them all (and `REPOSITORY_URL` itself) at another repository, such as your fork::

    python -m kontext_lora_helpers.course --repository https://github.com/you/your-fork
    python -m kontext_lora_helpers.course --check   # do notebooks and README match REPOSITORY_URL?

`tests/test_colab.py` checks that the notebooks hold exactly what this module generates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = [
    "OUTPUTS_VARIABLE", "REPOSITORY_URL", "bootstrap_cell", "colab_badge", "course_files_pointing_at", "data_samples",
    "files_out_of_date", "github_repository_path", "held_out_dir", "main", "outputs", "point_course_at",
    "repository_url_in", "evaluation_dirs", "test_dir", "validation_dir",
]

PACKAGE_DIR = Path(__file__).resolve().parent
# The course's three sets of photos, each used for one thing only:
#  * training photos, `data_samples/` itself: the LoRA learns from them;
#  * validation photos, `data_samples/validation/`: every choice is made on them (nano's recipe, the
#    LoRA scale, the number of denoising steps, the classical yardstick's strength), and the trainer
#    validates on them while it runs;
#  * test photos, `data_samples/held_out/`: they only report, once every choice is made.
# Nothing trains on the last two: not the LoRA, not nano's VAE or editor.
VALIDATION_DIRNAME = "validation"
HELD_OUT_DIRNAME = "held_out"
EVALUATION_DIRNAMES = (VALIDATION_DIRNAME, HELD_OUT_DIRNAME)

# The course's repository on GitHub: the badges open the notebooks from it, the bootstrap cell clones
# it. `python -m kontext_lora_helpers.course --repository <url>` rewrites this line and every file
# generated from it. (kontext-lora/kontext-lora-course is not published yet: to use Colab today,
# point the course at your fork.)
REPOSITORY_URL = "https://github.com/kontext-lora/kontext-lora-course"

#: The repository root of a clone (where `notebooks/` and `README.md` are), for `point_course_at`.
REPOSITORY_ROOT = PACKAGE_DIR.parent
COLAB_BADGE_IMAGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
#: Colab opens a notebook from one branch; forks of the course keep `main`.
COLAB_BRANCH = "main"
# Every bootstrap cell asks this question first; it tells the cell apart from any other code cell.
BOOTSTRAP_TEST = 'importlib.util.find_spec("kontext_lora_helpers") is None'
_GITHUB_URL = re.compile(r"https://github\.com/(?P<owner>[A-Za-z0-9-]+)/(?P<name>[A-Za-z0-9._-]+?)(?:\.git)?/?")
_REPOSITORY_URL_LINE = re.compile(r'^REPOSITORY_URL = "(?P<url>[^"]*)"', re.MULTILINE)


def data_samples() -> Path:
    """The `data_samples/` folder (training photos; validation ones in `validation/`, test ones in
    `held_out/`).

    Raises:
        FileNotFoundError: when no `data_samples/` is found; clone the repository to get it.
    """
    candidates = [PACKAGE_DIR.parent / "data_samples"]
    here = Path.cwd().resolve()
    candidates += [folder / "data_samples" for folder in (here, *here.parents)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "No data_samples/ folder next to the package or above the working folder. Clone the course "
        "repository (it ships the sample photos) and run from inside it."
    )


def validation_dir() -> Path:
    """`data_samples/validation/`: the photos every choice is made on (nothing trains on them)."""
    return data_samples() / VALIDATION_DIRNAME


def test_dir() -> Path:
    """`data_samples/held_out/`: the test photos, which only report (nothing trains or chooses on them)."""
    return data_samples() / HELD_OUT_DIRNAME


held_out_dir = test_dir  # the name the notebooks and earlier versions use


def evaluation_dirs() -> list[Path]:
    """The validation and test folders: what a training set drawn from `data_samples()` leaves out
    (``DegDataset(data_samples(), ..., exclude=evaluation_dirs())``)."""
    return [validation_dir(), test_dir()]


OUTPUTS_VARIABLE = "KONTEXT_LORA_OUTPUTS"
"""An environment variable naming the folder the notebooks write into instead of `outputs/`. The test
suite sets it (`tests/conftest.py`): its short runs of the notebooks must neither overwrite a
student's results nor trip over them (notebook 04's trainer refuses a folder holding another run)."""


def outputs(name: str = "") -> Path:
    """Where a notebook writes `name`: ``outputs/<name>`` relative to the working folder (the
    notebook's), or under the folder `OUTPUTS_VARIABLE` names."""
    import os

    return Path(os.environ.get(OUTPUTS_VARIABLE) or "outputs") / name


# --- the repository's address, the Colab badges and the bootstrap cell ---------------------------

def github_repository_path(repository_url: str) -> str:
    """``"owner/name"`` of a GitHub repository URL (a trailing ``/`` or ``.git`` is allowed).

    Raises:
        ValueError: for anything but ``https://github.com/<owner>/<name>``; Colab opens notebooks
            from GitHub only.
    """
    match = _GITHUB_URL.fullmatch(repository_url.strip())
    if match is None:
        raise ValueError(
            f"not a GitHub repository URL: {repository_url!r}; Colab opens notebooks from GitHub only, "
            "so give https://github.com/<owner>/<name>"
        )
    return f"{match['owner']}/{match['name']}"


def colab_badge(notebook_file: str, repository_url: str = REPOSITORY_URL) -> str:
    """The markdown line that opens ``notebooks/<notebook_file>`` of the repository in Colab.

    Example: ``colab_badge("01_degradations.ipynb")`` is
    ``[![Open In Colab](…/colab-badge.svg)](https://colab.research.google.com/github/<owner>/<name>/blob/main/notebooks/01_degradations.ipynb)``.
    """
    path = github_repository_path(repository_url)
    return f"{COLAB_BADGE_IMAGE}(https://colab.research.google.com/github/{path}/blob/{COLAB_BRANCH}/notebooks/{notebook_file})"


def bootstrap_cell(repository_url: str = REPOSITORY_URL, clone_folder: str | None = None) -> str:
    """The source of every notebook's first code cell: on Colab, clone the course and install it.

    Args:
        repository_url: what ``git clone`` fetches (any URL git accepts; the notebooks hold
            `REPOSITORY_URL`).
        clone_folder: where the clone goes; default ``/content/<repository name>`` (Colab's working
            folder).

    The cell runs before the package is installed, so it uses the standard library only. Where
    `kontext_lora_helpers` is not importable, it clones the repository (``--depth 1``: history is
    not needed), installs it editable and puts the clone on ``sys.path`` (an editable install is
    seen by the running kernel only after a restart). Wherever the clone folder exists (Colab, also
    after a restart), it moves into the clone's ``notebooks/``, the working folder the notebooks
    expect. On a machine with the course installed and no such folder, it does nothing.
    """
    if clone_folder is None:
        repository_name = repository_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        clone_folder = f"/content/{repository_name}"
    # json.dumps writes a double-quoted string literal that Python reads back unchanged
    return "\n".join([
        "# On Colab: fetch the course, install its helpers and work in its notebooks folder.",
        "# Where the course is installed (a clone on your machine), this cell does nothing.",
        "import importlib.util",
        "import os",
        "import subprocess",
        "import sys",
        "",
        f"COURSE_URL = {json.dumps(repository_url, ensure_ascii=False)}  # or the URL of your fork",
        f"COURSE_DIR = {json.dumps(clone_folder, ensure_ascii=False)}",
        f"if {BOOTSTRAP_TEST}:",
        '    subprocess.check_call(["git", "clone", "--depth", "1", COURSE_URL, COURSE_DIR])',
        '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", COURSE_DIR])',
        "    sys.path.insert(0, COURSE_DIR)  # an editable install is seen only after a restart",
        "if os.path.isdir(COURSE_DIR):  # on Colab, also after a restart: work in the course's notebooks folder",
        '    os.chdir(os.path.join(COURSE_DIR, "notebooks"))',
    ])


# --- pointing the notebooks, the README and REPOSITORY_URL at a repository -----------------------

def _notebook_files(root: Path) -> list[Path]:
    # the numbered notebooks, then the solutions to their exercises (opened on Colab the same way)
    files = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted((root / "notebooks").glob("solutions.ipynb"))
    if not files:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {root}; run from a clone of the course")
    return files


def _replace_badge_line(text: str, badge: str, where: Path, line_prefix: str = "") -> str:
    """`text` with its one Colab badge line (after `line_prefix`) replaced by `badge`."""
    pattern = re.compile(rf"^{re.escape(line_prefix + COLAB_BADGE_IMAGE)}\(.*$", re.MULTILINE)
    new_text, count = pattern.subn(lambda _: line_prefix + badge, text)
    if count != 1:
        raise ValueError(f"{where}: expected one Colab badge line, found {count}")
    return new_text


def _notebook_pointing_at(path: Path, repository_url: str) -> str:
    """The .ipynb's text with its badge and bootstrap cell from `repository_url`; outputs untouched."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    title_cell = notebook["cells"][0]
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    if title_cell["cell_type"] != "markdown" or not code_cells or BOOTSTRAP_TEST not in "".join(code_cells[0]["source"]):
        raise ValueError(f"{path}: expected a markdown title cell and a bootstrap cell as the first code cell")
    title = _replace_badge_line("".join(title_cell["source"]), colab_badge(path.name, repository_url), path)
    title_cell["source"] = title.splitlines(keepends=True)
    code_cells[0]["source"] = bootstrap_cell(repository_url).splitlines(keepends=True)
    # the layout Jupyter and jupytext write (one-space indent, UTF-8 kept), so only the two cells change
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def _script_pointing_at(path: Path, repository_url: str) -> str:
    """The paired py:percent file's text, changed as `_notebook_pointing_at` changes the .ipynb.

    Text is replaced in place rather than regenerated with jupytext, so the rest of the file stays
    byte for byte as it was (and the package does not need jupytext).
    """
    notebook_file = path.with_suffix(".ipynb").name
    text = _replace_badge_line(path.read_text(encoding="utf-8"), colab_badge(notebook_file, repository_url), path, "# ")
    # the first code cell: a bare "# %%" line, its source, blank lines, then the next "# %%" line or the end
    first_code_cell = re.compile(r"^# %%\n(?P<source>.*?)(?P<gap>\n*)(?=^# %%|\Z)", re.MULTILINE | re.DOTALL)
    match = first_code_cell.search(text)
    if match is None or BOOTSTRAP_TEST not in match["source"]:
        raise ValueError(f"{path}: expected the bootstrap cell as the first code cell")
    gap = match["gap"] or "\n"
    return text[: match.start("source")] + bootstrap_cell(repository_url) + gap + text[match.end("gap"):]


def _readme_pointing_at(path: Path, notebooks: list[Path], repository_url: str) -> str:
    """README.md's text with every Colab link to a course notebook opening it from `repository_url`."""
    text = path.read_text(encoding="utf-8")
    # a Colab link to one of these notebooks, whatever repository and branch it names
    any_link = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/notebooks/"
                          rf"(?=(?:{'|'.join(re.escape(notebook.name) for notebook in notebooks)})\))")
    prefix = f"https://colab.research.google.com/github/{github_repository_path(repository_url)}/blob/{COLAB_BRANCH}/notebooks/"
    text = any_link.sub(prefix, text)
    missing = [notebook.name for notebook in notebooks if colab_badge(notebook.name, repository_url) not in text]
    if missing:
        raise ValueError(f"{path}: no Colab badge for {', '.join(missing)}; add one per notebook")
    return text


def _course_module_pointing_at(path: Path, repository_url: str) -> str:
    text = path.read_text(encoding="utf-8")
    new_text, count = _REPOSITORY_URL_LINE.subn(f'REPOSITORY_URL = "{repository_url}"', text)
    if count != 1:
        raise ValueError(f"{path}: expected one line starting with REPOSITORY_URL = \"...\", found {count}")
    return new_text


def course_files_pointing_at(repository_url: str, root: str | Path = REPOSITORY_ROOT) -> dict[Path, str]:
    """What each file that names the repository should hold once it points at `repository_url`.

    The files are every ``notebooks/NN_*.ipynb`` and its paired ``.py`` (badge line and bootstrap
    cell), ``README.md`` (a badge per notebook) and ``kontext_lora_helpers/course.py`` (the
    `REPOSITORY_URL` line). Nothing is written.

    Raises:
        ValueError: for a URL that is not ``https://github.com/<owner>/<name>``, or a file that lacks
            the badge, the bootstrap cell or the `REPOSITORY_URL` line to replace.
    """
    root = Path(root)
    repository_url = "https://github.com/" + github_repository_path(repository_url)
    notebooks = _notebook_files(root)
    texts: dict[Path, str] = {}
    for notebook in notebooks:
        # each .py after its .ipynb: jupytext refuses to open a pair whose .ipynb is the newer file
        texts[notebook] = _notebook_pointing_at(notebook, repository_url)
        texts[notebook.with_suffix(".py")] = _script_pointing_at(notebook.with_suffix(".py"), repository_url)
    texts[root / "README.md"] = _readme_pointing_at(root / "README.md", notebooks, repository_url)
    course_module = root / "kontext_lora_helpers" / "course.py"
    texts[course_module] = _course_module_pointing_at(course_module, repository_url)
    return texts


def point_course_at(repository_url: str, root: str | Path = REPOSITORY_ROOT) -> list[Path]:
    """Rewrite the notebooks, the README and `REPOSITORY_URL` to name `repository_url`.

    Every new text is computed (and every file checked) before the first one is written, and each
    file is replaced atomically, so a refusal changes nothing. Returns the files that changed.
    """
    from kontext_lora_helpers.fileio import write_text_atomically

    texts = course_files_pointing_at(repository_url, root)
    changed = [path for path, text in texts.items() if path.read_text(encoding="utf-8") != text]
    for path in changed:
        write_text_atomically(path, texts[path])
    return changed


def repository_url_in(root: str | Path = REPOSITORY_ROOT) -> str:
    """The `REPOSITORY_URL` written in ``<root>/kontext_lora_helpers/course.py`` (this module's own
    value when `root` is the clone it was imported from)."""
    path = Path(root) / "kontext_lora_helpers" / "course.py"
    match = _REPOSITORY_URL_LINE.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{path}: no line starting with REPOSITORY_URL = \"...\"")
    return match["url"]


def files_out_of_date(root: str | Path = REPOSITORY_ROOT) -> list[Path]:
    """The notebooks and README under `root` that do not hold what `REPOSITORY_URL` generates."""
    texts = course_files_pointing_at(repository_url_in(root), root)
    return [path for path, text in texts.items() if path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    """``python -m kontext_lora_helpers.course [--repository URL | --check] [--root FOLDER]``."""
    import argparse

    from kontext_lora_helpers.cli import fail

    parser = argparse.ArgumentParser(
        prog="python -m kontext_lora_helpers.course",
        description="Point the notebooks' Colab badges and bootstrap cells, the README's badges and "
                    "REPOSITORY_URL at a GitHub repository (your fork), or check that they agree.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--repository", metavar="URL",
                        help="https://github.com/<owner>/<name> to point the course at")
    action.add_argument("--check", action="store_true",
                        help="only report files that do not match REPOSITORY_URL (the default)")
    parser.add_argument("--root", type=Path, default=REPOSITORY_ROOT,
                        help="the clone to change (default: the one this package is installed from, %(default)s)")
    args = parser.parse_args(argv)

    try:
        if args.repository is None:
            stale = files_out_of_date(args.root)
            url = repository_url_in(args.root)
            if stale:
                names = "".join(f"\n  {path.relative_to(args.root)}" for path in stale)
                return fail(f"these files do not match REPOSITORY_URL = {url}:{names}\n"
                            f"run: python -m kontext_lora_helpers.course --repository {url}")
            print(f"notebooks and README match REPOSITORY_URL = {url}")
            return 0
        changed = point_course_at(args.repository, args.root)
    except (OSError, ValueError) as error:
        return fail(str(error))
    for path in changed:
        print(f"rewrote {path.relative_to(args.root)}")
    url = repository_url_in(args.root)
    print(f"the course points at {url}" + ("" if changed else " (nothing to change)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
