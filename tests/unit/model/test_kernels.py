"""kernels/: reference semantics, and the Triton kernels against the reference.

The Triton comparison runs under TRITON_INTERPRET=1 on the CPU whenever triton imports (in a
subprocess, because the interpreter is chosen when a kernel is defined). Without triton it is
skipped with a reason, except on a machine with CUDA, where missing triton is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernels import codebook_lookup, confidence_sample
from kernels.reference import codebook_lookup_ref, confidence_sample_ref

ROOT = Path(__file__).resolve().parents[3]


def _gumbel(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).clamp(1e-20, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def test_codebook_lookup_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    z, e = torch.randn(200, 16, generator=g), torch.randn(300, 16, generator=g)
    idx, dist = codebook_lookup(z, e)
    brute = torch.cdist(z, e) ** 2
    assert torch.equal(idx, brute.argmin(1))
    assert torch.allclose(dist, brute.min(1).values, atol=1e-4)


def test_codebook_lookup_ties_take_the_lowest_index() -> None:
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    idx, _ = codebook_lookup_ref(torch.tensor([[1.0, 0.0]]), e)
    assert int(idx[0]) == 0


def test_confidence_sample_greedy_and_distribution() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]]).repeat(4000, 1)
    tokens, conf = confidence_sample(logits, 0.0, torch.zeros_like(logits))
    assert (tokens == 1).all()
    assert torch.allclose(conf, logits.softmax(1)[:, 1])
    tokens, conf = confidence_sample(logits, 1.0, _gumbel(tuple(logits.shape), 1))
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    assert torch.allclose(freq, logits[0].softmax(0), atol=0.03)
    assert torch.allclose(conf, logits.softmax(1).gather(1, tokens[:, None]).squeeze(1))


_INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch
    from kernels.reference import codebook_lookup_ref, confidence_sample_ref
    from kernels.triton_kernels import codebook_lookup_triton, confidence_sample_triton

    g = torch.Generator().manual_seed(0)
    for n, k, d in [(300, 200, 24), (17, 64, 8), (64, 512, 32)]:
        z, e = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
        (ia, da), (ib, db) = codebook_lookup_ref(z, e), codebook_lookup_triton(z, e)
        assert torch.equal(ia, ib), (n, k, d)
        assert torch.allclose(da, db, atol=1e-4)
    for v in (3, 300, 512):
        logits = torch.randn(50, v, generator=g) * 3
        u = torch.rand(50, v, generator=g).clamp(1e-20, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        for t in (0.0, 0.5, 1.0):
            (ta, ca), (tb, cb) = confidence_sample_ref(logits, t, gumbel), confidence_sample_triton(logits, t, gumbel)
            assert torch.equal(ta, tb), (v, t)
            assert torch.allclose(ca, cb, atol=1e-5)
    print("ok")
    """
)


def test_triton_kernels_match_reference_in_interpreter() -> None:
    if importlib.util.find_spec("triton") is None:
        if torch.cuda.is_available():
            pytest.fail("CUDA is present but triton is not installed: the GPU path would fall back")
        pytest.skip("triton is not installed and there is no CUDA: only the reference path exists here")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_kernels_dispatch_by_device() -> None:
    """On CPU the public functions are the torch references; on CUDA the Triton kernels agree."""
    if not torch.cuda.is_available():
        z, e = torch.randn(64, 32), torch.randn(512, 32)
        assert torch.equal(codebook_lookup(z, e)[0], codebook_lookup_ref(z, e)[0])
        logits, gumbel = torch.randn(64, 512), _gumbel((64, 512), 3)
        assert torch.equal(confidence_sample(logits, 0.7, gumbel)[0], confidence_sample_ref(logits, 0.7, gumbel)[0])
        return
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(4096, 32, device="cuda", generator=g)
    e = torch.randn(512, 32, device="cuda", generator=g)
    ia, _ = codebook_lookup_ref(z, e)
    ib, _ = codebook_lookup(z, e)
    assert (ia == ib).float().mean() > 0.999  # cuBLAS and the kernel may round near-ties apart
    logits = torch.randn(4096, 512, device="cuda", generator=g)
    gumbel = _gumbel((4096, 512), 3).cuda()
    ta, _ = confidence_sample_ref(logits, 0.7, gumbel)
    tb, _ = confidence_sample(logits, 0.7, gumbel)
    assert torch.equal(ta, tb)
