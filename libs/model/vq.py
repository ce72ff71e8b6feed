"""VQ tokenizer: a convolutional encoder (64x64 RGB -> 16x16 latents), a codebook, a decoder.

Design choices, and why:
- Two stride-2 stages (4x4-pixel tokens) with most channels at 16x16: the compute sits where the
  tokens are, which is what makes training on a 2-core CPU feasible.
- The codebook is learned by exponential moving averages of the encoder outputs assigned to each
  entry (k-means-like), with dead entries restarted from recent encoder outputs. This keeps
  usage high without a codebook loss to tune; only a commitment loss pulls the encoder.
- A per-cell prior latent (the mean quantized latent at each grid position over the training
  set) is stored with the weights. Previews fill masked cells with a blend of it and nearby
  committed cells, so a partially committed grid decodes into a plausible, blurry image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernels import codebook_lookup


@dataclass(frozen=True)
class VQConfig:
    """Hyperparameters of the VQ tokenizer (stored in model.json)."""

    channels: tuple[int, int, int] = (32, 64, 128)
    res_blocks: int = 2
    codebook_size: int = 512
    code_dim: int = 32
    grid_size: int = 16
    image_size: int = 64
    commitment: float = 0.25
    ema_decay: float = 0.99

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VQConfig:
        """Inverse of to_json."""
        values = dict(data)
        values["channels"] = tuple(values["channels"])
        return cls(**values)


class ResBlock(nn.Module):
    """Pre-activation residual block: GroupNorm, SiLU, 3x3 conv, twice."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = 8 if channels % 8 == 0 else 1
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        out: torch.Tensor = x + self.conv2(F.silu(self.norm2(h)))
        return out


