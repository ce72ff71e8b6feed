"""Plain-torch reference versions of darkroom's hot paths.

These define the semantics; the Triton kernels must match them (tests/unit/model/test_kernels.py).
They run on any device and are what the CPU path always uses.
"""

from __future__ import annotations

import torch


def codebook_lookup_ref(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Finds the nearest codebook entry (squared Euclidean distance) for each row of `z`.

    Args:
        z: (N, D) vectors.
        codebook: (K, D) entries.

    Returns:
        (indices, distances): (N,) int64 index of the nearest entry (the lowest index on a tie)
        and (N,) float32 squared distance to it. Computed in float32 whatever the input dtype.
    """
    z32 = z.float()
    e32 = codebook.float()
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is constant per row, so it is added
    # after the argmin (one matmul instead of an (N, K, D) difference tensor).
    partial = (e32 * e32).sum(dim=1)[None, :] - 2.0 * (z32 @ e32.t())
    indices = partial.argmin(dim=1)
    dist = partial.gather(1, indices[:, None]).squeeze(1) + (z32 * z32).sum(dim=1)
    return indices, dist.clamp_min(0.0)


def confidence_sample_ref(
    logits: torch.Tensor, temperature: float, gumbel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples one token per row from softmax(logits / temperature) by the Gumbel-max trick.

    The noise is an argument, not drawn here, so a caller can derive it from a per-pass seed and
    get the same sample on every device and with every kernel.

    Args:
        logits: (N, V) unnormalised scores.
        temperature: > 0 samples; <= 0 takes the argmax (noise ignored).
        gumbel: (N, V) standard Gumbel noise, -log(-log(U)) with U ~ Uniform(0, 1).

    Returns:
        (tokens, confidence): (N,) int64 sampled index (lowest index on a tie) and (N,) float32
        probability of that token under softmax(logits / temperature) (under softmax(logits)
        when greedy).
    """
    scaled = logits.float() if temperature <= 0 else logits.float() / temperature
    perturbed = scaled if temperature <= 0 else scaled + gumbel.float()
    tokens = perturbed.argmax(dim=1)
    logp = scaled.log_softmax(dim=1)
    confidence = logp.gather(1, tokens[:, None]).squeeze(1).exp()
    return tokens, confidence
