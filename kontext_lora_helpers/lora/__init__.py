"""Everything about LoRAs, in one place (notebook 03 teaches the adapter, notebook 05 the files).

* `adapter`: the LoRA on the Kontext transformer through peft (`add_lora`), its parameters, saving
  it in diffusers' format (`save_lora`), loading it back for a resumed run (`load_lora_into`), the
  moving average of its weights (`LoraEMA`) and tools to look inside it.
* `files`: which file a path means (`resolve_lora_file`), reading it, and checking that it fits a
  model before diffusers loads it (`check_lora_fits`).
* `layouts`: diffusers' layout and the kohya layout ComfyUI loads, converted exactly (`read_lora`,
  `write_lora`, `convert_lora_file`).
* `merge`: folding a LoRA into the transformer's weights (`merge_lora_into_transformer`).

``from kontext_lora_helpers import lora`` gives all of them as ``lora.<name>``.
"""

from .adapter import (
    DOUBLE_BLOCK_TARGETS,
    SINGLE_BLOCK_TARGETS,
    LoraEMA,
    add_lora,
    count_parameters,
    default_target_modules,
    describe_parameters,
    gradient_census,
    load_lora_into,
    lora_gradient_norm,
    lora_layer_parts,
    lora_parameters,
    lora_state_dict,
    save_lora,
)
from .files import (
    DIFFUSERS_KEY,
    DIFFUSERS_METADATA_KEY,
    LORA_WEIGHT_NAME,
    RESTORATION_STEPS_METADATA_KEY,
    LoraFileError,
    adapter_metadata,
    check_lora_fits,
    diffusers_file_metadata,
    read_safetensors,
    recorded_restoration_steps,
    resolve_lora_file,
)
from .layouts import (
    DOUBLE_BLOCK_LAYOUT,
    FORMATS,
    FUSED_RANKS_METADATA_KEY,
    SINGLE_BLOCK_LAYOUT,
    LoraLayer,
    check_output_path,
    convert_lora_file,
    detect_lora_format,
    layers_from_comfyui,
    layers_from_diffusers,
    layers_to_comfyui,
    layers_to_diffusers,
    read_lora,
    save_safetensors_atomically,
    write_lora,
)
from .merge import load_transformer_for_merge, merge_lora_into_transformer, save_merged_transformer

__all__ = [
    "DIFFUSERS_KEY", "DIFFUSERS_METADATA_KEY", "DOUBLE_BLOCK_LAYOUT", "DOUBLE_BLOCK_TARGETS", "FORMATS",
    "FUSED_RANKS_METADATA_KEY", "LORA_WEIGHT_NAME", "LoraEMA", "LoraFileError", "LoraLayer",
    "RESTORATION_STEPS_METADATA_KEY", "SINGLE_BLOCK_LAYOUT", "SINGLE_BLOCK_TARGETS", "adapter_metadata", "add_lora", "check_lora_fits",
    "diffusers_file_metadata",
    "check_output_path", "convert_lora_file", "count_parameters", "default_target_modules",
    "describe_parameters", "detect_lora_format", "gradient_census", "layers_from_comfyui",
    "layers_from_diffusers", "layers_to_comfyui", "layers_to_diffusers", "load_lora_into",
    "load_transformer_for_merge", "lora_gradient_norm", "lora_layer_parts", "lora_parameters",
    "lora_state_dict", "merge_lora_into_transformer", "read_lora", "read_safetensors",
    "recorded_restoration_steps", "resolve_lora_file", "save_lora", "save_merged_transformer", "save_safetensors_atomically", "write_lora",
]
