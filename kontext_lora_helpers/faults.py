"""Named moments where a test can kill the process, so that a fault lands exactly where it must.

The trainer and the file writers call `fault_point(name)` at the moments a real fault would hurt
most: after an optimizer step (``"train_step"``), after each file staged into a checkpoint
(``"checkpoint_file"``), right after a checkpoint is published (``"checkpoint_done"``), and inside
every whole-or-absent write between writing the temporary file and renaming it
(``"write:<folder>/<file>"``, `fileio.write_atomically`). Nothing happens unless the environment
variable `FAULT_VARIABLE` names one of them:

    KONTEXT_LORA_FAULT="checkpoint_file@3"   # SIGKILL this process at the 3rd staged checkpoint file

A point fires at its n-th occurrence in the process (1 when ``@n`` is left out) by sending the
process SIGKILL, the signal nothing can catch: what a preempted machine or the kernel's
out-of-memory killer does. `tests/test_faults.py` uses it for the kill-and-resume soak.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["FAULT_VARIABLE", "fault_point", "parse_fault"]

FAULT_VARIABLE = "KONTEXT_LORA_FAULT"
"""The environment variable naming the point to kill at, as ``<name>[@<occurrence>]``."""

_seen: Counter = Counter()


def parse_fault(spec: str) -> tuple[str, int]:
    """``"name@3"`` -> ("name", 3); ``"name"`` -> ("name", 1).

    Raises:
        ValueError: an empty name or an occurrence that is not a whole number >= 1.
    """
    name, _, count = spec.rpartition("@") if "@" in spec else (spec, "", "1")
    if not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{FAULT_VARIABLE} must look like 'checkpoint_file@3' (a point name, then @ and a "
                         f"whole number >= 1); got {spec!r}")
    return name, int(count)


def fault_point(name: str) -> None:
    """Count one occurrence of `name`; SIGKILL this process if `FAULT_VARIABLE` asks for this one."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    target, occurrence = parse_fault(spec)
    if name != target:
        return
    _seen[name] += 1
    if _seen[name] == occurrence:
        os.kill(os.getpid(), signal.SIGKILL)
