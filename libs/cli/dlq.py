"""`darkroom dlq list|replay`: the messages consumers could not handle, and putting them back.

A consumer that cannot decode or handle a message parks it on the dead-letter topic with
the reason and where it came from (`libs.bus.consumer`), and goes on. `list` reads that
topic from the beginning; `replay` sends chosen letters' original bytes, key and headers
back to their original topic and partition, unchanged, once the cause is fixed (a
deployed fix, a restored dependency). Consumers are idempotent, so replaying a letter
twice, or one whose message was handled after all, changes nothing; a message that
fails again is parked again with its new reason.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs import topics
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import KafkaLogReader, read_to_end
from libs.bus.ports import Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import DeadLetter

CLIENT_ID = "darkroom-cli"
READ_TIMEOUT_S = 30.0
MAX_REASON = 160


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it sits on the dead-letter topic."""

    offset: int
    time: datetime
    letter: DeadLetter


async def read_letters(bootstrap: str, timeout_s: float = READ_TIMEOUT_S) -> list[Letter]:
    """Every dead letter on the topic, oldest first.

    Raises:
        TimeoutError: The end of the topic was not reached in time (broker unreachable).
    """
    letters: list[Letter] = []

    async def keep(record: Record) -> None:
        try:
            envelope = Envelope.from_bytes(record.value)
            letter = REGISTRY.decode_as(envelope, DeadLetter)
        except DecodeError:
            return  # not a letter (written by hand?): nothing to list or replay
        letters.append(Letter(record.offset, envelope.time, letter))

    reader = KafkaLogReader(bootstrap, [topics.DEAD_LETTERS], client_id=CLIENT_ID)
    await reader.start()
    try:
        await read_to_end(reader, keep, timeout_s=timeout_s)
    finally:
        await reader.stop()
    return sorted(letters, key=lambda item: item.offset)


def original_value(letter: DeadLetter) -> bytes:
    """The parked message's bytes as the consumer received them."""
    if letter.value_encoding == "base64":
        return base64.b64decode(letter.value)
    return letter.value.encode("utf-8")


def format_letters(letters: Sequence[Letter]) -> str:
    """One line per letter: its offset, when, which service, where from, its key (a job id), why."""
    if not letters:
        return "no dead letters\n"
    lines = [f"{'offset':>6}  {'time (UTC)':19}  {'service':9}  {'from':34}  {'key':32}  {'error':16}  reason"]
    for item in letters:
        letter = item.letter
        origin = f"{letter.topic}/{letter.partition}@{letter.offset}"
        reason = " ".join(letter.reason.split())
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
        when = item.time.strftime("%Y-%m-%d %H:%M:%S")
        key = letter.key or "-"
        lines.append(
            f"{item.offset:>6}  {when}  {letter.service:9}  {origin:34}  {key:32}  {letter.error_type:16}  {reason}"
        )
    return "\n".join(lines) + "\n"


def select(letters: Sequence[Letter], offsets: Sequence[int] = (), service: str | None = None) -> list[Letter]:
    """The letters a replay names: by dead-letter offset, and/or by the service that parked them.

    Raises:
        KeyError: An offset names no letter.
    """
    by_offset = {item.offset: item for item in letters}
    missing = [o for o in offsets if o not in by_offset]
    if missing:
        raise KeyError(f"no dead letter at offset {', '.join(map(str, missing))}")
    chosen = [by_offset[o] for o in offsets] if offsets else list(letters)
    return [item for item in chosen if service is None or item.letter.service == service]


async def replay(bootstrap: str, letters: Sequence[Letter]) -> int:
    """Sends each letter's original message back to its topic and partition; returns how many."""
    producer = KafkaProducer(bootstrap, client_id=CLIENT_ID)
    await producer.start()
    try:
        for item in letters:
            letter = item.letter
            await producer.send(
                letter.topic,
                original_value(letter),
                key=letter.key.encode("utf-8") if letter.key is not None else None,
                headers=[(name, value.encode("utf-8")) for name, value in letter.headers.items()],
                partition=letter.partition,
            )
    finally:
        await producer.stop()
    return len(letters)
