"""Safety validation of a model version before it may be promoted.

The content check during rendering is the layer a new model version can break: its
pictures may look nothing like what the content detector learned. So before promotion a
version renders a held-out set of labelled prompts (libs.modeltools.eval: prompts of scenes
that hold the forbidden object, and prompts of scenes that do not), its picture after
every pass is scored by the detector exactly as the safety service scores the decoder's
check images (64x64, the detector's threshold), and

- recall is the share of the forbidden prompts' renders that the check would block (a
  pass fires), the false-positive rate the share of the harmless prompts' renders it
  would block.

The label is the prompt's, not what the version drew: a version that does not draw the
forbidden object when asked leaves nothing for the detector to find and scores a low
recall. That is the conservative reading (the check is not shown to work on it); the
operator can still choose lower bounds for such a version, and the bounds are stored
with the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from libs.model.interface import ImageModel, RenderState

CHECK_SIZE = 64
"""Side of the pictures the detector scores (as the decoder sends them to the safety service)."""

ScoreBatch = Callable[[Sequence[np.ndarray]], Sequence[float]]
"""The detector's scoring: pictures -> the probability that each holds forbidden content."""


@dataclass(frozen=True)
class ValidationResult:
    """The detector on one version's renders of the held-out set."""

    recall: float
    false_positive_rate: float
    forbidden_renders: int
    harmless_renders: int
    passes: int

    def passed(self, min_recall: float, max_false_positive_rate: float) -> bool:
        """Whether the version may be promoted under these bounds."""
        return self.recall >= min_recall and self.false_positive_rate <= max_false_positive_rate


def held_out_prompts(n: int) -> tuple[list[str], list[str]]:
    """n held-out prompts whose scene holds the forbidden object, and n whose scene does not."""
    from libs.modeltools.eval import prompts, skull_prompts

    forbidden = [p.caption.text for p in skull_prompts(n)]
    harmless = [p.caption.text for p in prompts("heldout", 1, 4 * n, offset=7000) if not p.scene.has_forbidden][:n]
    return forbidden, harmless


def blocked_renders(
    model: ImageModel, score: ScoreBatch, threshold: float, texts: Sequence[str], passes: int, batch: int = 16
) -> list[bool]:
    """Per prompt (seed = its index), whether the detector fires on its picture after any pass."""
    out: list[bool] = []
    for at in range(0, len(texts), batch):
        chunk = texts[at : at + batch]
        states: list[RenderState] = [model.start(text, at + i, passes) for i, text in enumerate(chunk)]
        fired = np.zeros(len(chunk), dtype=bool)
        while not all(s.done for s in states):
            states = model.step(states)
            pictures = _pictures(model, [s.tokens for s in states])
            fired |= np.array(score(pictures)) >= threshold
        out.extend(bool(f) for f in fired)
    return out


def validate(model: ImageModel, score: ScoreBatch, threshold: float, n: int = 50, passes: int = 8) -> ValidationResult:
    """Renders n forbidden and n harmless held-out prompts with `passes` passes and measures
    the detector on them (see the module docstring)."""
    if n < 1:
        raise ValueError("the held-out set needs at least one prompt of each kind")
    forbidden, harmless = held_out_prompts(n)
    caught = blocked_renders(model, score, threshold, forbidden, passes)
    false = blocked_renders(model, score, threshold, harmless, passes)
    return ValidationResult(
        recall=sum(caught) / len(caught),
        false_positive_rate=sum(false) / len(false),
        forbidden_renders=len(caught),
        harmless_renders=len(false),
        passes=passes,
    )


def _pictures(model: ImageModel, grids: list[np.ndarray]) -> list[np.ndarray]:
    batch = getattr(model, "preview_batch", None)
    if batch is not None:
        return list(batch(grids, CHECK_SIZE))
    return [model.preview(g, CHECK_SIZE) for g in grids]
