"""The built-in ImageModel: VQ tokenizer + MaskGIT generator, and its on-disk format.

On disk (a directory, by default libs/model/weights/):
    model.json      format tag, name, configs, caption vocabulary, sampling settings, training
                    metadata (how the weights were made)
    vq.pt           VQ tokenizer state dict (float16)
    generator.pt    MaskGIT state dict (float16)
Loaded with torch.load(weights_only=True): no code from a weights file is ever executed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch

from kernels import confidence_sample
from libs.model.interface import (
    DEFAULT_WEIGHTS_DIR,
    GRID_SIZE,
    GridRenderStart,
    RenderState,
    next_masked_count,
    pass_seed,
)
from libs.model.maskgit import CaptionTokenizer, MaskGIT, MaskGITConfig
from libs.model.scenes import INTERNAL_SIZE, downsample, upsample
from libs.model.vq import VQConfig, VQTokenizer, images_to_tensor, tensor_to_images

FORMAT: Final = "darkroom-maskgit/1"

#: Rows in every generator and VQ-decoder call on CUDA, and in every VQ-decoder call on a CPU.
#: BLAS and convolution libraries choose their kernels by a tensor's shape, and another kernel
#: sums in another order: measured on an H100, one render's pixels differed by up to 3 levels
#: alone and among 63 companions, and were identical when both calls had one shape; on these
#: CPUs a decoder call of 1 row and one of 3 differed by 1 level. Calls of one shape keep a
#: job's bytes its own whatever its batch. On a GPU a call of 64 rows costs about what one of
#: 1 does; on a CPU rows cost their full price, so there the decoder draws one image per call
#: (about what batching it saved) and the generator takes each batch as it comes: its logits
#: may then differ in their last bits with the batch's size, which changes a token only on
#: an exact tie of sampled scores (none seen).
CUDA_CALL_ROWS: Final = 64
CPU_DECODER_CALL_ROWS: Final = 1


@dataclass(frozen=True)
class SamplingConfig:
    """How passes sample (stored in model.json; an operator may tune it without retraining).

    Attributes:
        guidance_scale: Classifier-free guidance; 1.0 disables it (and halves the compute).
        temperature: Softmax temperature of token sampling; <= 0 is greedy.
        choice_temperature: Scale of the Gumbel noise added to log-confidence when choosing
            which cells to commit; it anneals linearly to 0 at the last pass.
    """

    guidance_scale: float = 3.0
    temperature: float = 0.5
    choice_temperature: float = 2.0


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast is
    faster than float32 rather than slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` ("auto", "float32", "bfloat16") on `device`."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_supports_bf16() else None


def in_calls_of(rows: int | None, network: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """network(*inputs) for inputs of equal rows, in calls of exactly `rows` rows when given (the
    last call padded with copies of its first row, whose outputs are dropped), else in one."""
    if rows is None:
        return network(*inputs)
    outputs = []
    for start in range(0, inputs[0].shape[0], rows):
        chunk = [t[start : start + rows] for t in inputs]
        real = chunk[0].shape[0]
        if real < rows:
            chunk = [torch.cat([c, c[:1].expand(rows - real, *c.shape[1:])]) for c in chunk]
        outputs.append(network(*chunk)[:real])
    return torch.cat(outputs)


class MaskGITImageModel(GridRenderStart):
    """VQ + MaskGIT behind the ImageModel interface (see libs.model.interface)."""

    grid_size: int = GRID_SIZE
    thread_safe_calls: bool = True
    """A pass and a drawing read the weights and write nothing shared, so slices of one batch
    may run on several threads at once (libs.model.split)."""

    def __init__(
        self,
        vq: VQTokenizer,
        generator: MaskGIT,
        tokenizer: CaptionTokenizer,
        sampling: SamplingConfig | None = None,
        name: str = "darkroom-mini",
        device: str = "cpu",
        precision: str = "auto",
        metadata: dict[str, Any] | None = None,
        generator_rows: int | Literal["auto"] | None = "auto",
        decoder_rows: int | Literal["auto"] | None = "auto",
    ) -> None:
        """Wraps trained (or, for tests, untrained) networks.

        Args:
            vq: The tokenizer; its codebook size must match the generator's.
            generator: The MaskGIT transformer.
            tokenizer: The caption tokenizer the generator was trained with.
            sampling: Sampling settings (defaults: SamplingConfig()).
            name: Model name reported in events.
            device: Torch device string.
            precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16), "float32"
                or "bfloat16".
            metadata: Free-form facts about the weights (kept from model.json).
            generator_rows, decoder_rows: Run the generator, the VQ decoder, in calls of
                exactly this many rows (the last call padded), so that a render's result
                cannot depend on its batch's size; None runs each batch in one call as it
                comes; "auto": CUDA_CALL_ROWS on CUDA, else None for the generator and
                CPU_DECODER_CALL_ROWS for the decoder.
        """
        if vq.config.codebook_size != generator.config.codebook_size:
            raise ValueError("VQ and generator disagree on the codebook size")
        if vq.config.grid_size != self.grid_size or generator.config.grid_size != self.grid_size:
            raise ValueError(f"grid size must be {self.grid_size}")
        self.device = torch.device(device)
        self.vq = vq.to(self.device).eval()
        self.generator = generator.to(self.device).eval()
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.name = name
        self.codebook_size = vq.config.codebook_size
        self.mask_token = self.codebook_size
        self.precision = precision
        self.metadata = metadata or {}
        self._amp = autocast_dtype(self.device, precision)
        on_cuda = self.device.type == "cuda"
        if generator_rows == "auto":
            generator_rows = CUDA_CALL_ROWS if on_cuda else None
        if decoder_rows == "auto":
            decoder_rows = CUDA_CALL_ROWS if on_cuda else CPU_DECODER_CALL_ROWS
        for rows in (generator_rows, decoder_rows):
            if rows is not None and rows < 1:
                raise ValueError(f"a call's rows must be at least 1, got {rows}")
        self.generator_rows: int | None = generator_rows
        self.decoder_rows: int | None = decoder_rows

    # -- ImageModel -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, states: list[RenderState]) -> list[RenderState]:
        """See ImageModel.step.

        One batched forward (two with guidance: conditional and unconditional rows in one
        batch), then for the whole batch at once: sample every cell with noise drawn from each
        render's pass_seed(seed, pass_index), and commit each render's most confident masked
        cells down to its own schedule's count. Nothing a render gets depends on its batch
        companions, and nothing loops over the batch on the device's behalf but the seeding.
        """
        if not states:
            return []
        for s in states:
            if s.done:
                raise ValueError("step() called on a finished render")
            if s.mask_token != self.mask_token or s.tokens.shape != (self.grid_size,) * 2:
                raise ValueError("state does not belong to this model")
        b, n, k = len(states), self.grid_size * self.grid_size, self.codebook_size
        tokens = torch.from_numpy(np.stack([s.tokens.reshape(-1) for s in states])).to(self.device)
        logits = self.guided_logits(tokens, [s.prompt for s in states])
        gumbel, choice = self._pass_noise(states, n, k)
        sampled, conf = confidence_sample(logits.reshape(b * n, k), self.sampling.temperature, gumbel.view(b * n, k))
        sampled, conf = sampled.view(b, n), conf.view(b, n)

        masked = tokens == self.mask_token
        counts = masked.sum(dim=1).tolist()
        commits = [c - next_masked_count(c, s.pass_index, s.total_passes) for c, s in zip(counts, states, strict=True)]
        anneal = torch.tensor(
            [self.sampling.choice_temperature * (1.0 - (s.pass_index + 1) / s.total_passes) for s in states],
            dtype=torch.float32,
            device=self.device,
        )
        score = torch.log(conf.clamp_min(1e-30)) + anneal[:, None] * choice
        score = torch.where(masked, score, torch.tensor(float("-inf"), device=self.device))
        # Each row's cells by falling score (stable: the lowest index first on a tie); a cell
        # is committed when its rank is below its render's commit count.
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=self.device).expand(b, n))
        commit = rank < torch.tensor(commits, device=self.device)[:, None]
        grids = torch.where(commit, sampled, tokens).cpu().numpy()
        return [
            s.with_tokens(grid.reshape(self.grid_size, self.grid_size)) for s, grid in zip(states, grids, strict=True)
        ]

    def _pass_noise(self, states: list[RenderState], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each render's Gumbel noise for this pass: (b, n, k) for sampling and (b, n) for
        choosing cells, drawn on the model's device from a generator seeded with the render's
        pass_seed, so a render's noise is the same alone or in any batch (on one kind of
        device: CPU and CUDA generators draw different streams from the same seed)."""
        sample = torch.empty(len(states), n, k, device=self.device)
        choice = torch.empty(len(states), n, device=self.device)
        for i, s in enumerate(states):
            gen = torch.Generator(device=self.device).manual_seed(pass_seed(s.seed, s.pass_index))
            torch.rand(n, k, generator=gen, device=self.device, out=sample[i])
            torch.rand(n, generator=gen, device=self.device, out=choice[i])
        return _gumbel(sample), _gumbel(choice)

    @torch.no_grad()
    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        """See ImageModel.preview."""
        return self.preview_batch([tokens], size)[0]

    @torch.no_grad()
    def preview_batch(self, grids: list[np.ndarray], size: int) -> list[np.ndarray]:
        """Renders several (possibly partial) grids in one decoder batch."""
        return [pictures[0] for pictures in self.preview_sizes(grids, (size,))]

    @torch.no_grad()
    def preview_sizes(self, grids: list[np.ndarray], sizes: Sequence[int]) -> list[list[np.ndarray]]:
        """See ImageModel: one decoder batch, each picture resized to every size."""
        t = torch.from_numpy(
            np.stack([np.asarray(g, np.int64).reshape(self.grid_size, self.grid_size) for g in grids])
        ).to(self.device)
        latents = self.vq.fill_latent(t, self.mask_token)
        with self._autocast():
            images = in_calls_of(self.decoder_rows, self.vq.decode_latent, latents)
        return [[upsample(img, size) for size in sizes] for img in tensor_to_images(images.float())]

    @torch.no_grad()
    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """See ImageModel.encode_image (resized to 64x64 with an area filter first)."""
        img = downsample(np.asarray(rgb, dtype=np.uint8)[..., :3], INTERNAL_SIZE)
        x = images_to_tensor(img[None], self.device)
        with self._autocast():
            latents = self.vq.encode_latent(x)
        idx, _ = self.vq.quantize(latents.float())
        return idx[0].cpu().numpy().astype(np.int64)

    # -- helpers --------------------------------------------------------------------------------

    def guided_logits(self, tokens: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, N) grids and their prompts -> (B, N, K) float32 logits after guidance."""
        g = self.sampling.guidance_scale
        texts = prompts + prompts if g != 1.0 else prompts
        drop = [False] * len(prompts) + [True] * len(prompts) if g != 1.0 else None
        text = torch.from_numpy(self.tokenizer.batch(texts, drop)).to(self.device)
        grid = torch.cat([tokens, tokens]) if g != 1.0 else tokens
        with self._autocast():
            logits = in_calls_of(self.generator_rows, self.generator, grid, text).float()
        if g == 1.0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + g * (cond - uncond)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self._amp or torch.bfloat16, enabled=self._amp is not None)

    @torch.no_grad()
    def render_batches(
        self, prompts: list[str], seeds: list[int], total_passes: int, batch: int = 32, every_pass: bool = False
    ) -> list[np.ndarray]:
        """Whole renders of many prompts, `batch` at a time (for training and evaluation).

        Returns:
            Per prompt, a (k, 64, 64, 3) uint8 array: the preview after every pass (k =
            total_passes) when `every_pass`, else the final image alone (k = 1).
        """
        out: list[np.ndarray] = []
        for start in range(0, len(prompts), batch):
            states = [
                self.start(p, s, total_passes)
                for p, s in zip(prompts[start : start + batch], seeds[start : start + batch], strict=True)
            ]
            trail: list[list[np.ndarray]] = [[] for _ in states]
            while not states[0].done:
                states = self.step(states)
                if every_pass or states[0].done:
                    for j, img in enumerate(self.preview_batch([s.tokens for s in states], INTERNAL_SIZE)):
                        trail[j].append(img)
            out += [np.stack(t) for t in trail]
        return out

    def render(self, prompt: str, seed: int, total_passes: int = 8, size: int = INTERNAL_SIZE) -> np.ndarray:
        """Convenience: a whole render, returned as an image."""
        state = self.start(prompt, seed, total_passes)
        while not state.done:
            state = self.step([state])[0]
        return self.preview(state.tokens, size)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes model.json, vq.pt and generator.pt into `path` (float16 weights)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(_half_state(self.vq), out / "vq.pt")
        torch.save(_int8_state(self.generator), out / "generator.pt")
        meta = {
            "format": FORMAT,
            "name": self.name,
            "vq": self.vq.config.to_json(),
            "generator": self.generator.config.to_json(),
            "vocabulary": self.tokenizer.vocabulary,
            "max_text_len": self.tokenizer.max_len,
            "sampling": asdict(self.sampling),
            "metadata": self.metadata,
        }
        (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "auto") -> MaskGITImageModel:
        """Loads a model saved by `save`.

        Raises:
            FileNotFoundError: model.json or a weight file is missing.
            ValueError: the directory holds another format.
        """
        root = Path(path)
        meta = json.loads((root / "model.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{root} holds format {meta.get('format')!r}, expected {FORMAT!r}")
        vq = VQTokenizer(VQConfig.from_json(meta["vq"]))
        generator = MaskGIT(MaskGITConfig.from_json(meta["generator"]))
        _load_state(vq, root / "vq.pt")
        _load_state(generator, root / "generator.pt")
        tokenizer = CaptionTokenizer(meta["vocabulary"], meta["max_text_len"])
        return cls(
            vq,
            generator,
            tokenizer,
            SamplingConfig(**meta["sampling"]),
            name=meta["name"],
            device=device,
            precision=precision,
            metadata=meta.get("metadata", {}),
        )


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    # Clamp away from 0 and 1 so the noise is finite.
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


def _half_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }


_QUANT = "::int8"
_SCALE = "::scale"


def _int8_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Like `_half_state`, but large matrices as int8 with a float16 scale per row.

    The generator is most of the shipped bytes; per-row int8 halves its file (the repo keeps
    weights small) and changes each weight by at most half a quantization step.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in _half_state(module).items():
        if v.is_floating_point() and v.ndim >= 2 and v.numel() >= 4096:
            rows = v.float().reshape(v.shape[0], -1)
            scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
            out[k + _QUANT] = torch.round(rows / scale).to(torch.int8).reshape(v.shape)
            out[k + _SCALE] = scale.half()
        else:
            out[k] = v
    return out


def _load_state(module: torch.nn.Module, path: Path) -> None:
    """Loads a `_half_state` or `_int8_state` file into `module` (as float32)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(_SCALE):
            continue
        if k.endswith(_QUANT):
            name = k[: -len(_QUANT)]
            scale = state[name + _SCALE].float()
            weights[name] = (v.float().reshape(v.shape[0], -1) * scale).reshape(v.shape)
        else:
            weights[k] = v.float() if v.is_floating_point() else v
    module.load_state_dict(weights)


def describe(model: MaskGITImageModel) -> dict[str, Any]:
    """Parameter counts and settings, for logs and the model card."""
    return {
        "name": model.name,
        "vq_parameters": sum(p.numel() for p in model.vq.parameters()),
        "generator_parameters": sum(p.numel() for p in model.generator.parameters()),
        "codebook_size": model.codebook_size,
        "grid_size": model.grid_size,
        "sampling": asdict(model.sampling),
        "log2_codebook_bits_per_image": model.grid_size**2 * math.log2(model.codebook_size),
    }


def load(argument: str | None, device: str) -> MaskGITImageModel:
    """The registry's loader of the "builtin" kind (libs.model.registry).

    Args:
        argument: A folder written by `MaskGITImageModel.save`; None for the shipped weights.
        device: Torch device.
    """
    return MaskGITImageModel.load(argument or DEFAULT_WEIGHTS_DIR, device=device)
