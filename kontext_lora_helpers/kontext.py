"""What every model source shares about FLUX.1 Kontext, in one place below all of them.

The loader (`models`), the model sources (nano, the random twins of the real model), running the
pipeline (`inference`) and the objective all read these; none of them needs another to get them,
so the loader depends on the sources and never the reverse (`tests/test_architecture.py` checks
imports inside functions too).
"""

from __future__ import annotations

import inspect

__all__ = ["GUIDANCE_SCALE", "REAL_MODEL_ID", "SCHEDULER_CONFIG", "default_num_inference_steps"]

REAL_MODEL_ID = "black-forest-labs/FLUX.1-Kontext-dev"
"""The hub id of the real model."""

GUIDANCE_SCALE = 3.5
"""FLUX.1 Kontext-dev's distilled guidance value: the pipeline's default, the value the guidance
embedding is given in training and validation, and the one every restoration here uses."""

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
"""FLUX.1's ``FlowMatchEulerDiscreteScheduler`` config, unchanged (nano and the twins use it): the
shift is computed from the image token count."""


def default_num_inference_steps(pipe) -> int:
    """The pipeline's own default number of denoising steps (28 for `FluxKontextPipeline`).

    Args:
        pipe: a pipeline, or a pipeline class (to read the default without building one).
    """
    pipeline_class = pipe if isinstance(pipe, type) else type(pipe)
    return int(inspect.signature(pipeline_class.__call__).parameters["num_inference_steps"].default)
