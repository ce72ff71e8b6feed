"""Training the forbidden-object detector (libs.model.safety_classifier): its targets and loss.

The safety service loads only the network and its weights; what training needs besides
(per-cell targets from the scene description, the loss) lives here, with the other tools.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from libs.model.safety_classifier import SafetyNet
from libs.model.scenes import FORBIDDEN_SHAPE, Scene
from libs.modeltools.world import object_cells


def target_maps(scenes: Sequence[Scene], grid: int = 16) -> torch.Tensor:
    """Per-cell training targets: 1 in the cells within 0.7 object radii of a skull's centre.

    Returns:
        (len(scenes), grid, grid) float32.
    """
    cells = object_cells(scenes, grid, lambda radius, cell: max(radius * 0.7, cell * 0.75), FORBIDDEN_SHAPE)
    return torch.from_numpy(cells)


def detector_loss(
    net: SafetyNet,
    x: torch.Tensor,
    maps: torch.Tensor,
    cell_weight: torch.Tensor | None = None,
    image_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training loss: per-cell BCE (positives up-weighted, they are ~1% of cells) plus BCE of the
    image-level maximum against "any skull".

    Args:
        net: The detector.
        x: (B, 3, 64, 64) images in [-1, 1].
        maps: (B, 16, 16) per-cell targets (`target_maps`).
        cell_weight: (B, 16, 16) weights of the cell terms (0 ignores a cell: a skull cell that
            a partial preview has not committed yet); None for all ones.
        image_weight: (B,) weights of the image terms (0 for a preview that shows only part of
            its skull, whose label is ambiguous); None for all ones.

    Returns:
        (loss, image-level logits).
    """
    dense = net.dense(x).float()
    image = dense.flatten(1).amax(dim=1)
    labels = (maps.flatten(1).amax(dim=1) > 0).float()
    pos_weight = torch.tensor(20.0, device=x.device)
    cw = torch.ones_like(maps) if cell_weight is None else cell_weight
    cell_terms = F.binary_cross_entropy_with_logits(dense, maps, pos_weight=pos_weight, reduction="none") * cw
    cell_loss = cell_terms.sum() / cw.sum().clamp_min(1.0)
    iw = torch.ones_like(labels) if image_weight is None else image_weight
    image_terms = F.binary_cross_entropy_with_logits(image, labels, reduction="none") * iw
    image_loss = image_terms.sum() / iw.sum().clamp_min(1.0)
    return cell_loss + image_loss, image
