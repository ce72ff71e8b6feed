"""darkroom's hot paths: nearest-codebook search and confidence sampling.

Each function dispatches to a Triton kernel for CUDA tensors when triton imports, and to the
plain-torch reference otherwise, so the CPU path always works. Triton is imported lazily (the
first CUDA call), never at package import. Set DARKROOM_KERNELS=reference to force the reference
everywhere (for debugging a kernel).
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from kernels.reference import codebook_lookup_ref, confidence_sample_ref

__all__ = [
    "codebook_lookup",
    "codebook_lookup_ref",
    "confidence_sample",
    "confidence_sample_ref",
    "triton_available",
]

_triton_module: ModuleType | None = None
_triton_failed = False


def _triton() -> ModuleType | None:
    """The triton_kernels module, or None when triton cannot be imported."""
    global _triton_module, _triton_failed
    if _triton_module is None and not _triton_failed:
        try:
            from kernels import triton_kernels

            _triton_module = triton_kernels
        except ImportError:
            _triton_failed = True
    return _triton_module


def triton_available() -> bool:
    """Whether the Triton kernels can be imported in this process."""
    return _triton() is not None


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda and os.environ.get("DARKROOM_KERNELS") != "reference" and triton_available()


def codebook_lookup(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook entry for each row of `z` (see kernels.reference.codebook_lookup_ref).

    Args:
        z: (N, D) vectors.
        codebook: (K, D) entries, on the same device.

    Returns:
        (indices (N,) int64, squared distances (N,) float32).
    """
    mod = _triton() if _use_triton(z) else None
    if mod is not None:
        result: tuple[torch.Tensor, torch.Tensor] = mod.codebook_lookup_triton(z, codebook)
        return result
    return codebook_lookup_ref(z, codebook)


def confidence_sample(
    logits: torch.Tensor, temperature: float, gumbel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples a token per row and returns its probability (see
    kernels.reference.confidence_sample_ref).

    Args:
        logits: (N, V) scores.
        temperature: > 0 samples; <= 0 is greedy.
        gumbel: (N, V) standard Gumbel noise on the same device.

    Returns:
        (tokens (N,) int64, confidence (N,) float32).
    """
    mod = _triton() if _use_triton(logits) else None
    if mod is not None and logits.shape[1] <= mod.MAX_VOCAB:
        sampled: tuple[torch.Tensor, torch.Tensor] = mod.confidence_sample_triton(logits, temperature, gumbel)
        return sampled
    return confidence_sample_ref(logits, temperature, gumbel)
