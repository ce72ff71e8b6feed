"""darkroom's image model as the decoder and the safety service load it at run time.

Importing this package does not import torch; only loading a torch model does.

Modules:
    interface          ImageModel protocol, RenderState, schedule, token packing (imports no model)
    registry           the loaders of every kind of model, by name: `load_model("builtin")`
    builtin            the built-in ImageModel and its weight format; vq, maskgit: its networks
    world_model        WorldModel, which draws the prompt's scene (libs.model.scenes) procedurally
    amused             aMUSEd through diffusers behind the same interface
    noop               NoOpModel, the stand-in of a known cost for benchmarks and tests
    safety_classifier  the forbidden-object detector the safety service uses

Training, evaluation, the sampled world and validation before promotion are libs.modeltools,
which imports this package; nothing here imports it back, and no service imports it.
"""

from libs.model.interface import (
    GRID_SIZE,
    ImageModel,
    RenderState,
    cosine_schedule,
    initial_tokens,
    next_masked_count,
    pack_tokens,
    pass_seed,
    state_from_checkpoint,
    unpack_tokens,
)
from libs.model.noop import NoOpModel
from libs.model.registry import load_model

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
