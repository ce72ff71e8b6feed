"""The attribute classifier: reads a scene description back from an image, to measure adherence.

It is trained on the world's ground truth (renders and their VQ round trips, every split, so it
also knows the shape-colour pairs the generator never saw) and predicts, for each of the nine
position slots, whether an object is there and its shape, colour and size, plus the background
and style. Adherence of a generated image is then: does the reading satisfy every attribute the
prompt stated (`satisfies`)?
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from libs.model.scenes import (
    ANCHORS,
    BACKGROUNDS,
    COLOUR_NAMES,
    INTERNAL_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    SceneObject,
    downsample,
)
from libs.modeltools.detector import target_maps
from libs.modeltools.world import Caption

FILENAME: Final = "attributes.pt"
SLOTS: Final = len(POSITIONS)
SHAPE_CLASSES: Final = len(SHAPES) + 1
"""Per slot: 0 = empty, 1 + i = SHAPES[i]."""


class AttributeNet(nn.Module):
    """(B, 3, 64, 64) images in [-1, 1] -> logits for every slot and for the whole image.

    Objects sit at nine known anchors (plus a little jitter), so the per-slot head reads the
    feature map at each anchor (bilinear sampling of a 16x16 map whose receptive field, 32 px,
    covers a large object) and one head, shared by the nine slots and told which slot it reads,
    classifies it. Sharing gives each head nine times the training signal of per-slot heads.
    """

    anchors: torch.Tensor

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        c = 3 * w
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * w, c, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.SiLU(),
        )
        # Anchor centres in grid_sample's normalised coordinates (pixel centres, 64 px wide).
        coords = [(a + 0.5) / INTERNAL_SIZE * 2 - 1 for a in ANCHORS]
        grid = torch.tensor([[x, y] for y in coords for x in coords], dtype=torch.float32)
        self.register_buffer("anchors", grid.view(1, 1, SLOTS, 2), persistent=False)
        self.slot_emb = nn.Parameter(torch.zeros(SLOTS, c))
        per_slot = SHAPE_CLASSES + len(COLOUR_NAMES) + len(SIZES)
        self.slot_head = nn.Sequential(nn.Linear(c, 2 * c), nn.SiLU(), nn.Linear(2 * c, per_slot))
        self.image_head = nn.Sequential(nn.Linear(2 * c, c), nn.SiLU(), nn.Linear(c, len(BACKGROUNDS) + len(STYLES)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns logits: shape (B, 9, 10), colour (B, 9, 8), size (B, 9, 2), background
        (B, 6), style (B, 4)."""
        h = self.features(x)
        b = h.shape[0]
        grid = self.anchors.to(h.dtype).expand(b, -1, -1, -1)
        at = F.grid_sample(h, grid, mode="bilinear", align_corners=False)  # (B, C, 1, 9)
        slots = self.slot_head(at[:, :, 0].transpose(1, 2) + self.slot_emb)  # (B, 9, per_slot)
        whole = self.image_head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))
        nc = len(COLOUR_NAMES)
        return {
            "shape": slots[..., :SHAPE_CLASSES],
            "colour": slots[..., SHAPE_CLASSES : SHAPE_CLASSES + nc],
            "size": slots[..., SHAPE_CLASSES + nc :],
            "background": whole[:, : len(BACKGROUNDS)],
            "style": whole[:, len(BACKGROUNDS) :],
        }


def scene_targets(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Training targets for a batch of scenes (colour and size are -100, ignored, at empty
    slots)."""
    b = len(scenes)
    shape = torch.zeros(b, SLOTS, dtype=torch.long)
    colour = torch.full((b, SLOTS), -100, dtype=torch.long)
    size = torch.full((b, SLOTS), -100, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            slot = POSITIONS.index(obj.position)
            shape[i, slot] = 1 + SHAPES.index(obj.shape)
            colour[i, slot] = COLOUR_NAMES.index(obj.colour)
            size[i, slot] = SIZES.index(obj.size)
    return {
        "shape": shape,
        "colour": colour,
        "size": size,
        "background": torch.tensor([BACKGROUNDS.index(s.background) for s in scenes]),
        "style": torch.tensor([STYLES.index(s.style) for s in scenes]),
    }


def attribute_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the cross-entropies of every head."""
    total = F.cross_entropy(logits["shape"].reshape(-1, SHAPE_CLASSES), targets["shape"].reshape(-1))
    for key in ("colour", "size"):
        lg = logits[key]
        total = total + F.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets[key].reshape(-1))
    for key in ("background", "style"):
        total = total + 0.5 * F.cross_entropy(logits[key], targets[key])
    return total