class VQTokenizer(nn.Module):
    """Encoder, codebook and decoder. Images are float tensors in [-1, 1], (B, 3, 64, 64)."""

    codebook: torch.Tensor
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    usage: torch.Tensor
    prior_latent: torch.Tensor

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            ResBlock(c2),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),
            *[ResBlock(c3) for _ in range(config.res_blocks)],
            nn.GroupNorm(8, c3),
            nn.SiLU(),
            nn.Conv2d(c3, config.code_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, c3, 3, padding=1),
            *[ResBlock(c3) for _ in range(config.res_blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c3, c2, 3, padding=1),
            ResBlock(c2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c2, c1, 3, padding=1),
            nn.GroupNorm(8, c1),
            nn.SiLU(),
            nn.Conv2d(c1, 3, 3, padding=1),
        )
        k, d, g = config.codebook_size, config.code_dim, config.grid_size
        self.register_buffer("codebook", torch.randn(k, d) * 0.1)
        # EMA statistics exist only for training; they are not shipped with the weights.
        self.register_buffer("ema_count", torch.ones(k), persistent=False)
        self.register_buffer("ema_sum", self.codebook.clone(), persistent=False)
        # Assignments per step, averaged over ~10 steps: a fast signal for dead-code restarts
        # (the codebook EMA above averages over ~100 steps, too slow for short runs).
        self.register_buffer("usage", torch.zeros(k), persistent=False)
        self.register_buffer("prior_latent", torch.zeros(d, g, g))

    # -- encoding -------------------------------------------------------------------------------

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) images -> (B, D, 16, 16) continuous latents."""
        out: torch.Tensor = self.encoder(images)
        return out

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-entry quantization.

        Args:
            latents: (B, D, G, G) continuous latents (any float dtype).

        Returns:
            (indices (B, G, G) int64, quantized latents (B, D, G, G) float32).
        """
        b, d, g, _ = latents.shape
        flat = latents.float().permute(0, 2, 3, 1).reshape(-1, d)
        idx, _ = codebook_lookup(flat, self.codebook)
        return idx.view(b, g, g), self.embed(idx.view(b, g, g))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) images in [-1, 1] -> (B, 16, 16) token grids."""
        return self.quantize(self.encode_latent(images))[0]

    # -- decoding -------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G, G) valid token ids -> (B, D, G, G) codebook latents."""
        return self.codebook[tokens].permute(0, 3, 1, 2).contiguous()

    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, D, 16, 16) latents -> (B, 3, 64, 64) images (not clamped)."""
        out: torch.Tensor = self.decoder(latents)
        return out

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 16, 16) complete token grids -> (B, 3, 64, 64) images in [-1, 1]."""
        return self.decode_latent(self.embed(tokens)).clamp(-1.0, 1.0)

    def fill_latent(self, tokens: torch.Tensor, mask_token: int, prior_weight: float = 0.3) -> torch.Tensor:
        """Latents for a partially committed grid, for previews.

        A masked cell gets a Gaussian-weighted average of the committed cells around it (sigma
        1.2 cells) blended with the per-cell prior, so committed detail bleeds softly into its
        neighbourhood and far-away cells show the prior (an average scene).

        Args:
            tokens: (B, G, G) int64 grid; `mask_token` marks uncommitted cells.
            mask_token: Value of a masked cell.
            prior_weight: Weight of the prior against the smoothed committed neighbours.

        Returns:
            (B, D, G, G) float32 latents; committed cells keep their codebook entry exactly.
        """
        committed = tokens != mask_token
        emb = self.embed(tokens.clamp(max=self.config.codebook_size - 1))
        w = committed.float()[:, None]
        kernel = _gaussian_kernel(1.2, 2, emb.device)
        d = emb.shape[1]
        num = F.conv2d(emb * w, kernel.expand(d, 1, -1, -1), padding=2, groups=d)
        den = F.conv2d(w, kernel, padding=2)
        prior = self.prior_latent[None].to(emb.dtype)
        fill = (num + prior_weight * prior) / (den + prior_weight)
        return torch.where(committed[:, None], emb, fill)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass with a straight-through estimator.

        Returns:
            (reconstruction, token ids, commitment loss, pre-quantization latents (float32)).
        """
        z = self.encode_latent(images).float()
        idx, zq = self.quantize(z)
        commit = F.mse_loss(z, zq.detach())
        zq_st = z + (zq - z).detach()
        return self.decode_latent(zq_st), idx, commit * self.config.commitment, z

    # -- codebook learning ----------------------------------------------------------------------

    @torch.no_grad()
    def ema_update(self, latents: torch.Tensor, idx: torch.Tensor) -> None:
        """Moves each used codebook entry toward the mean of the latents assigned to it."""
        k, d = self.codebook.shape
        flat = latents.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
        onehot = F.one_hot(idx.reshape(-1), k).float()
        decay = self.config.ema_decay
        counts = onehot.sum(0)
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.usage.mul_(0.9).add_(counts, alpha=0.1)
        self.ema_sum.mul_(decay).add_(onehot.t() @ flat, alpha=1 - decay)
        n = self.ema_count.sum()
        # Laplace smoothing keeps rarely used entries from dividing by ~0.
        count = (self.ema_count + 1e-5) / (n + k * 1e-5) * n
        self.codebook.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor, generator: torch.Generator, threshold: float = 0.5) -> int:
        """Re-seeds entries used less than `threshold` times per step (recent average) with random
        recent latents.

        Returns:
            How many entries were restarted.
        """
        d = self.codebook.shape[1]
        dead = (self.usage < threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        flat = latents.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
        noise = torch.randn(dead.numel(), d, generator=generator) * 0.01
        fresh = flat[pick.to(flat.device)] + noise.to(flat.device)
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh
        self.ema_count[dead] = 1.0
        self.usage[dead] = 2.0 * threshold  # a grace period before it can be restarted again
        return int(dead.numel())

    @torch.no_grad()
    def init_codebook(self, latents: torch.Tensor, generator: torch.Generator) -> None:
        """Initialises the codebook from random encoder outputs (better than random vectors)."""
        k, d = self.codebook.shape
        flat = latents.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
        pick = torch.randint(0, flat.shape[0], (k,), generator=generator).to(flat.device)
        self.codebook.copy_(flat[pick])
        self.ema_sum.copy_(flat[pick])
        self.ema_count.fill_(1.0)
        self.usage.fill_(2.0)


def _gaussian_kernel(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k2 = g[:, None] * g[None, :]
    return (k2 / k2.sum())[None, None]


def images_to_tensor(images: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) float32 tensor in [-1, 1]."""
    # A copy: the caller's array may be read-only (RenderState grids, PIL buffers).
    t = torch.tensor(np.asarray(images), device=device)
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(t: torch.Tensor) -> Any:
    """(B, 3, H, W) tensor in [-1, 1] -> (B, H, W, 3) uint8 numpy array."""
    x = ((t.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters())
