"""The decoder's model calls: loading, passes and pixels, always off the event loop.

Why one dedicated worker thread instead of `asyncio.to_thread`: the event loop that waits
for a pass also runs heartbeats, the abort subscription and Kafka's own tasks, so model work
must never run on it; and the model is used by exactly one thread, because a torch model is
not promised to be thread-safe and one device runs one batch at a time anyway. Queuing
calls on a single thread makes that ordering explicit: the batch engine's passes and a
new tweak's image encoding never overlap. On a CPU, a call of a model that allows it
(`thread_safe_calls`) is cut in slices that helper threads step beside the model thread, one
per core (libs.model.split); the call still starts and ends on the model thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from libs.events.schemas import BASE_VERSION, EditSource
from libs.imaging import decode, encode
from libs.model.interface import ImageModel, RenderState, cells_for_grid, unpack_tokens
from libs.model.registry import load_model
from libs.model.split import SplitCalls, limit_torch_threads, split_workers

T = TypeVar("T")

WHOLE = SplitCalls(1)
"""A call run whole, on the calling thread."""

CHECK_SIZE = 64
"""Side of the pictures the safety service scores: the built-in model's native size, which
its content classifier was trained on."""


@dataclass(frozen=True)
class Drawing:
    """Token grids to render to pixels, and how to encode them. Drawings given together
    that hold the same `grids` list are decoded once (`ModelRunner.draw`).

    Attributes:
        grids: Token grids, possibly with masked cells (previews fill those from a prior).
        size: Side of the images in pixels.
        output_format: "png", "jpeg" or "webp".
        compression: 0-100, as in the API.
        version: The model version whose VQ decoder draws them.
    """

    grids: list[np.ndarray]
    size: int
    output_format: str
    compression: int = 100
    version: str = BASE_VERSION


def _draw(model: ImageModel, grids: list[np.ndarray], size: int, split: SplitCalls = WHOLE) -> list[np.ndarray]:
    batch = getattr(model, "preview_batch", None)  # the built-in model draws a batch at once
    if batch is not None:
        return split(lambda part: batch(part, size), grids)
    return [model.preview(g, size) for g in grids]


def _draw_sizes(
    model: ImageModel, grids: list[np.ndarray], sizes: tuple[int, ...], split: SplitCalls = WHOLE
) -> list[list[np.ndarray]]:
    """Per grid, its picture at each of `sizes`: drawn once where the model can resize it
    (`preview_sizes`), else once per size."""
    sized = getattr(model, "preview_sizes", None)
    if sized is not None:
        return split(lambda part: sized(part, sizes), grids)
    per_size = [_draw(model, grids, size, split) for size in sizes]
    return [[pictures[g] for pictures in per_size] for g in range(len(grids))]


def _decodes(drawings: Sequence[Drawing]) -> list[tuple[str, tuple[int, ...], list[list[int]]]]:
    """How a pass's drawings are drawn: per model version and set of sizes, the drawings
    (by index) that share grids. Drawings of the same grids (one list: a last pass's images
    and its content-check pictures) are decoded once, at every size they ask for: one
    decode fewer per render (of three on a 4-pass render of the built-in model)."""
    shared: dict[tuple[str, int], list[int]] = {}
    for i, drawing in enumerate(drawings):
        shared.setdefault((drawing.version, id(drawing.grids)), []).append(i)
    calls: dict[tuple[str, tuple[int, ...]], list[list[int]]] = {}
    for (version, _), same in shared.items():
        sizes = tuple(sorted({drawings[i].size for i in same}))
        calls.setdefault((version, sizes), []).append(same)
    return [(version, sizes, same) for (version, sizes), same in sorted(calls.items())]


def resolve_device(device: str) -> str:
    """The torch device for a `DecoderSettings.device` value.

    Args:
        device: "auto", or an explicit torch device ("cpu", "cuda", "cuda:1"...).

    Returns:
        "cuda" for "auto" when CUDA is available, else "cpu"; explicit devices as given.
    """
    if device != "auto":
        return device
    # Imported here so a decoder configured with an explicit device never pays for torch
    # before its model needs it.
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_loader(name: str, device: str) -> Callable[[], ImageModel]:
    """A function that loads the configured model (called once, in the model thread).

    Args:
        name: `DecoderSettings.model`: "builtin", "noop", a weights directory or "module:factory".
        device: `DecoderSettings.device`, "auto" included.
    """
    return lambda: load_model(name, resolve_device(device))


class ModelRunner:
    """Runs every call into the model on one worker thread.

    The model `load()` loads is the `base` version; other versions of the served model
    (libs.releases) join with `add_version` and are named on every call that renders.

    Args:
        load: Returns the model; runs once, in the worker thread, from `load()`.
        threads: Threads that share one call of a model that can be split
            (`DecoderSettings.model_threads`; 0: one per core on the CPU, see
            libs.model.split.split_workers).
    """

    def __init__(self, load: Callable[[], ImageModel], threads: int = 0) -> None:
        self._load = load
        self._threads = threads
        self._split = WHOLE
        self._model: ImageModel | None = None
        self._versions: dict[str, ImageModel] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decoder-model")
        self._encoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="decoder-encode")

    @property
    def loaded(self) -> bool:
        """Whether the model is ready."""
        return self._model is not None

    @property
    def model(self) -> ImageModel:
        """The loaded model.

        Raises:
            RuntimeError: `load()` has not completed.
        """
        if self._model is None:
            raise RuntimeError("the model is not loaded yet")
        return self._model

    def model_of(self, version: str) -> ImageModel:
        """The model of a version (`base`: the loaded model).

        Raises:
            RuntimeError: The version is not loaded.
        """
        if version == BASE_VERSION:
            return self.model
        model = self._versions.get(version)
        if model is None:
            raise RuntimeError(f"model version {version!r} is not loaded")
        return model

    def has_version(self, version: str) -> bool:
        """Whether a version is ready to render."""
        return version == BASE_VERSION or version in self._versions

    def add_version(self, version: str, model: ImageModel) -> None:
        """Makes a loaded version available to render with."""
        self._versions[version] = model

    async def load(self) -> None:
        """Loads the model (idempotent); torch weights load without blocking the event loop."""
        if self._model is None:
            model = await self._call(self._load)
            workers = split_workers(model, self._threads)
            if workers > 1:
                # On the thread that calls the model: OpenMP and MKL keep their thread count per
                # thread, so limited from the event loop's thread it left the model thread at
                # one intra-op thread per core (three threads on two cores).
                await self._call(limit_torch_threads, workers)
                self._split = SplitCalls(workers, "decoder-slice")
            self._model = model

    @property
    def slice_threads(self) -> int:
        """Threads that step one batch of a model that can be split (1: not split)."""
        return self._split.workers

    def _calls_of(self, model: ImageModel) -> SplitCalls:
        """How calls of `model` run: in the runner's slices when it can be split, else whole."""
        return self._split if split_workers(model) > 1 else WHOLE

    def close(self) -> None:
        """Releases the worker thread; a pass still running finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._encoders.shutdown(wait=False, cancel_futures=True)
        self._split.close()

    def start(
        self, prompt: str, seed: int, n: int, total_passes: int, version: str = BASE_VERSION
    ) -> list[RenderState]:
        """The initial states of a fresh render of n images; image i uses seed + i.

        `ImageModel.start` does no model compute, so this runs inline.

        Raises:
            ValueError: n < 1, or a state the model refuses (total_passes < 1).
        """
        if n < 1:
            raise ValueError(f"a render needs at least one image, got n={n}")
        model = self.model_of(version)
        return [model.start(prompt, seed + i, total_passes) for i in range(n)]

    async def start_tweak(
        self,
        prompt: str,
        seed: int,
        n: int,
        total_passes: int,
        sources: list[EditSource],
        version: str = BASE_VERSION,
    ) -> list[RenderState]:
        """The initial states of a tweak: image i starts from sources[i % len(sources)].

        A source brings its token grid (a darkroom image) or a PNG that the model's VQ
        encoder turns into one (in the worker thread: that is model compute). The cells
        the source marks are masked again and drawn anew with the prompt; image i uses
        seed + i.

        Raises:
            ValueError: n < 1, no sources, or a source without a grid or image.
        """
        if n < 1 or not sources:
            raise ValueError(f"a tweak needs at least one image and one source, got n={n}, {len(sources)} sources")
        model = self.model_of(version)

        def grids() -> list[tuple[np.ndarray, np.ndarray]]:
            starts = []
            for source in sources:
                remask = cells_for_grid(base64.b64decode(source.remask), model.grid_size)
                if source.tokens is not None:
                    tokens = unpack_tokens(base64.b64decode(source.tokens), model.grid_size)
                elif source.image_png is not None:
                    tokens = model.encode_image(decode(base64.b64decode(source.image_png)))
                else:
                    raise ValueError("an edit source needs a token grid or an image")
                if bool((tokens >= model.codebook_size).any()):
                    raise ValueError("the source grid has tokens outside this model's codebook")
                starts.append((tokens, remask))
            return starts

        starts = await self._call(grids)
        return [
            model.start(prompt, seed + i, total_passes, init_tokens=tokens, remask=remask)
            for i, (tokens, remask) in ((i, starts[i % len(starts)]) for i in range(n))
        ]

    async def step(self, states: list[RenderState], version: str = BASE_VERSION) -> list[RenderState]:
        """Runs one pass for every state, as one batch.

        Args:
            states: The render's current states (a resumed render passes checkpoint states).
            version: The model version all of them render with.

        Returns:
            The states after the pass, in order.
        """
        model = self.model_of(version)
        return await self._call(self._calls_of(model), model.step, states)

    async def draw(self, drawings: Sequence[Drawing]) -> list[list[bytes] | Exception]:
        """Renders token grids to pixels and encodes them: previews, final images and the
        pictures the safety service scores, for a whole batch at once.

        The grids of one size and version go through that version's model together (its
        `preview_batch` when it has one), on the model thread; the encoding is spread over
        the encoder threads (Pillow releases the GIL), off the model thread.

        Returns:
            Per drawing, its encoded images in order, or the exception that stopped it (a
            drawing that fails does not fail the others).
        """

        def pixels() -> list[list[np.ndarray] | Exception]:
            out: list[list[np.ndarray] | Exception] = [[] for _ in drawings]
            for version, sizes, shared in _decodes(drawings):
                members = [i for same in shared for i in same]
                try:
                    model = self.model_of(version)
                    grids = [g for same in shared for g in drawings[same[0]].grids]
                    pictures = _draw_sizes(model, grids, sizes, self._calls_of(model))
                except Exception:  # noqa: BLE001 - find the drawing at fault: draw each alone
                    for i in members:
                        try:
                            out[i] = _draw(self.model_of(version), drawings[i].grids, drawings[i].size)
                        except Exception as exc:  # noqa: BLE001
                            out[i] = exc
                    continue
                at = 0
                for same in shared:
                    count = len(drawings[same[0]].grids)
                    for i in same:
                        k = sizes.index(drawings[i].size)
                        out[i] = [per_grid[k] for per_grid in pictures[at : at + count]]
                    at += count
            return out

        drawn = await self._call(pixels)
        loop = asyncio.get_running_loop()

        async def encoded(drawing: Drawing, images: list[np.ndarray] | Exception) -> list[bytes] | Exception:
            if isinstance(images, Exception):
                return images
            try:
                return list(
                    await asyncio.gather(
                        *(
                            loop.run_in_executor(
                                self._encoders, encode, image, drawing.output_format, drawing.compression, drawing.size
                            )
                            for image in images
                        )
                    )
                )
            except Exception as exc:  # noqa: BLE001
                return exc

        return list(await asyncio.gather(*(encoded(d, images) for d, images in zip(drawings, drawn, strict=True))))

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        # Like asyncio.to_thread: the caller's context (the consumer span) goes with the call.
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args))