@dataclass(frozen=True)
class ReadObject:
    """One object as read from an image."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Reading:
    """What the classifier reads in an image."""

    objects: tuple[ReadObject, ...]
    background: str
    style: str
    forbidden_probability: float
    """Probability mass on the forbidden shape, maximised over slots."""

    def as_scene(self) -> Scene:
        """The reading as a scene description (no jitter, texture seed 0)."""
        objects = tuple(SceneObject(o.shape, o.colour, o.size, o.position) for o in self.objects)
        return Scene(objects, self.background, self.style, 0)


class AttributeClassifier:
    """The numpy-facing reader."""

    def __init__(self, net: AttributeNet, device: str = "cpu") -> None:
        """Wraps a trained network."""
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @torch.no_grad()
    def read(self, images: Sequence[np.ndarray]) -> list[Reading]:
        """Reads (H, W, 3) uint8 images of any size."""
        if not images:
            return []
        batch = np.stack([downsample(np.asarray(im, np.uint8)[..., :3], INTERNAL_SIZE) for im in images])
        x = torch.tensor(batch, device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out = {k: v.float().cpu() for k, v in self.net(x).items()}
        shape_p = out["shape"].softmax(-1)
        skull = 1 + SHAPES.index("skull")
        readings: list[Reading] = []
        for i in range(len(images)):
            objects = []
            for slot in range(SLOTS):
                cls = int(shape_p[i, slot].argmax())
                if cls == 0:
                    continue
                objects.append(
                    ReadObject(
                        SHAPES[cls - 1],
                        COLOUR_NAMES[int(out["colour"][i, slot].argmax())],
                        SIZES[int(out["size"][i, slot].argmax())],
                        POSITIONS[slot],
                    )
                )
            readings.append(
                Reading(
                    tuple(objects),
                    BACKGROUNDS[int(out["background"][i].argmax())],
                    STYLES[int(out["style"][i].argmax())],
                    float(shape_p[i, :, skull].max()),
                )
            )
        return readings

    def save(self, path: str | Path) -> None:
        """Writes the weights (float16) to `path`."""
        torch.save({k: v.half().cpu() for k, v in self.net.state_dict().items()}, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> AttributeClassifier:
        """Loads weights written by `save` (a file, or a directory containing attributes.pt)."""
        p = Path(path)
        if p.is_dir():
            p = p / FILENAME
        net = AttributeNet()
        state = torch.load(p, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(net, device)


ATTRIBUTES: Final = ("shape", "colour", "size", "position")


def satisfies(reading: Reading, caption: Caption, attributes: Sequence[str] = ATTRIBUTES) -> bool:
    """Whether an image's reading satisfies what a caption states.

    Every object claim must be matched by a distinct object read in the image that agrees on
    each of `attributes` the caption states (size and position only when stated). Extra objects
    in the image are not penalised. Background and style are checked when stated and when
    "background"/"style" are in `attributes`.

    Args:
        reading: The classifier's reading.
        caption: The caption with its claims.
        attributes: Which attributes to check.

    Returns:
        True when every checked claim holds.
    """
    if "background" in attributes and caption.background not in (None, reading.background):
        return False
    if "style" in attributes and caption.style not in (None, reading.style):
        return False
    claims = caption.objects
    found = reading.objects
    if len(found) < len(claims):
        return False

    def agrees(claim_index: int, obj: ReadObject) -> bool:
        claim = claims[claim_index]
        for attr in attributes:
            if attr in ("background", "style"):
                continue
            want = getattr(claim, attr)
            if want is not None and want != getattr(obj, attr):
                return False
        return True

    return any(
        all(agrees(i, found[j]) for i, j in enumerate(perm))
        for perm in itertools.permutations(range(len(found)), len(claims))
    )


def scene_read_correctly(reading: Reading, scene: Scene) -> bool:
    """Whether a reading matches the scene exactly: the same objects (shape, colour, size,
    position), background and style."""
    truth = sorted((o.position, o.shape, o.colour, o.size) for o in scene.objects)
    got = sorted((o.position, o.shape, o.colour, o.size) for o in reading.objects)
    return truth == got and reading.background == scene.background and reading.style == scene.style


def forbidden_seen(
    reader: AttributeClassifier, images: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Whether the reader sees the forbidden object in each image (some slot's most likely
    shape), its probability (Reading.forbidden_probability), and the skull detector's per-cell
    targets (detector.target_maps) placed where it sees it: labels for images with no
    ground truth, such as the generator's.

    Returns:
        (bool (N,), float (N,), float32 (N, 16, 16)).
    """
    readings = reader.read(list(images))
    scenes = [r.as_scene() for r in readings]
    seen = np.array([s.has_forbidden for s in scenes], dtype=bool)
    return seen, np.array([r.forbidden_probability for r in readings]), target_maps(scenes)
