"""A small CNN that detects the forbidden object (the world's "skull") in images and previews.

Why a learned detector and not a prompt filter: the content check must react to what is drawn,
so a render that drifts into the forbidden class is blocked mid-render even when its prompt was
allowed. It is trained (libs.modeltools.train) on real renders, on their VQ round trips and on partial previews (grids
with cells masked and filled from the prior), so it reads what the decoder actually shows.

The safety service uses `load_safety_classifier()` and `SafetyClassifier.score` / `is_forbidden`;
inputs are plain uint8 arrays of any size (resized to 64x64 here).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from libs.model.interface import DEFAULT_WEIGHTS_DIR
from libs.model.scenes import FORBIDDEN_SHAPE, INTERNAL_SIZE, downsample

FILENAME: Final = "safety.pt"
CATEGORY: Final = FORBIDDEN_SHAPE
"""The category a block reports."""


class SafetyNet(nn.Module):
    """(B, 3, 64, 64) images in [-1, 1] -> (B,) logits of "contains the forbidden object".

    A dense detector: a fully convolutional 16x16 map of "a skull is centred here" logits
    (receptive field 30 px, enough for a large skull), and the image logit is the map's
    maximum. Training supervises the map cell by cell from the scene description
    (`libs.modeltools.detector.target_maps`), which learns far faster than an image-level label
    alone, and stays position-agnostic for generated images. Version 2 (`norm=True`, what
    ships) adds batch normalisation after every convolution and a strided first layer (5x
    cheaper per step): version 1 stayed at the base rate in its 600 training steps (recall 14%
    on VQ round trips).
    """

    def __init__(self, width: int = 32, norm: bool = True) -> None:
        super().__init__()
        self.width = width
        self.norm = norm
        w = width
        c = 3 * w

        def block(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=not norm)
            return [conv, nn.BatchNorm2d(cout), nn.SiLU()] if norm else [conv, nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, w, 4, 2),
            *block(w, 2 * w, 3, 1),
            *block(2 * w, c, 4, 2),
            *block(c, c, 3, 1),
            *block(c, c, 3, 1),
            nn.Conv2d(c, 1, 1),
        )

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> (B, 16, 16) per-cell logits."""
        out: torch.Tensor = self.features(x)[:, 0]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dense(x).flatten(1).amax(dim=1)
        return out


def folded_for_inference(net: SafetyNet) -> SafetyNet:
    """A copy of an eval-mode net with each batch normalisation folded into the convolution
    before it: the same scores (to float rounding, ~1e-6) for 11-22% less CPU per picture
    (make bench-throughput, docs/operations.md). The net itself is left as it is (what
    `SafetyClassifier.save` writes)."""
    folded = copy.deepcopy(net).eval()
    layers: list[nn.Module] = []
    for layer in folded.features:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        else:
            layers.append(layer)
    folded.features = nn.Sequential(*layers)
    return folded


class SafetyClassifier:
    """The numpy-facing detector used by the safety service.

    It scores with `folded_for_inference(net)`, made when it is built: a net changed after
    that (training goes on) needs a new SafetyClassifier.
    """

    def __init__(
        self, net: SafetyNet, threshold: float = 0.5, device: str = "cpu", metadata: dict[str, Any] | None = None
    ) -> None:
        """Wraps a trained network.

        Args:
            net: The network.
            threshold: Probability at or above which an image is forbidden (the shipped weights
                store the threshold chosen on held-out scenes; load_safety_classifier uses it).
            device: Torch device string.
            metadata: Free-form facts about the weights (training command, held-out figures),
                saved with them.
        """
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self._scoring = folded_for_inference(self.net)
        self.threshold = threshold
        self.category = CATEGORY
        self.metadata: dict[str, Any] = dict(metadata or {})

    @torch.no_grad()
    def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        """Probabilities that each (H, W, 3) uint8 image shows the forbidden object."""
        if not images:
            return []
        batch = np.stack([downsample(np.asarray(img, np.uint8)[..., :3], INTERNAL_SIZE) for img in images])
        x = torch.tensor(batch, device=self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return [float(p) for p in torch.sigmoid(self._scoring(x)).cpu()]

    def score(self, image: np.ndarray) -> float:
        """Probability that an (H, W, 3) uint8 image shows the forbidden object."""
        return self.score_batch([image])[0]

    def is_forbidden(self, image: np.ndarray) -> bool:
        """Whether the image should be blocked (score >= threshold)."""
        return self.score(image) >= self.threshold

    def save(self, path: str | Path) -> None:
        """Writes the weights (float16) and threshold to `path` (a file)."""
        state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in self.net.state_dict().items()}
        blob = {"state_dict": state, "threshold": self.threshold, "width": self.net.width, "norm": self.net.norm}
        torch.save({**blob, "metadata": self.metadata}, path)


def load_safety_classifier(path: str | Path | None = None, device: str = "cpu") -> SafetyClassifier:
    """Loads the detector.

    Args:
        path: A file written by SafetyClassifier.save, or a directory containing safety.pt;
            None for the built-in weights.
        device: Torch device string.

    Raises:
        FileNotFoundError: no weights there.
    """
    p = Path(path) if path is not None else DEFAULT_WEIGHTS_DIR
    if p.is_dir():
        p = p / FILENAME
    blob = torch.load(p, map_location="cpu", weights_only=True)
    net = SafetyNet(int(blob["width"]), bool(blob.get("norm", False)))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    return SafetyClassifier(net, float(blob["threshold"]), device, dict(blob.get("metadata", {})))
