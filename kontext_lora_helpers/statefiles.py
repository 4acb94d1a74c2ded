"""Training state saved without pickle: tensors in safetensors, everything else as JSON.

Optimizer, learning-rate scheduler, grad scaler and random-generator states are nested dicts,
lists and tuples of tensors, numpy arrays and plain values. `torch.save` pickles them, and loading a
pickle can run any code the file's author wrote, so a checkpoint shared by someone else could take
over the machine that resumes it. `save_state` writes one ``.safetensors`` file instead: its tensors
are the state's tensors and numpy arrays, and the nesting, with every plain value, is JSON stored in
the file's metadata. `load_state` rebuilds the same object (dict keys keep their type, tuples stay
tuples, arrays come back with their dtype) and never executes anything from the file.

    save_state(optimizer.state_dict(), folder / "optimizer.safetensors")
    optimizer.load_state_dict(load_state(folder / "optimizer.safetensors"))

Files are written atomically (`fileio.write_safetensors_atomically`). Checkpoints of earlier versions of this
package hold ``.pt`` pickles; `load_legacy_pickle` reads those with ``torch.load(weights_only=True)``
and an allow-list of the numpy types a random state needs, which refuses anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from .fileio import write_safetensors_atomically

__all__ = ["StateFileError", "load_legacy_pickle", "load_state", "save_state"]

STRUCTURE_KEY = "kontext_lora_state"
"""The metadata entry holding the JSON structure."""
FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file that is missing, damaged, or not one this module wrote (the message names it)."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64 if value.dtype.kind in "ui" else
                                                                            np.float64))
        return {"__ndarray__": name, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return _encode(value.item(), tensors)
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and not any(key.startswith("__") for key in value):
            return {key: _encode(item, tensors) for key, item in value.items()}
        return {"__dict__": [[_encode(key, tensors), _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a state file (tensors, arrays, dicts, lists, "
                    "tuples and plain values only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(np.dtype(value["dtype"])).reshape(value["shape"])
    if "__tuple__" in value:
        return tuple(_decode(item, tensors) for item in value["__tuple__"])
    if "__dict__" in value:
        return {_hashable(_decode(key, tensors)): _decode(item, tensors) for key, item in value["__dict__"]}
    return {key: _decode(item, tensors) for key, item in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(item) for item in key) if isinstance(key, list) else key


def save_state(state: Any, path: str | os.PathLike) -> Path:
    """Write `state` (nested dicts, lists, tuples of tensors, numpy arrays, numbers, strings,
    booleans and None) to the safetensors file `path`, atomically.

    Raises:
        TypeError: for a value of any other type (nothing is written).
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps({"version": FORMAT_VERSION, "state": _encode(state, tensors)})
    return write_safetensors_atomically(path, tensors, {STRUCTURE_KEY: structure})


def load_state(path: str | os.PathLike) -> Any:
    """Read a file written by `save_state`; tensors come back on the CPU.

    Raises:
        StateFileError: the file is missing, is not a safetensors file, or holds no state structure.
    """
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"state file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        structure = json.loads(metadata[STRUCTURE_KEY])
    except (KeyError, json.JSONDecodeError) as error:
        raise StateFileError(f"{path} is a safetensors file without a training-state structure "
                             f"({error}); it was not written by this package") from error
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise StateFileError(f"{path} is not a readable safetensors file ({error}); the checkpoint is damaged: "
                             "resume from an earlier one") from error
    if structure.get("version") != FORMAT_VERSION:
        raise StateFileError(f"{path} has state format {structure.get('version')!r}; this package reads "
                             f"{FORMAT_VERSION}: update the package")
    return _decode(structure["state"], tensors)


def load_legacy_pickle(path: str | os.PathLike) -> Any:
    """Read a ``.pt`` state written by an earlier version (``torch.save``) without running its code:
    ``torch.load(weights_only=True)``, allowing only the numpy types a numpy random state holds.

    Raises:
        StateFileError: the pickle holds anything else (it may be malicious); the message says what to do.
    """
    path = Path(path)
    allowed = [np.ndarray, np.dtype, np.dtypes.UInt32DType]
    reconstruct = getattr(getattr(np, "_core", np.core), "multiarray")._reconstruct
    try:
        with torch.serialization.safe_globals([reconstruct, *allowed]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise StateFileError(
            f"refusing to load {path}: it holds objects a training state never needs, and loading them could "
            f"run code from the file ({type(error).__name__}). If you made this checkpoint yourself with an "
            "older version of this package, resume it once with that version; otherwise delete the checkpoint."
        ) from error
