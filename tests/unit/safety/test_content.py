"""The content inspector: pictures of checks handled side by side are scored together."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from libs.imaging import encode
from libs.model.noop import NoOpModel
from services.safety.content import (
    MAX_SCORED_PICTURES,
    ContentInspector,
    UncheckableContent,
    WaitingCheck,
    first_checks,
)


class ShadeClassifier:
    """Scores a picture by its shade (its first pixel's red / 255); the first call waits
    until the test lets it go, so checks that come meanwhile queue behind it."""

    category = "skull"
    threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.first_call_started = threading.Event()
        self.release_first_call = threading.Event()

    def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
        if not self.calls:
            self.first_call_started.set()
            assert self.release_first_call.wait(10)
        self.calls.append(len(images))
        return [float(image[0, 0, 0]) / 255 for image in images]


def _picture(shade: int) -> str:
    png = encode(np.full((64, 64, 3), shade, np.uint8), "png")
    return base64.b64encode(png).decode("ascii")


async def _started(classifier: ShadeClassifier) -> ContentInspector:
    inspector = ContentInspector(lambda: classifier, lambda _: NoOpModel(), default_model="noop")
    await inspector.start()
    return inspector


async def test_checks_that_come_while_the_classifier_is_busy_are_scored_in_one_call() -> None:
    classifier = ShadeClassifier()
    inspector = await _started(classifier)
    first = asyncio.create_task(inspector.inspect_pictures([_picture(10)]))
    assert await asyncio.to_thread(classifier.first_call_started.wait, 10)
    queued = [
        asyncio.create_task(inspector.inspect_pictures([_picture(250), _picture(20)])),
        asyncio.create_task(inspector.inspect_pictures(["bm90IGEgcG5n"])),  # "not a png"
        asyncio.create_task(inspector.inspect_pictures([_picture(30), _picture(240)])),
    ]
    await asyncio.sleep(0.05)
    classifier.release_first_call.set()
    assert await first == []
    blocked, garbled, last = await asyncio.gather(*queued, return_exceptions=True)
    # One call for the first check, one for the three that waited; the garbled check fails
    # alone, and each check's detections keep its own image order.
    assert classifier.calls == [1, 4]
    assert isinstance(blocked, list) and isinstance(last, list)
    assert [(d.image_index, round(d.score, 3)) for d in blocked] == [(0, round(250 / 255, 3))]
    assert isinstance(garbled, UncheckableContent) and "image 0: not a picture" in str(garbled)
    assert [(d.image_index, round(d.score, 3)) for d in last] == [(1, round(240 / 255, 3))]
    await inspector.stop()


async def test_a_check_that_finds_the_classifier_idle_is_scored_at_once() -> None:
    classifier = ShadeClassifier()
    classifier.release_first_call.set()
    inspector = await _started(classifier)
    for shade in (200, 40):
        detections = await inspector.inspect_pictures([_picture(shade)])
        assert [d.image_index for d in detections] == ([0] if shade > 127 else [])
    assert classifier.calls == [1, 1]


async def test_a_classifier_that_fails_fails_every_check_of_its_call() -> None:
    class Broken(ShadeClassifier):
        def score_batch(self, images: Sequence[np.ndarray]) -> list[float]:
            raise RuntimeError("out of memory")

    inspector = await _started(Broken())
    results = await asyncio.gather(
        inspector.inspect_pictures([_picture(1)]), inspector.inspect_pictures([_picture(2)]), return_exceptions=True
    )
    assert [str(r) for r in results] == ["out of memory", "out of memory"]


async def test_stopping_cancels_the_checks_still_waiting() -> None:
    classifier = ShadeClassifier()
    inspector = await _started(classifier)
    first = asyncio.create_task(inspector.inspect_pictures([_picture(1)]))
    assert await asyncio.to_thread(classifier.first_call_started.wait, 10)
    waiting = asyncio.create_task(inspector.inspect_pictures([_picture(2)]))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(inspector.stop())
    await asyncio.sleep(0.05)
    classifier.release_first_call.set()
    await stopping
    for task in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_call_takes_the_checks_in_order_up_to_its_pictures_and_always_the_first() -> None:
    loop = asyncio.get_running_loop()

    def checks(*sizes: int) -> list[WaitingCheck]:
        return [(["picture"] * size, loop.create_future()) for size in sizes]

    taken, left = first_checks(checks(3, 4, 5), 8)
    assert [len(p) for p, _ in taken] == [3, 4] and [len(p) for p, _ in left] == [5]
    taken, left = first_checks(checks(MAX_SCORED_PICTURES + 1, 1), MAX_SCORED_PICTURES)
    assert [len(p) for p, _ in taken] == [MAX_SCORED_PICTURES + 1] and [len(p) for p, _ in left] == [1]
