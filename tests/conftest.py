"""Shared test set-up: no network, no display, the cores shared between pytest-xdist workers."""

import os

# Nothing in the tests may reach a model hub; fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from kontext_lora_helpers.course import OUTPUTS_VARIABLE  # noqa: E402  (light modules: no torch)
from kontext_lora_helpers.gpu_settings import NOTEBOOK_STEPS_VARIABLE  # noqa: E402

# nbval executes every notebook: their nano training runs take 4 steps here instead of the course's,
# with short validations (the stored notebooks and the README's times are full runs)
os.environ.setdefault(NOTEBOOK_STEPS_VARIABLE, "4")


def _write_notebook_outputs_to_a_temporary_folder() -> None:
    """The notebooks write into `course.outputs()`: here a fresh folder per test process, removed at
    exit, so a test run neither overwrites a student's `notebooks/outputs/` nor trips over it."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="kontext-lora-test-outputs-")
    os.environ[OUTPUTS_VARIABLE] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


_write_notebook_outputs_to_a_temporary_folder()


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker gets its share of the cores as torch threads.

    Two processes that each run two torch threads on two cores are about ten times slower than
    either alone (their OpenMP threads wait on each other), so each worker, and every notebook kernel
    and command it starts (they inherit the environment), computes on cores // workers threads.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
    import torch

    torch.set_num_threads(int(threads))


_share_the_cores_between_workers()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SLOW_FIRST = ("notebooks/solutions.ipynb", "notebooks/05_restoration.ipynb", "tests/test_notebooks_real_model.py",
              "tests/test_nano.py", "tests/test_benchmark_scripts.py", "tests/test_train.py",
              "notebooks/04_training.ipynb")
"""Files whose tests take minutes, longest first: they start first, so that no worker is left running
one while the others idle."""

INDEPENDENT_TESTS = ("tests/test_notebooks_real_model.py",)
"""Files whose tests share no module fixture: each test is a unit of its own (these take minutes each)."""


def scope_of(nodeid: str) -> str:
    """The unit pytest-xdist hands to one worker: a test file (its module fixtures are built once, a
    notebook's cells run in order in one kernel), or one test of `INDEPENDENT_TESTS`.

    Notebooks may run in different workers: each test process writes the notebooks' outputs into a
    folder of its own (above), and 05 and the solutions train notebook 04's LoRA where 04 has not run
    in their process (`gpu_settings.notebook_lora`).
    """
    path = nodeid.split("::", 1)[0]
    return nodeid if path in INDEPENDENT_TESTS else path


def pytest_collection_modifyitems(config, items):
    """Slow files first (`SLOW_FIRST`), each file's tests in their own order (a stable sort)."""
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each holds nano, a notebook kernel, or the
    real-width twin of a few GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole scopes (`scope_of`) per worker, in collection order (slow ones first)."""
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False
    return CourseScheduling(config, log)


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO_ROOT / "data_samples"


@pytest.fixture(scope="session")
def data_samples() -> Path:
    """The shipped training photos (``data_samples/``, held-out ones in ``held_out/``)."""
    return DATA_SAMPLES


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """A rank-4 LoRA saved by the project's own code (`lora.save_lora`) whose B holds small random
    values, so it visibly changes nano's output (a fresh LoRA's B is zero and would change nothing)."""
    import torch

    from kontext_lora_helpers import lora as lora_ops
    from kontext_lora_helpers.models import load_pipeline

    torch.manual_seed(0)
    donor = load_pipeline("nano", device="cpu")
    lora_ops.add_lora(donor.transformer, rank=4)
    with torch.no_grad():
        for name, parameter in donor.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    folder = tmp_path_factory.mktemp("lora")
    lora_ops.save_lora(donor.transformer, folder)
    return folder
