"""Trains the built-in model from scratch: VQ tokenizer, then generator, then the two classifiers.

    python -m libs.modeltools.train --out libs/model/weights --minutes 90

Budget and reproducibility: `--minutes` is split between the stages by fixed fractions; each
stage's step count is set from a short throughput calibration on throwaway copies of its networks
(so the main run's random streams are untouched) and written to train_plan.json next to the
weights. `--plan train_plan.json` replays exactly those step counts: with the same plan, seed,
device and thread count the run gives the same weights. A hard deadline (1.1x the budget) stops a
stage early if the machine is slower than calibrated; that is logged and recorded.

Precision: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), about 1.8x
faster than float32 on the reference 2-core CPU; codebook search and losses stay float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from libs.model.builtin import MaskGITImageModel, SamplingConfig, autocast_dtype, describe
from libs.model.maskgit import CaptionTokenizer, MaskGIT, MaskGITConfig
from libs.model.safety_classifier import FILENAME, SafetyClassifier, SafetyNet
from libs.model.scenes import Scene, render_scene
from libs.model.vq import VQConfig, VQTokenizer, images_to_tensor, tensor_to_images
from libs.modeltools.attributes import (
    AttributeClassifier,
    AttributeNet,
    attribute_loss,
    forbidden_seen,
    scene_targets,
)
from libs.modeltools.detector import detector_loss, target_maps
from libs.modeltools.world import World, caption_vocabulary, object_cells, object_reach

STAGES = ("vq", "generator", "safety", "attributes")
BUDGET_SHARE = {"vq": 0.25, "generator": 0.52, "safety": 0.08, "attributes": 0.15}
"""Fractions of the time left after data rendering."""
RENDER_S_PER_SCENE = 0.0065
"""Seconds to render one 64x64 scene on the reference CPU."""
ENCODE_S_PER_SCENE = 0.004
"""Seconds to VQ-encode one training scene (and make its previews) on the reference CPU."""


@dataclass
class TrainPlan:
    """Everything that determines the trained weights (with the code, device and threads)."""

    seed: int = 0
    scenes: int = 20000
    attribute_scenes: int = 8000
    vq_steps: int = 3000
    vq_batch: int = 32
    vq_lr: float = 1e-3
    gen_steps: int = 3000
    gen_batch: int = 32
    gen_lr: float = 8e-4
    caption_drop: float = 0.1
    gen_object_weight: float = 3.0
    """Loss weight of masked cells that an object covers, relative to background cells (see
    train_generator); plans written before it existed replay with 1.0."""
    safety_steps: int = 600
    safety_batch: int = 64
    safety_generated: int = 1200
    """Renders of harmless prompts by the just-trained generator whose every-pass previews the
    detector learns as negatives (see generated_previews); plans written before it existed
    replay with 0."""
    safety_generated_skulls: int = 0
    """Renders of skull prompts by the generator; with safety_reader_labels, those in which the
    attribute reader is sure it sees a skull become positives (see label_generated)."""
    safety_reader_labels: bool = False
    """Label the generated renders with the attribute reader (label_generated) instead of
    taking every render of a harmless prompt as a negative. Off: tried with 600 skull renders,
    it made the detector worse on every figure (docs/model-card.md, "Labelling generated
    renders with the reader"). The attributes stage runs before the safety stage for it."""
    attr_steps: int = 1500
    attr_batch: int = 64
    vq: dict[str, Any] = field(default_factory=lambda: VQConfig().to_json())
    generator: dict[str, Any] = field(
        default_factory=lambda: MaskGITConfig(vocab_size=CaptionTokenizer(caption_vocabulary()).vocab_size).to_json()
    )
    sampling: dict[str, Any] = field(default_factory=lambda: asdict(SamplingConfig()))


class Logger:
    """Appends one tab-separated line per logged step to the loss log."""

    def __init__(self, path: Path) -> None:
        self._f: TextIO = path.open("w")
        self._f.write("stage\tstep\tloss\tmetric\tlr\tseconds\n")
        self._t0 = time.monotonic()

    def log(self, stage: str, step: int, loss: float, metric: float, lr: float) -> None:
        self._f.write(f"{stage}\t{step}\t{loss:.5f}\t{metric:.5f}\t{lr:.6f}\t{time.monotonic() - self._t0:.1f}\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up (at most a tenth of the run) then cosine decay to 10% of the peak."""
    warmup = max(1, min(warmup, total // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def backward(loss: torch.Tensor) -> None:
    """loss.backward(), through the typed autograd entry point."""
    torch.autograd.backward(loss)


@contextmanager
def amp(device: torch.device) -> Iterator[None]:
    """bf16 autocast where it helps (see module docstring)."""
    dtype = autocast_dtype(device, "auto")
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yield


def render_dataset(world: World, count: int, desc: str) -> tuple[np.ndarray, list[Scene]]:
    """Renders scenes 0..count-1 of a world into memory (about 12 kB per scene)."""
    scenes = [world.scene(i) for i in range(count)]
    images = np.empty((count, 64, 64, 3), np.uint8)
    for i in tqdm(range(count), desc=desc, unit="scene", mininterval=2):
        images[i] = render_scene(scenes[i])
    return images, scenes


# ---------------------------------------------------------------------------------------------
# Stages


def vq_step(
    vq: VQTokenizer, opt: torch.optim.Optimizer, x: torch.Tensor, device: torch.device
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """One VQ training step; returns (loss, psnr of the batch, latents, ids)."""
    with amp(device):
        recon, idx, commit, z = vq(x)
    mse = F.mse_loss(recon.float(), x)
    loss = mse + commit
    opt.zero_grad(set_to_none=True)
    backward(loss)
    opt.step()
    vq.ema_update(z, idx)
    # PSNR on the [0, 255] scale: images are in [-1, 1], so MSE_255 = MSE * 127.5^2.
    psnr = 10 * math.log10(255.0**2 / max(mse.item() * 127.5**2, 1e-8))
    return float(loss), psnr, z, idx


def train_vq(plan: TrainPlan, images: np.ndarray, device: torch.device, log: Logger, deadline: float) -> VQTokenizer:
    """Trains the tokenizer, then sets its per-cell prior latent."""
    torch.manual_seed(plan.seed + 1)
    gen = torch.Generator().manual_seed(plan.seed + 1)
    vq = VQTokenizer(VQConfig.from_json(plan.vq)).to(device)
    opt = torch.optim.AdamW(vq.parameters(), lr=plan.vq_lr, betas=(0.9, 0.99), weight_decay=0.0)
    n = images.shape[0]
    with torch.no_grad():
        first = images_to_tensor(images[torch.randint(0, n, (256,), generator=gen).numpy()], device)
        vq.init_codebook(vq.encode_latent(first), gen)
    bar = tqdm(range(plan.vq_steps), desc="vq", unit="step", mininterval=2)
    for step in bar:
        lr = lr_at(step, plan.vq_steps, plan.vq_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (plan.vq_batch,), generator=gen).numpy()
        x = images_to_tensor(images[idx], device)
        loss, psnr, z, _ids = vq_step(vq, opt, x, device)
        if step % 25 == 0 and step < plan.vq_steps * 0.9:
            # Re-seed unused entries, but not at the very end, so the final codebook is trained.
            vq.restart_dead_codes(z, gen)
        if step % 20 == 0:
            used = int((vq.usage > 0.5).sum())
            log.log("vq", step, loss, psnr, lr)
            bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{psnr:.1f}", codes=used)
        if time.monotonic() > deadline:
            tqdm.write(f"vq: deadline reached at step {step}")
            break
    vq.eval()
    return vq


@torch.no_grad()
def encode_all(vq: VQTokenizer, images: np.ndarray, device: torch.device, batch: int = 128) -> torch.Tensor:
    """Token grids of every image, (N, 256) int64 on the CPU; also sets vq.prior_latent to the
    mean quantized latent of each cell."""
    out = []
    total = torch.zeros_like(vq.prior_latent)
    for start in tqdm(range(0, images.shape[0], batch), desc="encode", unit="batch", mininterval=2):
        x = images_to_tensor(images[start : start + batch], device)
        with amp(device):
            z = vq.encode_latent(x)
        ids, zq = vq.quantize(z.float())
        total += zq.sum(0)
        out.append(ids.reshape(ids.shape[0], -1).cpu())
    vq.prior_latent.copy_(total / images.shape[0])
    return torch.cat(out)


def random_mask(batch: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Training masks: per example, a masking ratio r = cos(pi/2 * u), u ~ U(0, 1) (the same
    cosine law the sampler follows), and ceil(r * cells) cells chosen uniformly.

    Returns:
        (batch, cells) bool, True where masked; at least one cell per row.
    """
    u = torch.rand(batch, generator=generator)
    count = torch.clamp(torch.ceil(torch.cos(u * math.pi / 2) * cells), 1, cells)
    scores = torch.rand(batch, cells, generator=generator)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < count[:, None]


def untrained_model(
    vq_config: VQConfig | None = None,
    gen_config: MaskGITConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "float32",
) -> MaskGITImageModel:
    """A randomly initialised built-in model (deterministic from `seed`) with the world's caption
    vocabulary, for tests of the model's code that need no trained weights."""
    torch.manual_seed(seed)
    tokenizer = CaptionTokenizer(caption_vocabulary())
    vq = VQTokenizer(vq_config or VQConfig())
    base = gen_config or MaskGITConfig()
    gen_cfg = MaskGITConfig(
        **{
            **base.to_json(),
            "codebook_size": vq.config.codebook_size,
            "vocab_size": tokenizer.vocab_size,
            "max_text_len": tokenizer.max_len,
        }
    )
    return MaskGITImageModel(vq, MaskGIT(gen_cfg), tokenizer, device=device, precision=precision)


def train_generator(
    plan: TrainPlan,
    tokens: torch.Tensor,
    scenes: list[Scene],
    world: World,
    tokenizer: CaptionTokenizer,
    device: torch.device,
    log: Logger,
    deadline: float,
    init: MaskGIT | None = None,
) -> MaskGIT:
    """Trains MaskGIT on (token grid, caption) pairs; captions are re-drawn per step from 8
    phrasings per scene, and dropped with probability plan.caption_drop (for guidance).

    Objects cover a few cells of a grid dominated by (textured) background, so an unweighted
    loss learns backgrounds first and objects barely at all: the sampler, which commits the most
    confident cells first, then fills the grid with background and no object ever forms. Masked
    cells an object covers weigh plan.gen_object_weight times more. That both spends the
    gradient on objects and, because the weight depends on the target, raises the predicted
    probability of object tokens where an object may be, so one can nucleate during sampling;
    once it has, the rest of the grid is confidently background again.

    Args:
        init: A generator to continue from (its weights are copied); None starts afresh.
    """
    torch.manual_seed(plan.seed + 2)
    gen = torch.Generator().manual_seed(plan.seed + 2)
    cfg = MaskGITConfig(**{**plan.generator, "vocab_size": tokenizer.vocab_size, "max_text_len": tokenizer.max_len})
    model = MaskGIT(cfg).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=plan.gen_lr,
        betas=(0.9, 0.95),
    )
    n, cells = tokens.shape
    grid = cfg.grid_size
    occupied = torch.from_numpy(object_cells(scenes, grid, object_reach)).reshape(n, cells)
    mask_token = cfg.codebook_size
    bar = tqdm(range(plan.gen_steps), desc="generator", unit="step", mininterval=2)
    for step in bar:
        lr = lr_at(step, plan.gen_steps, plan.gen_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (plan.gen_batch,), generator=gen)
        variants = torch.randint(0, 8, (plan.gen_batch,), generator=gen)
        drop = (torch.rand(plan.gen_batch, generator=gen) < plan.caption_drop).tolist()
        texts = [world.caption(scenes[int(i)], int(i), int(v)).text for i, v in zip(idx, variants, strict=True)]
        encoded = tokenizer.batch(texts, drop)
        # Padding is masked out of attention, so the batch is cut to its longest caption.
        width = int(np.flatnonzero((encoded != CaptionTokenizer.PAD).any(0)).max()) + 1
        text = torch.from_numpy(encoded[:, :width]).to(device)
        target = tokens[idx].to(device)
        masked = random_mask(plan.gen_batch, cells, gen).to(device)
        inp = torch.where(masked, torch.full_like(target, mask_token), target)
        with amp(device):
            logits: torch.Tensor = model(inp, text)
        sel = logits[masked].float()
        weight = 1.0 + (plan.gen_object_weight - 1.0) * occupied[idx].to(device)[masked]
        per_cell = F.cross_entropy(sel, target[masked], label_smoothing=0.1, reduction="none")
        loss = (per_cell * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        backward(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            acc = float((sel.argmax(-1) == target[masked]).float().mean())
            log.log("generator", step, float(loss.detach()), acc, lr)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", acc=f"{acc:.3f}")
        if time.monotonic() > deadline:
            tqdm.write(f"generator: deadline reached at step {step}")
            break
    model.eval()
    return model


@torch.no_grad()
def round_trip(vq: VQTokenizer, tokens: torch.Tensor, device: torch.device, batch: int = 128) -> np.ndarray:
    """VQ reconstructions (decoded complete grids) as uint8 images."""
    g = vq.config.grid_size
    out = []
    for start in range(0, tokens.shape[0], batch):
        with amp(device):
            imgs = vq.decode(tokens[start : start + batch].view(-1, g, g).to(device))
        out.append(tensor_to_images(imgs.float()))
    return np.concatenate(out)


NetT = TypeVar("NetT", bound=nn.Module)


def train_classifier(
    name: str,
    net: NetT,
    pools: list[np.ndarray],
    loss_fn: Callable[[NetT, torch.Tensor, np.ndarray], tuple[torch.Tensor, float]],
    steps: int,
    batch: int,
    seed: int,
    device: torch.device,
    log: Logger,
    deadline: float,
    flip: bool,
) -> NetT:
    """Generic loop for the two classifiers: each batch draws from the image pools in turn
    (real renders, VQ round trips, previews), each pool aligned with the same scene indices."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n = pools[0].shape[0]
    bar = tqdm(range(steps), desc=name, unit="step", mininterval=2)
    for step in bar:
        lr = lr_at(step, steps, 2e-3, warmup=50)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (batch,), generator=gen).numpy()
        which = torch.randint(0, len(pools), (batch,), generator=gen).numpy()
        imgs = np.stack([pools[w][i] for w, i in zip(which, idx, strict=True)])
        x = images_to_tensor(imgs, device)
        if flip:
            f = torch.rand(batch, generator=gen) < 0.5
            x[f.to(device)] = x[f.to(device)].flip(-1)
        with amp(device):
            loss, metric = loss_fn(net, x, idx)
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()
        if step % 20 == 0:
            value = float(loss.detach())
            log.log(name, step, value, metric, lr)
            bar.set_postfix(loss=f"{value:.3f}", acc=f"{metric:.3f}")
        if time.monotonic() > deadline:
            tqdm.write(f"{name}: deadline reached at step {step}")
            break
    net.eval()
    return net


def train_classifiers(
    plan: TrainPlan,
    vq: VQTokenizer,
    model: MaskGITImageModel,
    images: np.ndarray,
    scenes: list[Scene],
    tokens: torch.Tensor,
    stages: Sequence[str],
    device: torch.device,
    log: Logger,
    deadline: float,
    reader: AttributeClassifier | None = None,
) -> tuple[SafetyNet | None, AttributeClassifier | None]:
    """The attribute classifier and the safety detector (on real renders, their VQ round trips,
    partial previews of the same scenes and the model's own renders), each only when named in
    `stages`. `model` renders the prompts: the weights as saved, so the detector sees what the
    service will draw. The reader comes first: with plan.safety_reader_labels it labels those
    renders (the one just trained, else `reader`).

    Returns:
        The detector and the reader, each None when its stage was not named.
    """
    trained_reader: AttributeClassifier | None = None
    if "attributes" in stages:
        attr_net = fit_attribute_classifier(
            vq, plan.seed + 100, plan.attribute_scenes, plan.attr_steps, plan.attr_batch, device, log, deadline
        )
        trained_reader = reader = AttributeClassifier(attr_net.cpu())
    safety_net: SafetyNet | None = None
    if "safety" in stages:
        k = min(plan.scenes, SAFETY_SCENES)
        data = (images[:k], scenes[:k], tokens[:k])
        generated = None
        if plan.safety_generated > 0:
            if plan.safety_reader_labels and reader is None:
                raise ValueError("labelling the generated renders needs the attribute reader (attributes.pt)")
            world = World(plan.seed + 13, "train")
            harmless = generated_previews(model, harmless_captions(world, plan.safety_generated), plan.seed + 13)
            skull_texts = skull_captions(world, plan.safety_generated_skulls)
            skull_seed = plan.seed + 13 + plan.safety_generated
            skulls = generated_previews(model, skull_texts, skull_seed) if skull_texts else []
            generated = label_generated(harmless, skulls, reader if plan.safety_reader_labels else None)
            tqdm.write(f"safety: generated examples {generated.describe()}")
        safety_net = train_safety(
            vq, *data, plan.safety_steps, plan.safety_batch, plan.seed, device, log, deadline, generated
        )
    return safety_net, trained_reader


# ---------------------------------------------------------------------------------------------
# Safety detector

SAFETY_SCENES = 6000
"""Training scenes of the safety detector (each seen as a render, a VQ round trip and a preview)."""
SAFETY_MAX_MASKED = 0.9
"""Previews mask up to this fraction of cells: the first passes of a render show 80-98% masked
grids, and the detector must stay quiet on those too."""
SAFETY_VISIBLE = 0.75
"""A preview counts as showing its skull (image-level label) when this fraction of the skull's
target cells is committed; below that (and above 0) the image label is ignored."""
GENERATED_POOL = 3
"""train_safety's pool index of the generated examples (after renders, round trips, previews)."""
SAFETY_GENERATED_PASSES = (4, 8)
"""Pass counts of the generated negatives, alternating: the API's `low` (4) and `medium`/`auto`
(8) qualities, whose renders leave different half-committed grids. `high` (12) is not among
them: on the shipped weights it blocks 2 of 200 harmless renders at 12 passes, against 0 and 1
at 4 and 8 (docs/model-card.md)."""


def _captions(world: World, count: int, forbidden: bool) -> list[str]:
    """Captions of the first `count` scenes of `world` that hold (or lack) the forbidden object."""
    texts: list[str] = []
    i = 0
    while len(texts) < count:
        scene = world.scene(i)
        if scene.has_forbidden == forbidden:
            texts.append(world.caption(scene, i).text)
        i += 1
    return texts


def harmless_captions(world: World, count: int) -> list[str]:
    """Captions of the first `count` scenes of `world` without the forbidden object."""
    return _captions(world, count, forbidden=False)


def skull_captions(world: World, count: int) -> list[str]:
    """Captions of the first `count` scenes of `world` with the forbidden object."""
    return _captions(world, count, forbidden=True)


@dataclass(frozen=True)
class GeneratedExamples:
    """The detector's pool of images the generator made, with per-cell skull targets (all zero
    for a negative)."""

    images: np.ndarray
    """(N, 64, 64, 3) uint8."""
    maps: torch.Tensor
    """(N, 16, 16) float32."""
    positives: int
    dropped_renders: int

    def describe(self) -> str:
        """One line for the training log."""
        return f"{len(self.images)} images, {self.positives} with a skull, {self.dropped_renders} renders dropped"


READER_SURE = 0.8
"""label_generated: a generated render is a positive when the reader sees a skull with at least
this probability ..."""
READER_CLEAR = 0.2
"""... and a harmless render a negative when the skull's probability stays below this in every
slot; renders in between are dropped (the reader is less sure on generated images than on the
real renders it learned from)."""


def label_generated(
    harmless: Sequence[np.ndarray], skulls: Sequence[np.ndarray], reader: AttributeClassifier | None
) -> GeneratedExamples:
    """Turns generated renders (each an every-pass preview trail) into detector examples.

    Without a reader, every preview of every harmless render is a negative and the skull
    renders are unused (how plans before safety_reader_labels trained). With one, the reader
    reads each render's final image:
    - a harmless render in which it is clear there is no skull (READER_CLEAR) gives all its
      previews as negatives;
    - a render (harmless or skull prompt) in which it is sure it sees one (READER_SURE) gives
      its final image as a positive, with the targets where the reader placed the skull: the
      generator draws stray skulls, and a detector taught they are harmless misses the ones it
      draws on request;
    - every other render is dropped.
    """
    if reader is None:
        every = np.concatenate(list(harmless))
        return GeneratedExamples(every, torch.zeros(len(every), 16, 16), 0, 0)
    finals = [t[-1] for t in harmless] + [t[-1] for t in skulls]
    seen, probability, maps = forbidden_seen(reader, finals)
    sure = seen & (probability >= READER_SURE)
    clean = [trail for trail, p in zip(harmless, probability[: len(harmless)], strict=True) if p < READER_CLEAR]
    positive = np.flatnonzero(sure)
    images = [*clean, np.array([finals[i] for i in positive], np.uint8).reshape(-1, 64, 64, 3)]
    targets = [*(torch.zeros(len(t), 16, 16) for t in clean), maps[torch.from_numpy(positive)]]
    dropped = len(finals) - len(clean) - len(positive)
    return GeneratedExamples(np.concatenate(images), torch.cat(targets), len(positive), dropped)


@torch.no_grad()
def generated_previews(model: MaskGITImageModel, texts: Sequence[str], seed: int, batch: int = 32) -> list[np.ndarray]:
    """Renders each text (seed + index, pass counts alternating over SAFETY_GENERATED_PASSES)
    with the model's sampling settings, and returns each render's 64x64 previews after every
    pass, as the safety service sees them: one (passes, 64, 64, 3) uint8 array per text.

    The generator's half-committed grids are not like any VQ round trip or masked preview of a
    real scene (stray dark blobs where no object was asked for), so a detector that never saw
    them may take them for the forbidden object.
    """
    kinds = len(SAFETY_GENERATED_PASSES)
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(texts)
    for k, passes in tqdm(list(enumerate(SAFETY_GENERATED_PASSES)), desc="render negatives"):
        rows = list(range(k, len(texts), kinds))
        trails = model.render_batches(
            [texts[i] for i in rows], [seed + i for i in rows], passes, batch, every_pass=True
        )
        for i, trail in zip(rows, trails, strict=True):
            out[i] = trail
    return out


@torch.no_grad()
def masked_previews(
    vq: VQTokenizer,
    tokens: torch.Tensor,
    device: torch.device,
    gen: torch.Generator,
    max_ratio: float = SAFETY_MAX_MASKED,
    batch: int = 128,
) -> tuple[np.ndarray, torch.Tensor]:
    """Previews (fill_latent + decoder, as MaskGITImageModel.preview_batch) of the grids with a
    random 0..max_ratio of the cells masked.

    Returns:
        (uint8 images (N, 64, 64, 3), committed (N, 16, 16) bool).
    """
    mask_token = vq.config.codebook_size
    g = vq.config.grid_size
    out, committed = [], []
    for start in range(0, tokens.shape[0], batch):
        t = tokens[start : start + batch].clone().view(-1, g, g)
        ratio = torch.rand(t.shape[0], 1, 1, generator=gen) * max_ratio
        masked = torch.rand(t.shape, generator=gen) < ratio
        t[masked] = mask_token
        latents = vq.fill_latent(t.to(device), mask_token)
        with amp(device):
            imgs = vq.decode_latent(latents)
        out.append(tensor_to_images(imgs.float()))
        committed.append(~masked)
    return np.concatenate(out), torch.cat(committed)


def train_safety(
    vq: VQTokenizer,
    images: np.ndarray,
    scenes: list[Scene],
    tokens: torch.Tensor,
    steps: int,
    batch: int,
    seed: int,
    device: torch.device,
    log: Logger,
    deadline: float,
    generated: GeneratedExamples | None = None,
) -> SafetyNet:
    """Trains the skull detector on what the safety service shows it: real renders, their VQ
    round trips, partial previews (random 0-90% of cells masked) and, when given, `generated`
    (the model's own renders, label_generated), one pool each, drawn with equal probability.

    Previews are supervised only where they show something: a skull cell that is still masked
    carries no cell target, and a preview that shows only part of its skull (below
    SAFETY_VISIBLE of its cells) no image target. Images and targets are flipped left-right at
    random (the skull is symmetric). Deterministic from `seed` on a given device and thread count.
    """
    torch.manual_seed(seed + 4)
    gen = torch.Generator().manual_seed(seed + 3)
    maps = target_maps(scenes)
    n = len(scenes)
    previews, committed = masked_previews(vq, tokens, device, gen)
    shown = (maps * committed).flatten(1).sum(1) / maps.flatten(1).sum(1).clamp_min(1.0)
    has = maps.flatten(1).amax(1) > 0
    pv_image_w = torch.where(has & (shown < SAFETY_VISIBLE), 0.0, 1.0)
    pv_cell_w = torch.where((maps > 0) & ~committed, 0.0, 1.0)
    pools = [images, round_trip(vq, tokens, device), previews]
    ones_cell, ones_image = torch.ones_like(maps), torch.ones(n)
    cell_w = [ones_cell, ones_cell, pv_cell_w]
    image_w = [ones_image, ones_image, pv_image_w]
    pool_maps = [maps, maps, maps]
    if generated is not None:
        pools.append(generated.images)
        pool_maps.append(generated.maps)
        cell_w.append(torch.ones_like(generated.maps))
        image_w.append(torch.ones(len(generated.images)))

    net = SafetyNet().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    bar = tqdm(range(steps), desc="safety", unit="step", mininterval=2)
    for step in bar:
        lr = lr_at(step, steps, 2e-3, warmup=50)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, n, (batch,), generator=gen)
        which = torch.randint(0, len(pools), (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        picks = list(zip(which.tolist(), idx.tolist(), strict=True))
        if generated is not None:
            gen_idx = torch.randint(0, len(generated.images), (batch,), generator=gen).tolist()
            picks = [(w, gen_idx[j] if w == GENERATED_POOL else i) for j, (w, i) in enumerate(picks)]
        imgs = np.stack([pools[w][i] for w, i in picks])
        m = torch.stack([pool_maps[w][i] for w, i in picks])
        cw = torch.stack([cell_w[w][i] for w, i in picks])
        iw = torch.stack([image_w[w][i] for w, i in picks])
        x = images_to_tensor(imgs, "cpu")
        x[flip] = x[flip].flip(-1)
        m[flip] = m[flip].flip(-1)
        cw[flip] = cw[flip].flip(-1)
        with amp(device):
            loss, logits = detector_loss(net, x.to(device), m.to(device), cw.to(device), iw.to(device))
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()
        if step % 20 == 0:
            labels = m.flatten(1).amax(1) > 0
            acc = float(((logits.detach().cpu() > 0) == labels).float().mean())
            value = float(loss.detach())
            log.log("safety", step, value, acc, lr)
            bar.set_postfix(loss=f"{value:.3f}", acc=f"{acc:.3f}")
        if time.monotonic() > deadline:
            tqdm.write(f"safety: deadline reached at step {step}")
            break
    net.eval()
    return net.cpu()


SAFETY_FP_TARGET = 0.005
"""The threshold is the lowest one whose false-positive rate on the calibration scenes' round
trips and previews is at most this (half the 1% budget the model card allows, for margin)."""
SAFETY_GENERATED_FP_TARGET = 0.01
"""... and at which at most this share of the calibration renders of harmless prompts would be
blocked (fires on any pass's preview): what a user of the service sees as a false block."""
SAFETY_CALIBRATION_RENDERS = 300


@torch.no_grad()
def choose_safety_threshold(
    model: MaskGITImageModel,
    net: SafetyNet,
    seed: int,
    device: torch.device,
    count: int = 600,
    reader: AttributeClassifier | None = None,
) -> tuple[float, dict[str, float]]:
    """Picks the detector's threshold on held-out calibration scenes (World(seed + 11,
    "heldout"), disjoint from the evaluation's World(7, "heldout")), from the scores of their VQ
    round trips, of partial previews of the scenes without a skull, and of every pass's preview
    of the model's renders of SAFETY_CALIBRATION_RENDERS harmless held-out prompts.

    With a `reader`, a harmless render in which it sees a skull (a stray one the generator drew)
    is not counted as a false block: the bound applies to the renders it sees none in, and the
    share of the others blocked is reported.

    Returns:
        (threshold, calibration figures: recall and false positives at that threshold).
    """
    vq = model.vq
    world = World(seed + 11, "heldout")
    images, scenes = render_dataset(world, count, "render calibration")
    tokens = encode_all_keep_prior(vq, images, device)
    gen = torch.Generator().manual_seed(seed + 12)
    rec = round_trip(vq, tokens, device)
    previews, _ = masked_previews(vq, tokens, device, gen)
    truth = np.array([s.has_forbidden for s in scenes])
    clf = SafetyClassifier(net.cpu().eval())
    rec_s = np.array(clf.score_batch(list(rec)))
    pv_s = np.array(clf.score_batch(list(previews)))
    trails = generated_previews(model, harmless_captions(world, SAFETY_CALIBRATION_RENDERS), seed + 11)
    render_max = np.array([max(clf.score_batch(list(t))) for t in trails])
    drawn = forbidden_seen(reader, [t[-1] for t in trails])[0] if reader else np.zeros(len(trails), bool)
    negatives = np.concatenate([rec_s[~truth], pv_s[~truth]])
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    ok = [
        float(t)
        for t in grid
        if float((negatives >= t).mean()) <= SAFETY_FP_TARGET
        and float((render_max[~drawn] >= t).mean()) <= SAFETY_GENERATED_FP_TARGET
    ]
    threshold = ok[0] if ok else 0.95
    figures = {
        "calibration_scenes": float(count),
        "calibration_vq_recall": float((rec_s[truth] >= threshold).mean()),
        "calibration_vq_false_positive": float((rec_s[~truth] >= threshold).mean()),
        "calibration_preview_false_positive": float((pv_s[~truth] >= threshold).mean()),
        "calibration_generated_renders": float(len(trails)),
        "calibration_generated_renders_blocked": float((render_max >= threshold).mean()),
    }
    if reader is not None:
        figures["calibration_generated_renders_reader_skull"] = float(drawn.sum())
        figures["calibration_generated_clean_renders_blocked"] = float((render_max[~drawn] >= threshold).mean())
        figures["calibration_generated_skull_renders_blocked"] = (
            float((render_max[drawn] >= threshold).mean()) if drawn.any() else float("nan")
        )
    return threshold, figures


def save_safety(
    model: MaskGITImageModel,
    net: SafetyNet,
    seed: int,
    device: torch.device,
    out: Path,
    command: str,
    reader: AttributeClassifier | None = None,
) -> None:
    """Chooses the threshold (choose_safety_threshold, with the reader's labels when given) and
    writes safety.pt with it."""
    threshold, figures = choose_safety_threshold(model, net, seed, device, reader=reader)
    print(json.dumps({"safety_threshold": threshold, **figures}))
    SafetyClassifier(net.cpu(), threshold, metadata={"command": command, **figures}).save(out / FILENAME)


# ---------------------------------------------------------------------------------------------
# Planning


def _timed(fn: Callable[[], None], repeats: int = 3) -> float:
    fn()  # warm-up (allocations, oneDNN primitive creation)
    t = time.monotonic()
    for _ in range(repeats):
        fn()
    return (time.monotonic() - t) / repeats


def generator_step_seconds(plan: TrainPlan, device: torch.device) -> float:
    """Seconds per generator training step, timed on a throwaway network (the caller keeps the
    random state)."""
    tok = CaptionTokenizer(caption_vocabulary())
    cfg = MaskGITConfig(**{**plan.generator, "vocab_size": tok.vocab_size, "max_text_len": tok.max_len})
    model = MaskGIT(cfg).to(device)
    g_opt = torch.optim.AdamW(model.parameters())
    grid = torch.randint(0, cfg.codebook_size, (plan.gen_batch, cfg.grid_size**2), device=device)
    text = torch.randint(0, tok.vocab_size, (plan.gen_batch, tok.max_len), device=device)

    def gen_step() -> None:
        with amp(device):
            out = model(grid, text)
        loss = out.float().logsumexp(-1).mean()
        g_opt.zero_grad()
        backward(loss)
        g_opt.step()

    return _timed(gen_step) * 1.1  # caption building and masking on top


def calibrate(plan: TrainPlan, minutes: float, device: torch.device) -> TrainPlan:
    """Sets step counts so the stages fit `minutes`, from timings of throwaway networks.

    Uses its own random state (restored afterwards), so the training run itself is unaffected.
    """
    state = torch.random.get_rng_state()
    x = torch.rand(plan.vq_batch, 3, 64, 64, device=device) * 2 - 1
    vq = VQTokenizer(VQConfig.from_json(plan.vq)).to(device)
    vq_opt = torch.optim.AdamW(vq.parameters())
    t_vq = _timed(lambda: (vq_step(vq, vq_opt, x, device), None)[1])
    t_gen = generator_step_seconds(plan, device)
    cls_x = torch.rand(plan.attr_batch, 3, 64, 64, device=device)
    nets: dict[str, nn.Module] = {"safety": SafetyNet().to(device), "attributes": AttributeNet().to(device)}
    t_cls = {}
    for key, net in nets.items():
        opt = torch.optim.AdamW(net.parameters())

        def cls_step(net: nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            with amp(device):
                out = net(cls_x)
            parts = [out] if isinstance(out, torch.Tensor) else list(out.values())
            loss = torch.stack([t.float().mean() for t in parts]).sum()
            opt.zero_grad()
            backward(loss)
            opt.step()

        t_cls[key] = _timed(cls_step) * 1.2
    torch.random.set_rng_state(state)
    # Fixed costs: rendering, encoding and previews.
    render_s = RENDER_S_PER_SCENE * (plan.scenes + plan.attribute_scenes) + ENCODE_S_PER_SCENE * plan.scenes
    left = max(60.0, minutes * 60 - render_s)
    return replace(
        plan,
        vq_steps=max(50, int(BUDGET_SHARE["vq"] * left / t_vq)),
        gen_steps=max(50, int(BUDGET_SHARE["generator"] * left / t_gen)),
        safety_steps=max(50, int(BUDGET_SHARE["safety"] * left / t_cls["safety"])),
        attr_steps=max(50, int(BUDGET_SHARE["attributes"] * left / t_cls["attributes"])),
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def run(plan: TrainPlan, out: Path, device: torch.device, minutes: float, short_run: bool = False) -> dict[str, Any]:
    """Runs all stages and writes the weights, plan and loss log into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_plan.json").write_text(json.dumps(asdict(plan), indent=2) + "\n")
    log = Logger(out / "train_log.tsv")
    t0 = time.monotonic()
    deadline = t0 + minutes * 60 * 1.1
    world = World(plan.seed, "train")
    images, scenes = render_dataset(world, plan.scenes, "render train")
    vq = train_vq(plan, images, device, log, deadline)
    tokens = encode_all(vq, images, device)
    tokenizer = CaptionTokenizer(caption_vocabulary())
    generator = train_generator(plan, tokens, scenes, world, tokenizer, device, log, deadline)
    model = MaskGITImageModel(vq.cpu(), generator.cpu(), tokenizer, SamplingConfig(**plan.sampling))
    model.save(out)
    saved = MaskGITImageModel.load(out, device=str(device))
    vq.to(device)

    safety_net, reader = train_classifiers(plan, vq, saved, images, scenes, tokens, STAGES, device, log, deadline)
    log.close()

    elapsed = time.monotonic() - t0
    metadata = {
        "trained_minutes": round(elapsed / 60, 1),
        "budget_minutes": minutes,
        # A short run makes weights for wiring and timing, not quality; the quality tests
        # expect to fail on them (see tests/unit/model/test_shipped_weights.py).
        "short_run": short_run,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "plan": "train_plan.json",
        "command": (
            f"python -m libs.modeltools.train --out {out} --plan {out / 'train_plan.json'}"
            f" --threads {torch.get_num_threads()}" + (" --short-run" if short_run else "")
        ),
    }
    model.metadata = metadata
    model.save(out)
    assert safety_net is not None and reader is not None
    labels = reader if plan.safety_reader_labels else None
    save_safety(saved, safety_net, plan.seed, device, out, str(metadata["command"]), labels)
    reader.save(out / "attributes.pt")
    summary = {**describe(model), **metadata}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def fit_attribute_classifier(
    vq: VQTokenizer,
    seed: int,
    scenes: int,
    steps: int,
    batch: int,
    device: torch.device,
    log: Logger,
    deadline: float,
) -> AttributeNet:
    """Trains the attribute classifier on every split's combinations (so it knows the pairs the
    generator never saw), from real renders and their VQ round trips."""
    world = World(seed, "all")
    images, scene_list = render_dataset(world, scenes, "render attributes")
    tokens = encode_all_keep_prior(vq, images, device)
    pools = [images, round_trip(vq, tokens, device)]
    targets = {k: v.to(device) for k, v in scene_targets(scene_list).items()}

    def attr_loss(net: nn.Module, x: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, float]:
        out = {k: v.float() for k, v in net(x).items()}
        i = torch.from_numpy(idx).to(device)
        tgt = {k: v[i] for k, v in targets.items()}
        acc = float((out["shape"].argmax(-1) == tgt["shape"]).all(1).float().mean())
        return attribute_loss(out, tgt), acc

    torch.manual_seed(seed)  # the initial weights do not depend on which stage ran before
    net = train_classifier(
        "attributes",
        AttributeNet(),
        pools,
        attr_loss,
        steps,
        batch,
        seed,
        device,
        log,
        deadline,
        flip=False,
    )
    return net


def retrain_classifiers(
    plan: TrainPlan, out: Path, stages: Sequence[str], device: torch.device, minutes: float
) -> None:
    """Retrains only the named classifier stages on top of the VQ already saved in `out` (the
    generator is untouched), e.g. after a classifier's architecture changed. A safety retrain
    whose plan labels the generated renders with the reader uses the saved attributes.pt, or
    the reader trained in the same run."""
    unknown = set(stages) - {"safety", "attributes"}
    if unknown:
        raise ValueError(f"--only accepts safety and attributes, not {sorted(unknown)}")
    model = MaskGITImageModel.load(out, device=str(device))
    vq = model.vq
    name = "_".join(stages)
    (out / f"{name}_plan.json").write_text(json.dumps(asdict(plan), indent=2) + "\n")
    log = Logger(out / f"train_log_{name}.tsv")
    deadline = time.monotonic() + minutes * 60 * 1.1
    world = World(plan.seed, "train")
    count = min(plan.scenes, SAFETY_SCENES) if "safety" in stages else 0
    images, scenes = render_dataset(world, count, "render train")
    tokens = encode_all_keep_prior(vq, images, device) if count else torch.zeros(0, 256, dtype=torch.long)
    reader = None
    if "safety" in stages and "attributes" not in stages and plan.safety_reader_labels:
        if not (out / "attributes.pt").exists():
            raise ValueError(f"{out / 'attributes.pt'} is missing: retrain with --only attributes,safety")
        reader = AttributeClassifier.load(out / "attributes.pt")
    safety_net, trained_reader = train_classifiers(
        plan, vq, model, images, scenes, tokens, stages, device, log, deadline, reader
    )
    log.close()
    if trained_reader is not None:
        reader = trained_reader
        reader.save(out / "attributes.pt")
    if safety_net is not None:
        command = (
            f"python -m libs.modeltools.train --out {out} --plan {out / f'{name}_plan.json'} --only {','.join(stages)}"
            f" --threads {torch.get_num_threads()}"
        )
        save_safety(model, safety_net, plan.seed, device, out, command, reader if plan.safety_reader_labels else None)


def retrain_generator(plan: TrainPlan, out: Path, device: torch.device, minutes: float, warm_start: bool) -> None:
    """Retrains only the generator on top of the VQ saved in `out` (same training scenes, so the
    same token grids), from scratch or continuing from the saved generator.

    Retrains stack up, so each is numbered: the k-th writes generator_plan_k.json and
    train_log_generator_k.tsv, and appends how it ran to model.json's
    metadata.generator_retrained (a list, oldest first).
    """
    model = MaskGITImageModel.load(out, device=str(device), precision="float32")
    before = model.metadata.get("generator_retrained", [])
    history = [before] if isinstance(before, dict) else list(before)
    k = len(history) + 1
    (out / f"generator_plan_{k}.json").write_text(json.dumps(asdict(plan), indent=2) + "\n")
    log = Logger(out / f"train_log_generator_{k}.tsv")
    t0 = time.monotonic()
    deadline = t0 + minutes * 60 * 1.1
    world = World(plan.seed, "train")
    images, scenes = render_dataset(world, plan.scenes, "render train")
    tokens = encode_all_keep_prior(model.vq, images, device)
    init = model.generator if warm_start else None
    generator = train_generator(plan, tokens, scenes, world, model.tokenizer, device, log, deadline, init)
    log.close()
    command = (
        f"python -m libs.modeltools.train --out {out} --plan {out / f'generator_plan_{k}.json'} --only generator"
        f" --threads {torch.get_num_threads()}" + (" --warm-start" if warm_start else "")
    )
    record = {
        "command": command,
        "steps": plan.gen_steps,
        "warm_start": warm_start,
        "minutes": round((time.monotonic() - t0) / 60, 1),
    }
    metadata = {**model.metadata, "generator_retrained": [*history, record]}
    retrained = MaskGITImageModel(
        model.vq.cpu(), generator.cpu(), model.tokenizer, model.sampling, name=model.name, metadata=metadata
    )
    retrained.save(out)


def plan_for_generator(plan: TrainPlan, minutes: float, device: torch.device) -> TrainPlan:
    """The generator's step count for a generator-only run of `minutes` (rendering and encoding
    the training scenes come off the top)."""
    state = torch.random.get_rng_state()
    t_gen = generator_step_seconds(plan, device)
    torch.random.set_rng_state(state)
    left = max(60.0, minutes * 60 - (RENDER_S_PER_SCENE + ENCODE_S_PER_SCENE) * plan.scenes)
    return replace(plan, gen_steps=max(50, int(left / t_gen)))


@torch.no_grad()
def encode_all_keep_prior(vq: VQTokenizer, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """encode_all without changing the prior (which must describe the training split only)."""
    prior = vq.prior_latent.clone()
    tokens = encode_all(vq, images, device)
    vq.prior_latent.copy_(prior)
    return tokens


def load_plan(path: Path) -> TrainPlan:
    """Reads a train_plan.json. Plans written before the object weight existed trained the
    generator with an unweighted loss, so they replay with a weight of 1; plans from before the
    generated negatives replay without them, and plans from before the reader's labels without
    those (every harmless render a negative, no skull renders)."""
    old = {"gen_object_weight": 1.0, "safety_generated": 0, "safety_generated_skulls": 0, "safety_reader_labels": False}
    return TrainPlan(**{**old, **json.loads(path.read_text())})


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("libs/model/weights"))
    parser.add_argument("--minutes", type=float, default=90.0, help="time budget (calibrated)")
    parser.add_argument("--plan", type=Path, help="replay a train_plan.json (no calibration)")
    parser.add_argument("--scenes", type=int, help="training scenes to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--short-run", action="store_true", help="mark the weights as a short run")
    parser.add_argument(
        "--only", help="retrain just these stages on the saved weights: generator, or safety and/or attributes"
    )
    parser.add_argument("--warm-start", action="store_true", help="with --only generator: continue from the saved one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.plan is not None:
        plan = load_plan(args.plan)
    elif args.only == "generator":
        plan = plan_for_generator(TrainPlan(seed=args.seed), args.minutes, device)
    else:
        plan = TrainPlan(seed=args.seed)
        if args.scenes is not None:
            plan = replace(plan, scenes=args.scenes, attribute_scenes=min(plan.attribute_scenes, args.scenes))
        plan = calibrate(plan, args.minutes, device)
    print(json.dumps(asdict(plan)))
    if args.only == "generator":
        retrain_generator(plan, args.out, device, args.minutes, args.warm_start)
        return
    if args.only:
        retrain_classifiers(plan, args.out, args.only.split(","), device, args.minutes)
        return
    summary = run(plan, args.out, device, args.minutes, args.short_run)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
