"""Looking at what a render drew: pictures scored by the content classifier.

The decoder draws the pictures itself, at the model's native size, on the passes whose
content is checked (`RenderProgressed.check_images`), so scoring them is all the service
does. Checks that carry only token grids (a `CheckContent` command, or progress from a
decoder that sends no pictures) are drawn here with the image model, loaded on first use.
The models and the classifier are torch code, so every call runs in a worker thread and
the event loop keeps serving prompt checks and heartbeats meanwhile. The classifier is
loaded once, at start, so missing weights stop the service at once instead of failing
its first content check.

The pictures of checks handled side by side are scored together: a check that comes while
the classifier is busy waits for it and joins the next call, with every check that came
meanwhile (up to MAX_SCORED_PICTURES). A check that finds it idle is scored at once, so
none waits longer than the call before it. The decoder publishes a pass boundary's
progress for its whole batch at once, so checks come in bursts; on a 2-core machine the
classifier costs 2.3 ms of CPU per picture scored alone and 1.6-1.8 in calls of two or more.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import numpy as np

from libs.imaging import decode
from libs.model.interface import ImageModel, unpack_tokens
from services.safety.domain import Detection

PREVIEW_SIZE: Final = 64
"""Side of the previews scored: the model's native resolution, which the classifier reads."""

MAX_SCORED_PICTURES: Final = 32
"""The most pictures one classifier call scores (checks are never split across calls)."""

WaitingCheck = tuple[list[str], "asyncio.Future[list[Detection]]"]
"""A check's pictures and the future its caller awaits."""


class ContentClassifier(Protocol):
    """What the service needs of libs.model.safety_classifier.SafetyClassifier."""

    category: str
    """The class it detects (libs.model.safety_classifier.CATEGORY)."""

    threshold: float
    """The score at or above which it reports the class (calibrated with its weights)."""

    def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        """Probabilities that each (H, W, 3) uint8 image shows the class."""
        ...


class UncheckableContent(ValueError):
    """The check's input cannot be looked at (bad grids, unknown model): retrying will not help."""


