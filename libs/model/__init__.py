"""darkroom's image model: the interface the decoder depends on, the built-in model and its tools.

Importing this package does not import torch; only `load_model` of a torch model does.

Modules:
    interface          ImageModel protocol, RenderState, schedule, registry, NoOpModel
    world              the captioned synthetic world the built-in model is trained on
    vq, maskgit        the networks; builtin: the ImageModel implementation and weight format
    safety_classifier  the forbidden-object detector the safety service uses
    attributes         the attribute classifier used to measure prompt adherence
    train, eval        `python -m libs.model.train` / `python -m libs.model.eval`
"""

from libs.model.interface import (
    GRID_SIZE,
    ImageModel,
    NoOpModel,
    RenderState,
    cosine_schedule,
    initial_tokens,
    load_model,
    next_masked_count,
    pack_tokens,
    pass_seed,
    state_from_checkpoint,
    unpack_tokens,
)

__all__ = [
    "GRID_SIZE",
    "ImageModel",
    "NoOpModel",
    "RenderState",
    "cosine_schedule",
    "initial_tokens",
    "load_model",
    "next_masked_count",
    "pack_tokens",
    "pass_seed",
    "state_from_checkpoint",
    "unpack_tokens",
]
