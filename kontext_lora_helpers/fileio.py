"""Writing files so that an interrupted run never leaves a half-written one under the final name.

The files the package writes itself (restored and degraded images and their JSON records, metrics,
converted LoRA files, merged transformers, exported settings, training configs, nano's training
checkpoints) go through `write_atomically`: the content is written to ``<name>.partial`` in the same folder, then renamed
over the final name in one step (``os.replace`` is atomic within a file system). A kill during the
write leaves the previous file intact, or no file, plus a ``.partial`` that the next write replaces.
Training checkpoints are folders and are staged the same way in `train.checkpoints`; the LoRA
file a training run ends with goes through `write_atomically` too (`lora.save_lora`). Between the
write and the rename, `faults.fault_point` marks the moment a test can kill the process at.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .faults import fault_point

__all__ = [
    "DISK_FULL_ERRNOS", "LOCK_FILE", "PARTIAL_SUFFIX", "DiskFullError", "FolderLockedError", "disk_full_message",
    "folder_lock", "is_disk_full", "output_is_input_folder", "overwrites_its_input", "size_text", "write_atomically",
    "write_json_atomically", "write_safetensors_atomically", "write_text_atomically",
]

PARTIAL_SUFFIX = ".partial"


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary)`` on ``<path>.partial``, then rename it to ``path``.

    Args:
        path: the final file; its folder is created if needed.
        write: writes the whole content to the path it is given (for example
            ``lambda p: image.save(p, format="PNG")``: name the format, the suffix is ``.partial``).

    Returns:
        ``path`` as a `Path`. On any error (or Ctrl-C) the temporary file is removed and the error
        raised; a file already at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        write(temporary)
        fault_point(f"write:{path.parent.name}/{path.name}")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def output_is_input_folder(input_root: str | os.PathLike, output_root: str | os.PathLike) -> str | None:
    """A refusal (one sentence) when the output folder is the input folder itself; None otherwise.
    (An output folder *inside* the input folder is fine: the commands leave it out of their inputs.)"""
    if Path(input_root).is_dir() and os.path.realpath(input_root) == os.path.realpath(output_root):
        return (f"--output {str(output_root)!r} is the --input folder: the outputs would mix with the photos and "
                "could replace them; choose another folder (one inside it is fine)")
    return None


def overwrites_its_input(source: str | os.PathLike, output: str | os.PathLike) -> str | None:
    """A refusal (one sentence) when writing `output` would replace the input file `source` or its
    JSON record would land on it; None when the two are different files."""
    source_real = os.path.realpath(source)
    for target in (Path(output), Path(output).with_suffix(".json")):
        if os.path.realpath(target) == source_real:
            return (f"{target} is the input file {source} itself: the output folder must not hold the inputs "
                    "under the names the outputs take; choose another --output folder")
    return None


def write_safetensors_atomically(path: str | os.PathLike, tensors: dict,
                                 metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file through `write_atomically`: serialized in memory, then written with
    Python's own file I/O, so that a full disk raises `OSError` (ENOSPC, EFBIG) as every other
    write does (safetensors' ``save_file`` reports it as its own error type). `tensors` may be the
    tensors of the file being replaced."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    return write_atomically(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`write_atomically` for a text file (UTF-8)."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """`write_atomically` for JSON, ending in a newline."""
    return write_text_atomically(path, json.dumps(data, indent=indent) + "\n")


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""The errors of a write that ran out of room: no space left, a file over the size limit, a quota."""


class DiskFullError(OSError):
    """A write ran out of room; the message names the path, the free space and what is needed.

    Raised as ``DiskFullError(errno, message)``; ``str()`` is the message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a write that ran out of room (`DISK_FULL_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def size_text(num_bytes: int) -> str:
    """A size for a message: "16 kB", "1.2 MB", "3.4 GB" (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


def disk_full_message(path: str | os.PathLike, error: OSError, needed_bytes: int | None = None) -> str:
    """One sentence for a write to `path` that ran out of room: what failed, the free space of
    its file system, and (when known) about how much the write needs."""
    path = Path(path)
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    need = f"; it needs about {size_text(needed_bytes)}" if needed_bytes else ""
    return (f"could not write {path}: {error.strerror or error} ({size_text(free)} free on that disk{need}). "
            "Free some space, or point the output elsewhere, and run the command again; nothing written "
            "before was changed.")


# ---------------------------------------------------------------------------------------------
# One run per output folder
# ---------------------------------------------------------------------------------------------

LOCK_FILE = ".kontext-lora.lock"
"""The lock file a training run keeps in its output folder: JSON with the holder's process id,
host, start time and what it is."""


class FolderLockedError(RuntimeError):
    """The folder is in use by a live run; the message names it and what to do."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "a training run", say: Callable[[str], None] = print):
    """Hold `folder` for this process while the block runs: one run per output folder.

    Creates ``folder/.kontext-lora.lock`` exclusively (``O_CREAT | O_EXCL``). A lock whose process
    is still running on this machine refuses the new run; a lock of a process that is gone (a run
    that was killed) is taken over, with one message through `say`. The lock is removed at the
    end, also on an error or Ctrl-C; a SIGKILL leaves it, for the next run to take over.

    Raises:
        FolderLockedError: a live process (or one on another machine, which cannot be checked)
            holds the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "what": what}
    for _ in range(3):  # another process may take a stale lock between our look and our try
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                holder, pid, host = {}, None, None  # unreadable: written by a process killed mid-write
            if pid is not None and (host != record["host"] or _process_alive(pid)):
                where = "on this machine" if host == record["host"] else f"on {host}, which cannot be checked from here"
                raise FolderLockedError(
                    f"{folder} is in use by {holder.get('what', 'another run')} (process {pid} {where}, started "
                    f"{holder.get('started', '?')}). Wait for it to finish or stop it, or choose another folder; "
                    f"if you are sure nothing runs there, delete {lock}.") from None
            say(f"taking over {lock}: " + (f"process {pid}, which held it, is no longer running"
                                           if pid is not None else "it was unreadable") + " (a run that was killed)")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as file:
            json.dump(record, file)
        break
    else:
        raise FolderLockedError(f"could not take {lock}: other processes keep taking it; is a run starting there?")
    try:
        yield lock
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == record["pid"]:
                lock.unlink()
        except (OSError, ValueError):
            pass