class ContentInspector:
    """Renders previews of token grids and reports what the classifier detects in them."""

    def __init__(
        self,
        load_classifier: Callable[[], ContentClassifier],
        load_model: Callable[[str], ImageModel],
        *,
        default_model: str,
        threshold: float | None = None,
    ) -> None:
        """Wires the inspector (nothing is loaded until `start`).

        Args:
            load_classifier: Loads the content classifier (called once).
            load_model: Loads an image model by name (called once per name).
            default_model: The model of checks that name none (settings.model).
            threshold: Score at or above which the class counts as detected; None uses the
                classifier's own threshold, calibrated with its weights.
        """
        self._load_classifier = load_classifier
        self._load_model = load_model
        self._default_model = default_model
        self._threshold = threshold
        self._classifier: ContentClassifier | None = None
        self._models: dict[str, ImageModel] = {}
        self._lock = threading.Lock()
        self._waiting: list[WaitingCheck] = []
        self._scoring: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the classifier (in a worker thread)."""
        await asyncio.to_thread(self._classifier_now)

    def _classifier_now(self) -> ContentClassifier:
        with self._lock:
            if self._classifier is None:
                self._classifier = self._load_classifier()
            return self._classifier

    @property
    def detects(self) -> str:
        """The class the classifier detects.

        Raises:
            RuntimeError: Called before `start`.
        """
        if self._classifier is None:
            raise RuntimeError("the content classifier is not loaded yet")
        return self._classifier.category

    def _model(self, name: str) -> ImageModel:
        name = name or self._default_model
        with self._lock:
            model = self._models.get(name)
            if model is None:
                try:
                    model = self._load_model(name)
                except (FileNotFoundError, ModuleNotFoundError, TypeError) as exc:
                    raise UncheckableContent(f"model {name!r} is not available here: {exc}") from exc
                self._models[name] = model
            return model

    async def inspect(self, model_name: str, packed_grids: Sequence[str]) -> list[Detection]:
        """What the classifier detects in the previews of these grids.

        Args:
            model_name: The model that drew them ("" for the default).
            packed_grids: Per image, base64 of the packed token grid.

        Returns:
            One detection per image whose score reaches the threshold, in image order.

        Raises:
            UncheckableContent: A grid is not a valid packed grid, or the model cannot be loaded.
        """
        return await asyncio.to_thread(self._inspect, model_name, list(packed_grids))

    async def inspect_pictures(self, pictures: Sequence[str]) -> list[Detection]:
        """What the classifier detects in pictures the decoder drew.

        Args:
            pictures: Per image, base64 of an image file (PNG) at the model's native size.

        Returns:
            One detection per image whose score reaches the threshold, in image order.

        Raises:
            UncheckableContent: A picture is not an image file.
        """
        detected: asyncio.Future[list[Detection]] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(pictures), detected))
        if self._scoring is None:
            self._scoring = asyncio.create_task(self._score_waiting())
        return await detected

    async def _score_waiting(self) -> None:
        """Scores the waiting checks, call after call, until none waits."""
        taken: list[WaitingCheck] = []
        try:
            while self._waiting:
                taken, self._waiting = first_checks(self._waiting, MAX_SCORED_PICTURES)
                outcomes: list[list[Detection] | Exception]
                try:
                    outcomes = await asyncio.to_thread(self._inspect_checks, [pictures for pictures, _ in taken])
                except Exception as exc:  # noqa: BLE001 - the checks' callers get it, as from a call of their own
                    outcomes = [exc] * len(taken)
                for (_, detected), outcome in zip(taken, outcomes, strict=True):
                    if detected.done():
                        continue  # its caller stopped waiting (the service is stopping)
                    if isinstance(outcome, Exception):
                        detected.set_exception(outcome)
                    else:
                        detected.set_result(outcome)
        except asyncio.CancelledError:
            for _, detected in taken + self._waiting:
                detected.cancel()
            self._waiting = []
            raise
        finally:
            # Nothing awaits between the last look at the queue and here: a check that comes
            # later finds no task and starts one.
            self._scoring = None

    async def stop(self) -> None:
        """Stop scoring: the checks still waiting are cancelled (their records are handled
        again after a restart, as the consumer did not commit them)."""
        if self._scoring is not None:
            self._scoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scoring

    def _inspect_checks(self, checks: list[list[str]]) -> list[list[Detection] | Exception]:
        """Each check's detections (or why it cannot be looked at), from one classifier call."""
        decoded: list[list[np.ndarray] | UncheckableContent] = []
        for pictures in checks:
            try:
                decoded.append(_decoded(pictures))
            except UncheckableContent as exc:
                decoded.append(exc)
        images = [image for each in decoded if not isinstance(each, UncheckableContent) for image in each]
        scores = iter(self._scores(images))
        return [
            each if isinstance(each, UncheckableContent) else self._detected([next(scores) for _ in each])
            for each in decoded
        ]

    def _scores(self, images: list[np.ndarray]) -> list[float]:
        return self._classifier_now().score_batch(images) if images else []

    def _detected(self, scores: list[float]) -> list[Detection]:
        classifier = self._classifier_now()
        threshold = self._threshold if self._threshold is not None else classifier.threshold
        return [
            Detection(image_index=i, content_class=classifier.category, score=score)
            for i, score in enumerate(scores)
            if score >= threshold
        ]

    def _inspect(self, model_name: str, packed_grids: list[str]) -> list[Detection]:
        model = self._model(model_name)
        previews: list[np.ndarray] = []
        for index, packed in enumerate(packed_grids):
            try:
                grid = unpack_tokens(base64.b64decode(packed, validate=True), model.grid_size)
            except (binascii.Error, ValueError) as exc:
                raise UncheckableContent(f"image {index}: not a packed token grid ({exc})") from exc
            if grid.max(initial=0) > model.mask_token:
                raise UncheckableContent(f"image {index}: token values beyond the model's codebook")
            previews.append(model.preview(grid, PREVIEW_SIZE))
        return self._detected(self._scores(previews))


def _decoded(pictures: list[str]) -> list[np.ndarray]:
    """A check's pictures as pixels.

    Raises:
        UncheckableContent: One of them is not an image file.
    """
    images = []
    for index, picture in enumerate(pictures):
        try:
            images.append(decode(base64.b64decode(picture, validate=True)))
        except (binascii.Error, ValueError, OSError) as exc:
            raise UncheckableContent(f"image {index}: not a picture ({exc})") from exc
    return images


def first_checks(waiting: list[WaitingCheck], most: int) -> tuple[list[WaitingCheck], list[WaitingCheck]]:
    """The checks of the next classifier call, in the order they came, and those left: as
    many as fit in `most` pictures, and always the first, however many it has."""
    count, pictures = 0, 0
    for each, _ in waiting:
        if count and pictures + len(each) > most:
            break
        count, pictures = count + 1, pictures + len(each)
    return waiting[:count], waiting[count:]
