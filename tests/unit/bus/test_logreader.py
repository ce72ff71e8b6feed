"""Log readers of quiet topics alone fetch with a long wait; any other reader with its own."""

from __future__ import annotations

from libs import topics
from libs.bus.kafka import FETCH_MAX_WAIT_MS, QUIET_FETCH_MAX_WAIT_MS
from libs.bus.logreader import KafkaLogReader


def _wait(reader: KafkaLogReader) -> object:
    return reader._options["fetch_max_wait_ms"]  # what the consumer is built with at start


def test_a_reader_of_quiet_topics_alone_waits_long_and_any_other_as_it_is_told() -> None:
    access = [topics.POLICIES, topics.REVOCATIONS, topics.ACCOUNT_TIERS]
    assert _wait(KafkaLogReader("127.0.0.1:1", access, client_id="t", fetch_max_wait_ms=250)) == (
        QUIET_FETCH_MAX_WAIT_MS
    )
    assert _wait(KafkaLogReader("127.0.0.1:1", [topics.SAFETY_POLICY], client_id="t")) == QUIET_FETCH_MAX_WAIT_MS
    # One busy topic among them: it can fall behind, so it keeps the wait it was given.
    usage = [topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS]
    assert _wait(KafkaLogReader("127.0.0.1:1", usage, client_id="t", fetch_max_wait_ms=250)) == 250
    assert _wait(KafkaLogReader("127.0.0.1:1", [*usage, topics.USAGE], client_id="t")) == FETCH_MAX_WAIT_MS
