"""The conda environment and the pip install describe the same packages."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pip_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_name(r): r.replace(" ", "") for r in requirements}


def _conda_pip_requirements() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    entries = [line.strip()[2:].strip() for line in lines[start + 1:] if line.strip().startswith("- ")]
    return {_name(e): e.replace(" ", "") for e in entries if not e.startswith("-e")}


def test_environment_yml_matches_pyproject():
    pip, conda = _pip_requirements(), _conda_pip_requirements()
    assert set(pip) == set(conda), f"only in pyproject: {set(pip) - set(conda)}; only in environment.yml: {set(conda) - set(pip)}"
    assert pip == conda, "version bounds differ between pyproject.toml and environment.yml"


def test_required_course_packages_are_installed_by_the_dev_extra():
    needed = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "pillow", "matplotlib",
              "ipywidgets", "nbval", "jupytext", "sentencepiece", "protobuf", "safetensors"}
    assert needed <= set(_pip_requirements())


def test_environment_installs_the_package_itself():
    assert "- -e ." in (ROOT / "environment.yml").read_text()
