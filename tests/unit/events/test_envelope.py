"""The envelope: construction rules and the JSON wire form."""

from __future__ import annotations

import orjson
import pytest

from libs.events import DecodeError, Envelope, new_ulid
from libs.events.ids import ulid_time_ms
from libs.events.schemas import ServiceHeartbeat


def _beat() -> ServiceHeartbeat:
    return ServiceHeartbeat(service="auth", instance_id="auth-1", started_at="2026-01-01T00:00:00Z")


def test_ulids_sort_by_time_and_are_unique() -> None:
    early, late = new_ulid(now_ms=1_000), new_ulid(now_ms=2_000)
    assert early < late
    assert ulid_time_ms(late) == 2_000
    ids = [new_ulid() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids), "ids made in one process are strictly increasing"


def test_wrap_starts_a_correlation_and_carries_it_to_caused_events() -> None:
    first = Envelope.wrap(_beat(), aggregate_id="job-1", sequence=1, tier="pro")
    assert first.correlation_id == first.event_id
    assert first.causation_id is None
    second = Envelope.wrap(_beat(), aggregate_id="job-1", sequence=2, caused_by=first)
    assert second.correlation_id == first.event_id
    assert second.causation_id == first.event_id
    assert second.tier == "pro"
    assert second.event_id > first.event_id


def test_the_wire_form_is_plain_json_and_round_trips() -> None:
    envelope = Envelope.wrap(_beat(), aggregate_id="auth-1", sequence=7)
    wire = orjson.loads(envelope.to_bytes())
    assert wire["type"] == "system.service_heartbeat"
    assert wire["version"] == 1
    assert wire["payload"]["service"] == "auth"
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "x"}', "aggregate_id"),
        (b'{"type": "x", "aggregate_id": "a", "surprise": 1}', "surprise"),
    ],
)
def test_bad_bytes_raise_decode_error_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        Envelope.from_bytes(raw)


def test_envelopes_are_immutable() -> None:
    envelope = Envelope.wrap(_beat(), aggregate_id="a")
    with pytest.raises(ValueError, match="frozen"):
        envelope.sequence = 3  # type: ignore[misc]
