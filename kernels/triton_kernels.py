"""Triton versions of the hot paths; imported only when triton is available.

Used on CUDA tensors, and under TRITON_INTERPRET=1 (set before this module is imported) on CPU
tensors, which is how the tests check them against kernels.reference without a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

# triton ships no type information; these two ignores are the whole untyped surface.
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]

MAX_VOCAB = 8192
"""confidence_sample holds one row in registers; larger vocabularies use the reference."""


@triton.jit  # type: ignore[untyped-decorator]
def _codebook_lookup_kernel(  # type: ignore[no-untyped-def]
    z_ptr,
    e_ptr,
    esq_ptr,
    idx_ptr,
    dist_ptr,
    n_rows,
    dim,
    stride_z,
    stride_e,
    N_CODES: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    z = tl.load(
        z_ptr + rn[:, None] * stride_z + rd[None, :],
        mask=(rn[:, None] < n_rows) & (rd[None, :] < dim),
        other=0.0,
    )
    zsq = tl.sum(z * z, axis=1)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    # N_CODES is a compile-time constant (one codebook per model, so one compilation); as a
    # runtime scalar the loop bound also breaks Triton's interpreter under numpy 2.4.
    for k0 in range(0, N_CODES, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        e = tl.load(
            e_ptr + rk[:, None] * stride_e + rd[None, :],
            mask=(rk[:, None] < N_CODES) & (rd[None, :] < dim),
            other=0.0,
        )
        esq = tl.load(esq_ptr + rk, mask=rk < N_CODES, other=float("inf"))
        dots = tl.dot(z, tl.trans(e), input_precision="ieee")
        d = esq[None, :] - 2.0 * dots
        blk_min = tl.min(d, axis=1)
        blk_idx = tl.argmin(d, axis=1).to(tl.int32) + k0
        # Strictly less keeps the earlier block on a tie: the lowest index wins, as in torch.
        better = blk_min < best
        best = tl.where(better, blk_min, best)
        best_idx = tl.where(better, blk_idx, best_idx)
    tl.store(idx_ptr + rn, best_idx.to(tl.int64), mask=rn < n_rows)
    tl.store(dist_ptr + rn, tl.maximum(best + zsq, 0.0), mask=rn < n_rows)


def codebook_lookup_triton(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of kernels.reference.codebook_lookup_ref (same contract)."""
    z32 = z.float().contiguous()
    e32 = codebook.float().contiguous()
    n, d = z32.shape
    k = e32.shape[0]
    esq = (e32 * e32).sum(dim=1).contiguous()
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    block_d = max(16, triton.next_power_of_2(d))
    block_n, block_k = 32, 64
    grid: Any = (triton.cdiv(n, block_n),)
    _codebook_lookup_kernel[grid](
        z32,
        e32,
        esq,
        idx,
        dist,
        n,
        d,
        z32.stride(0),
        e32.stride(0),
        N_CODES=k,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
    )
    return idx, dist


@triton.jit  # type: ignore[untyped-decorator]
def _confidence_sample_kernel(  # type: ignore[no-untyped-def]
    logits_ptr,
    gumbel_ptr,
    tok_ptr,
    conf_ptr,
    vocab,
    stride_l,
    stride_g,
    inv_temperature,
    GREEDY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    rv = tl.arange(0, BLOCK_V)
    valid = rv < vocab
    x = tl.load(logits_ptr + row * stride_l + rv, mask=valid, other=float("-inf")).to(tl.float32)
    if GREEDY:
        scaled = x
        perturbed = x
    else:
        scaled = x * inv_temperature
        g = tl.load(gumbel_ptr + row * stride_g + rv, mask=valid, other=0.0).to(tl.float32)
        perturbed = scaled + g
    token = tl.argmax(perturbed, axis=0)
    m = tl.max(scaled, axis=0)
    lse = m + tl.log(tl.sum(tl.exp(scaled - m), axis=0))
    chosen = tl.sum(tl.where(rv == token, scaled, 0.0), axis=0)
    tl.store(tok_ptr + row, token.to(tl.int64))
    tl.store(conf_ptr + row, tl.exp(chosen - lse))


def confidence_sample_triton(
    logits: torch.Tensor, temperature: float, gumbel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of kernels.reference.confidence_sample_ref (same contract)."""
    n, v = logits.shape
    if v > MAX_VOCAB:
        raise ValueError(f"vocabulary {v} larger than {MAX_VOCAB}")
    lg = logits.contiguous()
    gb = gumbel.contiguous()
    tokens = torch.empty(n, dtype=torch.int64, device=logits.device)
    conf = torch.empty(n, dtype=torch.float32, device=logits.device)
    greedy = temperature <= 0
    grid: Any = (n,)
    _confidence_sample_kernel[grid](
        lg,
        gb,
        tokens,
        conf,
        v,
        lg.stride(0),
        gb.stride(0),
        1.0 if greedy else 1.0 / temperature,
        GREEDY=greedy,
        BLOCK_V=triton.next_power_of_2(v),
    )
    return tokens, conf
