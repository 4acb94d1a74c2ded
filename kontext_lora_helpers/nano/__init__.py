"""Nano Kontext: tiny FLUX.1 Kontext components with weights trained on CPU (see `model.py`)."""

from .model import (
    MODEL_CARD_NAME,
    NANO_RESOLUTION,
    WEIGHTS_DIR,
    build_nano_components,
    build_nano_pipeline,
    load_nano_components,
    model_card_text,
    save_nano_weights,
)
from .tokenizers import NANO_MAX_SEQUENCE_LENGTH, build_clip_tokenizer, build_t5_tokenizer

__all__ = [
    "MODEL_CARD_NAME",
    "NANO_MAX_SEQUENCE_LENGTH",
    "NANO_RESOLUTION",
    "WEIGHTS_DIR",
    "build_clip_tokenizer",
    "build_nano_components",
    "build_nano_pipeline",
    "build_t5_tokenizer",
    "load_nano_components",
    "model_card_text",
    "save_nano_weights",
]
