"""Loading a FLUX.1 Kontext pipeline: nano, a local diffusers folder, or a hub id.

One call for every notebook and command::

    pipe = load_pipeline("nano")                                       # CPU, the shipped weights
    pipe = load_pipeline("black-forest-labs/FLUX.1-Kontext-dev")       # GPU, bf16 on Ampere or newer
    pipe = load_pipeline("/models/flux-kontext", quantize="nf4")       # 4-bit base for 16-24 GB cards

Device and dtype: CUDA when present, else CPU. bf16 only where the GPU's compute capability is at
least 8 (Ampere: A100, L4, RTX 30xx/40xx); a T4 (7.5) reports `torch.cuda.is_bf16_supported()` as
True but emulates it slowly, so it gets fp16. The CPU gets fp32.

Memory options for the 12 B transformer on 16-24 GB cards:
- ``quantize="nf4"``: 4-bit NormalFloat weights through bitsandbytes (CUDA only), ~6.7 GB instead of
  ~23.8 GB in bf16; the LoRA trains in higher precision on top (QLoRA).
- ``quantize="int8"``: 8-bit weights through optimum-quanto; runs on CPU too, so the code path is
  tested here on nano.
- ``vae_slicing`` / ``vae_tiling``: decode a batch image by image / a large image tile by tile.
- ``text_encoder_offload``: keep CLIP and T5 (9.5 GB in bf16) on the CPU and move each to the GPU only
  while it runs (`enable_model_cpu_offload`).
- One side at a time: `load_text_encoders` loads only CLIP and T5 (with their tokenizers), and
  ``load_pipeline(..., text_encoders=False)`` everything but them. The trainer encodes its prompts
  with the first, frees it (or parks it on the CPU), then loads the second
  (`train.loop.load_pipeline_and_prompt_cache`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .kontext import GUIDANCE_SCALE, REAL_MODEL_ID  # noqa: F401 - the loader's names for them
QUANTIZE_CHOICES = ("none", "nf4", "int8")
"""How the frozen transformer may be quantized: "none", "nf4" (bitsandbytes, CUDA) or "int8"
(optimum-quanto, CPU too). `load_pipeline` also takes None for "none"."""
COMPILE_BACKENDS = ("inductor", "aot_eager")
"""``torch.compile`` backends the training and restore commands offer (``--compile_backend``):
"inductor" generates fused code (nano's training step 1.16x faster on 2 CPU cores, after a 30 s
compile: `tests/benchmarks/bench_compile.py`);
"aot_eager" only traces forward and backward, which checks that a model compiles, quickly."""
_REAL_MAX_SEQUENCE_LENGTH = 512


def _dtype_argument() -> str:
    """diffusers 0.42 renamed `from_pretrained(torch_dtype=...)` to `dtype=...`; use what is installed."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


_DTYPE_ARGUMENT = _dtype_argument()


