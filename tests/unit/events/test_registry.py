"""The registry: decoding payloads and upcasting old versions.

A local registry holds a toy event at version 3 whose history has two breaking
changes, so the tests read version-1 and version-2 messages back.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from libs.events import REGISTRY, DecodeError, Envelope, Event, EventRegistry


def _make_registry() -> tuple[EventRegistry, type[Event]]:
    registry = EventRegistry()

    @registry.register
    class JobQueued(Event):
        TYPE: ClassVar[str] = "test.job_queued"
        VERSION: ClassVar[int] = 3

        prompt: str
        size: str
        quality: str = "auto"

    # v1 had "text" instead of "prompt".
    @registry.upcaster("test.job_queued", 1)
    def rename_text(payload: dict[str, Any]) -> dict[str, Any]:
        data = dict(payload)
        data["prompt"] = data.pop("text")
        return data

    # v2 had width and height instead of "size".
    @registry.upcaster("test.job_queued", 2)
    def join_size(payload: dict[str, Any]) -> dict[str, Any]:
        data = dict(payload)
        data["size"] = f"{data.pop('width')}x{data.pop('height')}"
        return data

    return registry, JobQueued


def _old(version: int, payload: dict[str, Any]) -> Envelope:
    return Envelope(type="test.job_queued", version=version, aggregate_id="job-1", payload=payload)


def test_a_version_1_message_is_upcast_to_the_current_model() -> None:
    registry, job_queued = _make_registry()
    event = registry.decode(_old(1, {"text": "a cat", "width": 256, "height": 256}))
    assert isinstance(event, job_queued)
    assert event.model_dump() == {"prompt": "a cat", "size": "256x256", "quality": "auto"}


def test_a_version_2_message_runs_only_the_later_upcasters() -> None:
    registry, _ = _make_registry()
    event = registry.decode(_old(2, {"prompt": "a dog", "width": 512, "height": 512, "quality": "high"}))
    assert event.model_dump() == {"prompt": "a dog", "size": "512x512", "quality": "high"}


def test_a_current_message_decodes_without_upcasting() -> None:
    registry, _ = _make_registry()
    event = registry.decode(_old(3, {"prompt": "x", "size": "256x256"}))
    assert event.model_dump()["size"] == "256x256"


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (Envelope(type="test.unknown", aggregate_id="a"), "unknown event type"),
        (_old(4, {"prompt": "x", "size": "1x1"}), "newer than supported"),
        (_old(3, {"prompt": "x"}), "invalid test.job_queued payload"),
    ],
)
def test_undecodable_payloads_raise_decode_error(envelope: Envelope, reason: str) -> None:
    registry, _ = _make_registry()
    with pytest.raises(DecodeError, match=reason):
        registry.decode(envelope)


def test_a_missing_upcaster_is_an_error_not_a_silent_pass() -> None:
    registry = EventRegistry()

    @registry.register
    class Thing(Event):
        TYPE: ClassVar[str] = "test.thing"
        VERSION: ClassVar[int] = 2

    with pytest.raises(DecodeError, match="no upcaster"):
        registry.decode(Envelope(type="test.thing", version=1, aggregate_id="a"))


def test_every_registered_event_has_a_stable_dotted_type_name() -> None:
    names = [t.TYPE for t in REGISTRY.types()]
    assert names, "the schemas package registers its events on import"
    assert all("." in name and name == name.lower() for name in names)
    assert len(names) == len(set(names))
