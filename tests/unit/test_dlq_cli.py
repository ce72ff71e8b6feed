"""`darkroom dlq`: listing and choosing dead letters (the Kafka round trip is in tests/e2e)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from libs.cli.dlq import Letter, format_letters, original_value, select
from libs.events.schemas import DeadLetter


def _letter(offset: int, service: str, value: str = "{}", encoding: str = "utf-8") -> Letter:
    letter = DeadLetter(
        reason="not valid JSON:\n  unexpected character",
        error_type="DecodeError",
        service=service,
        group=service,
        topic="darkroom.images.commands",
        partition=2,
        offset=40 + offset,
        key="job_1",
        value=value,
        value_encoding=encoding,
    )
    return Letter(offset, datetime(2026, 1, 1, 12, 0, tzinfo=UTC), letter)


def test_the_listing_shows_where_each_letter_came_from_and_why() -> None:
    text = format_letters([_letter(0, "requests"), _letter(1, "storage")])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["offset", "time", "(UTC)"]
    assert lines[1].split()[:6] == ["0", "2026-01-01", "12:00:00", "requests", "darkroom.images.commands/2@40", "job_1"]
    assert lines[1].endswith("not valid JSON: unexpected character")
    assert format_letters([]) == "no dead letters\n"


def test_letters_are_chosen_by_offset_and_service() -> None:
    letters = [_letter(0, "requests"), _letter(1, "storage"), _letter(2, "requests")]
    assert [item.offset for item in select(letters, service="requests")] == [0, 2]
    assert [item.offset for item in select(letters, [2, 1])] == [2, 1]
    assert [item.offset for item in select(letters, [1], service="requests")] == []
    with pytest.raises(KeyError, match="no dead letter at offset 7"):
        select(letters, [7])


def test_the_original_bytes_come_back_unchanged() -> None:
    raw = b"\xff\x00binary"
    assert original_value(_letter(0, "s", base64.b64encode(raw).decode(), "base64").letter) == raw
    assert original_value(_letter(0, "s", '{"a": "é"}').letter) == '{"a": "é"}'.encode()
