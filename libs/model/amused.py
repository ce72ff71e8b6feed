"""aMUSEd (through diffusers) behind darkroom's ImageModel interface.

aMUSEd is a MaskGIT-style transformer (diffusers' `UVit2DModel`) over a VQ token grid
(`VQModel`), conditioned on a CLIP text encoder and sampled by `AmusedScheduler`: the design
of darkroom's own model at a larger scale. `load_model("amused:/path/to/folder")` loads a
folder laid out as diffusers' `save_pretrained` writes an aMUSEd pipeline (`vqvae/`,
`text_encoder/`, `tokenizer/`, `transformer/`, `scheduler/`, `model_index.json`), the layout
of the amused-256 and amused-512 repositories. Nothing is downloaded: an operator copies the
folder onto the machine, and every loader runs with `local_files_only`.

Darkroom runs its own pass loop instead of diffusers' pipeline, so that every pass is a
checkpoint (a token grid) the decoder can publish, batch with other jobs and resume from:

- a pass is one transformer call for the whole batch (with classifier-free guidance, the
  unconditional half shares the call), then the scheduler's `step` for each render, at that
  render's own pass of its own schedule;
- the randomness of pass k comes only from `pass_seed(seed, k)` and how many cells stay
  masked comes only from `next_masked_count` (the scheduler is steered to it through its
  `starting_mask_ratio`), which is what makes a render resumable from a checkpoint and the
  same for a seed (see libs.model.interface);
- a preview of a grid is decoded from the full grid that grid's pass predicted (the
  scheduler's `pred_original_sample`), so it shows the whole picture from the first pass.

Grid size, codebook and image size come from the folder's configs. Darkroom's mask token is
the codebook size, as for every darkroom model; the transformer's own mask id (the
scheduler's `mask_token_id`) is swapped in and out at the edge. On CUDA the text encoder and
transformer run in float16 (as aMUSEd ships its fp16 variant) and the VQ model stays in
float32 (its decoder is not safe in half precision).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F

from libs.model.interface import GridRenderStart, RenderState, next_masked_count, pass_seed

PREFIX: Final = "amused:"
"""`amused:/path/to/folder` names an aMUSEd model (the registry's "amused" kind and its argument)."""
PIPELINE_CLASS: Final = "AmusedPipeline"
SUBFOLDERS: Final = ("vqvae", "text_encoder", "tokenizer", "transformer", "scheduler")
PROMPT_CACHE: Final = 512
"""Prompts whose text embeddings stay cached (a render asks for its prompt on every pass)."""
PREDICTION_CACHE: Final = 1024
"""Grids whose pass prediction stays cached for their previews."""


@dataclass(frozen=True)
class AmusedSampling:
    """How passes sample; the defaults are diffusers' AmusedPipeline defaults.

    Attributes:
        guidance_scale: Classifier-free guidance; 1.0 turns it off (and halves the compute).
        temperature: Gumbel temperature of the choice of cells to commit, annealed linearly
            from the first to the second value over a render's passes.
        aesthetic_score: aMUSEd's micro-conditioning on the LAION aesthetic score.
    """

    guidance_scale: float = 10.0
    temperature: tuple[float, float] = (2.0, 0.0)
    aesthetic_score: float = 6.0


def folder_of(name: str) -> Path:
    """The folder of an `amused:` model name."""
    return Path(name.removeprefix(PREFIX)).expanduser()


def check_folder(folder: Path) -> None:
    """Refuses, with a plain reason, a folder that is not a saved aMUSEd pipeline.

    Raises:
        FileNotFoundError: the folder or one of its parts is missing.
        ValueError: model_index.json names another pipeline.
    """
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json (not a saved aMUSEd pipeline)")
    declared = json.loads(index.read_text()).get("_class_name")
    if declared != PIPELINE_CLASS:
        raise ValueError(f"{folder}: model_index.json declares {declared!r}, not {PIPELINE_CLASS!r}")
    missing = [sub for sub in SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}")


def _half_dtype(device: torch.device, precision: str) -> torch.dtype:
    if precision == "float32":
        return torch.float32
    if precision == "float16":
        return torch.float16
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, float32, float16 or bfloat16, not {precision!r}")
    return torch.float16 if device.type == "cuda" else torch.float32


class AmusedImageModel(GridRenderStart):
    """An aMUSEd pipeline folder as a darkroom ImageModel (see the module's docstring)."""

    def __init__(
        self,
        folder: Path,
        device: str = "cpu",
        precision: str = "auto",
        sampling: AmusedSampling | None = None,
    ) -> None:
        """Loads the folder's parts onto `device`.

        Args:
            folder: A saved aMUSEd pipeline (see `check_folder`).
            device: Torch device ("cpu", "cuda", "cuda:1"...).
            precision: "auto" (float16 on CUDA, float32 on CPU), "float32", "float16" or
                "bfloat16": the text encoder's and transformer's dtype; the VQ model stays float32.
            sampling: Guidance and temperatures (default: aMUSEd's own).
        """
        # Offline for good: the loaders must never reach for the Hugging Face Hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # Typed as Any: neither library ships type information for these loaders.
        diffusers: Any = importlib.import_module("diffusers")
        transformers: Any = importlib.import_module("transformers")

        check_folder(folder)
        self.device = torch.device(device)
        self.dtype = _half_dtype(self.device, precision)
        self.sampling = sampling or AmusedSampling()
        transformers.utils.logging.disable_progress_bar()
        local: dict[str, Any] = {"local_files_only": True, "low_cpu_mem_usage": False}
        self.vqvae = diffusers.VQModel.from_pretrained(folder / "vqvae", torch_dtype=torch.float32, **local)
        self.vqvae.to(self.device).eval()
        self.transformer = diffusers.UVit2DModel.from_pretrained(
            folder / "transformer", torch_dtype=self.dtype, **local
        )
        self.transformer.to(self.device).eval()
        self.text_encoder = transformers.CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder", dtype=self.dtype, local_files_only=True
        )
        self.text_encoder.to(self.device).eval()
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        self.scheduler = diffusers.AmusedScheduler.from_pretrained(folder / "scheduler", local_files_only=True)

        self.name = f"{PREFIX}{folder}"
        self.grid_size = int(self.transformer.config.sample_size)
        self.codebook_size = int(self.transformer.config.codebook_size)
        self.mask_token = self.codebook_size
        self.model_mask_token = int(self.scheduler.config.mask_token_id)
        if self.model_mask_token < self.codebook_size:
            raise ValueError(f"{folder}: the scheduler's mask id {self.model_mask_token} is a codebook token")
        self.vae_scale_factor = 2 ** (len(self.vqvae.config.block_out_channels) - 1)
        self.image_size = self.grid_size * self.vae_scale_factor
        self._prompts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._predictions: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @classmethod
    def load(cls, name: str, device: str = "cpu", precision: str = "auto") -> AmusedImageModel:
        """The model an `amused:/path` name points at."""
        return cls(folder_of(name), device=device, precision=precision)

    # --- passes ---------------------------------------------------------------------------

    def step(self, states: list[RenderState]) -> list[RenderState]:
        """See ImageModel.step: one transformer call for the batch, then each render's step."""
        if not states:
            return []
        if any(state.done for state in states):
            raise ValueError("step() called on a finished render")
        with torch.inference_mode():
            logits = self._logits(states)
            return [self._commit(state, logits[i : i + 1]) for i, state in enumerate(states)]

    def _logits(self, states: list[RenderState]) -> torch.Tensor:
        tokens = torch.from_numpy(np.stack([state.tokens for state in states])).to(self.device)  # a copy
        model_input = torch.where(tokens == self.mask_token, self.model_mask_token, tokens)
        pooled, hidden = self._embed([state.prompt for state in states])
        guided = self.sampling.guidance_scale > 1.0
        if guided:
            empty_pooled, empty_hidden = self._embed([""] * len(states))
            model_input = torch.cat([model_input, model_input])
            pooled = torch.cat([empty_pooled, pooled])
            hidden = torch.cat([empty_hidden, hidden])
        micro_conds = torch.tensor(
            [self.image_size, self.image_size, 0, 0, self.sampling.aesthetic_score],
            device=self.device,
            dtype=hidden.dtype,
        ).expand(model_input.shape[0], -1)
        logits: torch.Tensor = self.transformer(
            model_input, micro_conds=micro_conds, pooled_text_emb=pooled, encoder_hidden_states=hidden
        ).float()
        if guided:
            unconditional, conditional = logits.chunk(2)
            logits = unconditional + self.sampling.guidance_scale * (conditional - unconditional)
        return logits

    def _commit(self, state: RenderState, logits: torch.Tensor) -> RenderState:
        """The scheduler's step for one render, steered to darkroom's schedule."""
        total, index = state.total_passes, state.pass_index
        masked = state.masked_count
        keep = next_masked_count(masked, index, total)
        self.scheduler.set_timesteps(total, temperature=self.sampling.temperature, device=self.device)
        timestep = int(self.scheduler.timesteps[index])
        cells = self.grid_size * self.grid_size
        remaining = math.cos(math.pi / 2 * (index + 1) / total) * cells
        # The scheduler keeps floor(cells * cos(...) * starting_mask_ratio) masked: aim at `keep`.
        # It always keeps one while any is left, so a pass that commits everything (keep == 0)
        # takes the prediction as timestep 0 does.
        ratio = (keep + 0.5) / remaining if keep and remaining > 0 else 1.0
        sample = torch.from_numpy(state.tokens.copy()).to(self.device).unsqueeze(0)
        sample = torch.where(sample == self.mask_token, self.model_mask_token, sample)
        generator = torch.Generator(device=self.device).manual_seed(pass_seed(state.seed, index))
        out = self.scheduler.step(
            logits, timestep if keep else 0, sample, starting_mask_ratio=ratio, generator=generator
        )
        after = out.prev_sample[0]
        after = torch.where(after == self.model_mask_token, self.mask_token, after).cpu().numpy()
        predicted = out.pred_original_sample[0].cpu().numpy().astype(np.int64)
        if int((after == self.mask_token).sum()) != keep:
            raise RuntimeError(f"pass {index} of {total} left {(after == self.mask_token).sum()} cells, not {keep}")
        self._remember(after, predicted)
        return state.with_tokens(after)

    def _embed(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled text embeddings and the penultimate hidden states, as AmusedPipeline takes them."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
        if todo:
            ids = self.tokenizer(
                todo,
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
            ).input_ids.to(self.device)
            outputs = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
            for i, prompt in enumerate(todo):
                self._prompts[prompt] = (outputs.text_embeds[i], outputs.hidden_states[-2][i])
        for prompt in prompts:
            self._prompts.move_to_end(prompt)
        while len(self._prompts) > PROMPT_CACHE:
            self._prompts.popitem(last=False)
        pooled = torch.stack([self._prompts[p][0] for p in prompts])
        hidden = torch.stack([self._prompts[p][1] for p in prompts])
        return pooled, hidden

    def _remember(self, tokens: np.ndarray, predicted: np.ndarray) -> None:
        key = tokens.astype(np.int64).tobytes()
        self._predictions[key] = predicted
        self._predictions.move_to_end(key)
        while len(self._predictions) > PREDICTION_CACHE:
            self._predictions.popitem(last=False)

    # --- pictures -------------------------------------------------------------------------

    def _filled(self, tokens: np.ndarray) -> np.ndarray:
        """A grid with every masked cell filled: from the pass's prediction when this process
        made it, else (a resumed render's first preview) from the commonest committed token."""
        grid = np.asarray(tokens, dtype=np.int64).reshape(self.grid_size, self.grid_size)
        masked = grid == self.mask_token
        if not masked.any():
            return grid
        predicted = self._predictions.get(grid.tobytes())
        if predicted is not None:
            return np.where(masked, predicted, grid)
        committed = grid[~masked]
        fill = int(np.bincount(committed).argmax()) if committed.size else 0
        return np.where(masked, fill, grid)

    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        """See ImageModel.preview."""
        return self.preview_batch([tokens], size)[0]

    def preview_batch(self, grids: list[np.ndarray], size: int) -> list[np.ndarray]:
        """Pictures of several grids at once, (size, size, 3) uint8 each."""
        return [pictures[0] for pictures in self.preview_sizes(grids, (size,))]

    def preview_sizes(self, grids: list[np.ndarray], sizes: Sequence[int]) -> list[list[np.ndarray]]:
        """See ImageModel: one VQ decode of the grids, each picture resized to every size."""
        if not grids:
            return []
        filled = torch.from_numpy(np.stack([self._filled(g) for g in grids])).to(self.device)
        shape = (len(grids), self.grid_size, self.grid_size, self.vqvae.config.latent_channels)
        per_size: list[np.ndarray] = []
        with torch.inference_mode():
            decoded = self.vqvae.decode(filled, force_not_quantize=True, shape=shape).sample.clamp(0, 1)
            for size in sizes:
                pixels = decoded
                if pixels.shape[-1] != size:
                    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
                per_size.append((pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return [[np.ascontiguousarray(images[i]) for images in per_size] for i in range(len(grids))]

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """See ImageModel.encode_image: the VQ encoder at the model's image size."""
        image = np.asarray(rgb, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1).unsqueeze(0).float() / 255
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        with torch.inference_mode():
            latents = self.vqvae.encode(pixels).latents
            indices = self.vqvae.quantize(latents)[2][2]
        grid: np.ndarray = indices.reshape(self.grid_size, self.grid_size).cpu().numpy().astype(np.int64)
        return grid


def load(argument: str | None, device: str) -> AmusedImageModel:
    """The registry's loader of the "amused" kind (libs.model.registry).

    Args:
        argument: The folder of a saved aMUSEd pipeline (`amused:/path` names it).
        device: Torch device.

    Raises:
        ValueError: no folder given. FileNotFoundError: the folder is not a saved aMUSEd pipeline.
    """
    if not argument:
        raise ValueError("the amused kind needs a folder: amused:/path/to/folder")
    return AmusedImageModel.load(f"{PREFIX}{argument}", device)