class ModelLoadError(RuntimeError):
    """A pipeline could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype
    reason: str


def choose_device_and_dtype(device: str | torch.device | None = None, dtype: torch.dtype | str | None = None) -> DeviceChoice:
    """Pick where and in which precision to run.

    Args:
        device: "cuda", "cpu", "cuda:1"... or None for CUDA when available.
        dtype: torch dtype or its name ("bfloat16", "float16", "float32"), or None to decide from the
            device: bf16 on GPUs with compute capability >= 8, fp16 on older GPUs, fp32 on CPU.
    """
    if isinstance(dtype, str):
        try:
            dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                     "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
        except KeyError:
            raise ValueError(f"dtype must be one of bfloat16, float16, float32; got {dtype!r}.") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no CUDA GPU is visible; use device='cpu'.")
    if dtype is not None:
        return DeviceChoice(device, dtype, "requested")
    if device.type != "cuda":
        return DeviceChoice(device, torch.float32, "CPU: float32 (half precision is slow or unsupported)")
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return DeviceChoice(device, torch.bfloat16, f"compute capability {major}.{minor} >= 8: native bf16")
    # T4 (7.5) claims bf16 support through emulation; fp16 is its fast path.
    return DeviceChoice(device, torch.float16, f"compute capability {major}.{minor} < 8: no native bf16, fp16")


def is_nano(name_or_path) -> bool:
    return str(name_or_path).strip().lower() == "nano"


def max_sequence_length_for(pipe) -> int:
    """T5 tokens to use with this pipeline: 512 for FLUX-dev, 32 for nano (its tokenizer says so)."""
    tokenizer_limit = getattr(pipe.tokenizer_2, "model_max_length", _REAL_MAX_SEQUENCE_LENGTH) or _REAL_MAX_SEQUENCE_LENGTH
    return int(min(_REAL_MAX_SEQUENCE_LENGTH, tokenizer_limit))


def native_resolution(pipe) -> int:
    """The side the model was trained at: 64 for nano, 1024 for FLUX.1 Kontext."""
    from .nano import NANO_RESOLUTION

    return NANO_RESOLUTION if pipe.vae.config.sample_size == NANO_RESOLUTION else 1024


def call_kwargs(pipe, height: int, width: int) -> dict:
    """Arguments that make `pipe(...)` work at exactly `height` x `width` with the right text length.

    The pipeline otherwise rescales to a 1024x1024 area and snaps the condition image to one of
    Kontext's preferred resolutions, which silently changes the working size.
    """
    return dict(height=height, width=width, max_area=height * width, _auto_resize=False,
                max_sequence_length=max_sequence_length_for(pipe))


def model_source(name_or_path: str) -> str:
    """'nano', 'random' (`random_kontext`'s twins), 'local' or 'hub', or a ModelLoadError that says
    what would work."""
    from .random_kontext import is_random_kontext

    if is_nano(name_or_path):
        return "nano"
    if is_random_kontext(name_or_path):
        return "random"
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; pass a diffusers pipeline folder, a hub id or 'nano'.")
        if not (path / "model_index.json").exists():
            raise ModelLoadError(
                f"{path} is not a diffusers pipeline folder (no model_index.json). Pass the folder that "
                "contains model_index.json, transformer/, vae/, text_encoder/ ..., e.g. one written by "
                "`huggingface-cli download black-forest-labs/FLUX.1-Kontext-dev --local-dir DIR` or by "
                "`python -m kontext_lora_helpers.nano export DIR`."
            )
        return "local"
    parts = str(name_or_path).split("/")
    if len(parts) == 2 and all(parts) and not str(name_or_path).startswith((".", "~")):
        return "hub"
    raise ModelLoadError(
        f"Unknown model {name_or_path!r}: not 'nano', 'random-kontext' or 'random-kontext-shallow', not "
        f"an existing folder, not a hub id like '{REAL_MODEL_ID}'."
    )


def hub_offline() -> bool:
    """True when downloads are switched off (``HF_HUB_OFFLINE``, as the tests set it), with
    huggingface_hub's reading of the value. Read when called: `huggingface_hub.is_offline_mode`
    reads it once at import, so a notebook or test that changes it later would not be followed."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ENV_VARS_TRUE_VALUES


def _quantize_config(quantize: str | None, device: torch.device, compute_dtype: torch.dtype):
    quantize = "none" if quantize is None else quantize
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}; got {quantize!r}.")
    if quantize == "none":
        return None
    if quantize == "nf4":
        if device.type != "cuda":
            raise ModelLoadError(
                "NF4 quantization needs bitsandbytes on a CUDA GPU, and this run is on the CPU. Use "
                "quantize='int8' (optimum-quanto, works on CPU) or no quantization."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ModelLoadError("NF4 needs bitsandbytes: pip install bitsandbytes") from None
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    try:
        import optimum.quanto  # noqa: F401
    except ImportError:
        raise ModelLoadError("int8 quantization needs optimum-quanto: pip install optimum-quanto") from None
    from diffusers import QuantoConfig

    with _quiet_diffusers():  # diffusers marks QuantoConfig deprecated; it is its CPU-capable backend today
        return QuantoConfig(weights_dtype="int8")


TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
"""CLIP-L and T5-XXL, the prompt's encoders: `load_text_encoders` loads only them,
``load_pipeline(text_encoders=False)`` everything else."""
DENOISER = ("transformer", "vae")
"""The models that turn the prompt's embeddings and the control image into an image."""


def load_pipeline(
    name_or_path: str = "nano",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    quantize: str | None = None,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    text_encoder_offload: bool = False,
    local_files_only: bool | None = None,
    progress_bar: bool = False,
    text_encoders: bool = True,
):
    """Load a `FluxKontextPipeline` ready to run.

    Args:
        name_or_path: "nano", a local diffusers folder, a hub id (e.g. FLUX.1-Kontext-dev), or
            "random-kontext" / "random-kontext-shallow": FLUX.1 Kontext's architecture with random
            weights, created on the device (`random_kontext`; outputs are noise).
        device, dtype: see `choose_device_and_dtype`.
        quantize: "none" (or None), "nf4" (CUDA + bitsandbytes) or "int8" (optimum-quanto, CPU or GPU); applied
            to the transformer only, through diffusers' quantization configs.
        vae_slicing, vae_tiling, text_encoder_offload: memory options (module docstring).
        local_files_only: never reach the hub; defaults to True when HF_HUB_OFFLINE is set.
        progress_bar: show the denoising progress bar on each call.
        text_encoders: False leaves CLIP and T5 out (``pipe.text_encoder`` and ``text_encoder_2``
            are None; the tokenizers stay): the pipeline then runs on prompt embeddings computed
            beforehand, e.g. with `load_text_encoders` (what the trainer does).

    Raises:
        ModelLoadError: unknown name, not a pipeline folder, missing credentials for a gated model,
            weights not available offline, NF4 requested without CUDA.
    """
    parts = DENOISER + (TEXT_ENCODERS if text_encoders else ())
    return _load_parts(name_or_path, parts, device, dtype, quantize, vae_slicing, vae_tiling,
                       text_encoder_offload, local_files_only, progress_bar)


def load_text_encoders(
    name_or_path: str = "nano",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    local_files_only: bool | None = None,
):
    """Only the text side of a pipeline: CLIP and T5 with their tokenizers, on `device`, frozen.

    Loaded from the same source and in the same precision as `load_pipeline` would load them, so
    their embeddings are the full pipeline's (one exception: nano in half precision with a
    quantized transformer, where `load_pipeline` leaves them float32). Used to encode prompts
    before the transformer is loaded: T5-XXL (9.5 GB in bf16/fp16) and the transformer then never
    share the GPU.

    Returns:
        a `FluxKontextPipeline` whose transformer and vae are None: enough for ``encode_prompt``,
        `objective.PromptEmbeddingCache` and `max_sequence_length_for`, not for generating.
    """
    return _load_parts(name_or_path, TEXT_ENCODERS, device, dtype, local_files_only=local_files_only)


def _load_parts(name_or_path, parts, device=None, dtype=None, quantize=None, vae_slicing=False, vae_tiling=False,
                text_encoder_offload=False, local_files_only=None, progress_bar=False):
    """`load_pipeline` for the models named in `parts` (of `TEXT_ENCODERS` + `DENOISER`); the
    others are None. Every source goes through here, whichever parts are asked for."""
    from diffusers import FluxTransformer2DModel

    source = model_source(name_or_path)
    choice = choose_device_and_dtype(device, dtype)
    quant_config = _quantize_config(quantize, choice.device, choice.dtype) if "transformer" in parts else None
    if local_files_only is None:
        local_files_only = hub_offline()

    if source == "nano":
        from .nano import build_nano_pipeline

        pipe = build_nano_pipeline(parts=parts)
        if quant_config is not None:
            # Same code path as the real model: a transformer folder loaded with a quantization config.
            with tempfile.TemporaryDirectory() as folder, _quiet_diffusers():
                pipe.transformer.save_pretrained(folder)
                pipe.transformer = FluxTransformer2DModel.from_pretrained(
                    folder, quantization_config=quant_config, **{_DTYPE_ARGUMENT: choice.dtype}
                )
    elif source == "random":
        from .random_kontext import build_random_kontext_components, random_transformer_folder

        # Text encoders that will be offloaded are created on the CPU: a T4 cannot hold T5-XXL and the
        # transformer at once.
        text_device = torch.device("cpu") if text_encoder_offload else choice.device
        random_parts = [part for part in parts if not (part == "transformer" and quant_config is not None)]
        components = build_random_kontext_components(name_or_path, choice.device, choice.dtype,
                                                     text_device=text_device, parts=random_parts)
        if quant_config is not None:
            # The real checkpoint's path: a transformer folder loaded with a quantization config.
            with _quiet_diffusers():
                components["transformer"] = FluxTransformer2DModel.from_pretrained(
                    random_transformer_folder(name_or_path, choice.dtype), quantization_config=quant_config,
                    **{_DTYPE_ARGUMENT: choice.dtype}
                ).eval().requires_grad_(False)
        from diffusers import FluxKontextPipeline

        pipe = FluxKontextPipeline(**components)
    else:
        pipe = _from_pretrained(str(name_or_path), choice.dtype, quant_config, local_files_only, parts)

    loaded = [getattr(pipe, name) for name in (*DENOISER, *TEXT_ENCODERS) if getattr(pipe, name) is not None]
    # Frozen: a pipeline loaded from a folder has trainable weights, and the first loss computed
    # through a 12 B transformer would keep a graph over all of them. `lora.add_lora` makes the
    # adapter (only) trainable.
    for component in loaded:
        component.requires_grad_(False)
    # nano is built in float32 and cast here as a whole; that would cast a quantized transformer
    # too, so with one the rest of nano stays float32.
    if quant_config is None and loaded[0].dtype != choice.dtype:
        pipe.to(dtype=choice.dtype)
    if text_encoder_offload and choice.device.type == "cuda":
        pipe.enable_model_cpu_offload(device=choice.device)
    elif quant_config is not None and quantize == "nf4":
        for name in ("vae", *TEXT_ENCODERS):  # bnb modules are placed already
            if getattr(pipe, name) is not None:
                getattr(pipe, name).to(choice.device)
    else:
        pipe.to(choice.device)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe


def quiet_library_output() -> None:
    """Silence diffusers' and transformers' notes, deprecation warnings and loading bars for the rest
    of the process (a notebook's stored outputs stay readable; nothing the course needs is hidden:
    errors still raise). A pipeline's own denoising bar is switched off per pipeline with
    ``pipe.set_progress_bar_config(disable=True)``."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers(\.|$)")


@contextlib.contextmanager
def _quiet_diffusers():
    """Silence diffusers' info/warning logs for a block (kept out of notebook outputs)."""
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(previous)


def _from_pretrained(name_or_path: str, dtype, quant_config, local_files_only: bool,
                     parts=DENOISER + TEXT_ENCODERS):
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    kwargs = {_DTYPE_ARGUMENT: dtype, "local_files_only": local_files_only}
    # Components passed in: None for a part left out (diffusers then neither downloads nor loads
    # it), the quantized transformer.
    given = {name: None for name in (*DENOISER, *TEXT_ENCODERS) if name not in parts}
    try:
        if quant_config is not None:
            given["transformer"] = FluxTransformer2DModel.from_pretrained(
                name_or_path, subfolder="transformer", quantization_config=quant_config, **kwargs
            )
        return FluxKontextPipeline.from_pretrained(name_or_path, **kwargs, **given)
    except GatedRepoError as error:
        raise ModelLoadError(
            f"{name_or_path} is a gated model. Accept its licence at https://huggingface.co/{name_or_path} "
            "with your account, then log in on this machine (`huggingface-cli login`, or set HF_TOKEN)."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelLoadError(
            f"{name_or_path} was not found on the hub, or it is private/gated and you are not logged in "
            "(`huggingface-cli login`, or set HF_TOKEN)."
        ) from error
    except (LocalEntryNotFoundError, OSError) as error:
        if local_files_only or "offline" in str(error).lower() or "connect" in str(error).lower():
            raise ModelLoadError(
                f"The weights of {name_or_path} are not on this machine and downloading is off or "
                "impossible (HF_HUB_OFFLINE / no network). Download them where there is network "
                f"(`huggingface-cli download {name_or_path} --local-dir DIR`) and pass DIR, or use 'nano'."
            ) from error
        raise


def describe_pipeline(pipe) -> dict:
    """What was loaded: per component parameter count (millions), dtype and device; memory in GB."""
    report: dict = {"components": {}}
    total_bytes = 0
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        params = list(module.parameters())
        count = sum(p.numel() for p in params)
        nbytes = sum(p.numel() * p.element_size() for p in params)
        total_bytes += nbytes
        report["components"][name] = {
            "parameters_m": round(count / 1e6, 3),
            "dtype": str(params[0].dtype).replace("torch.", "") if params else "-",
            "device": str(params[0].device) if params else "-",
            "weights_gb": round(nbytes / 1e9, 4),
        }
    report["weights_gb"] = round(total_bytes / 1e9, 4)
    report["max_sequence_length"] = max_sequence_length_for(pipe)
    if torch.cuda.is_available():
        report["cuda_allocated_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
    return report


def format_description(report: dict) -> str:
    """`describe_pipeline`'s report as an aligned table."""
    lines = [f"{'component':15s} {'params (M)':>11s} {'dtype':>9s} {'device':>7s} {'weights (GB)':>13s}"]
    for name, row in report["components"].items():
        lines.append(f"{name:15s} {row['parameters_m']:11.3f} {row['dtype']:>9s} {row['device']:>7s} {row['weights_gb']:13.4f}")
    lines.append(f"{'total':15s} {'':11s} {'':>9s} {'':>7s} {report['weights_gb']:13.4f}")
    return "\n".join(lines)
