"""A client library's repeated log lines are written once per window, with a count."""

from __future__ import annotations

import logging

from libs.telemetry import RepeatedLines


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


FETCH_FAILED = "Failed fetch messages from %s: %s"


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_line_repeated_within_the_window_is_written_once_then_with_the_count_held() -> None:
    clock = FakeClock()
    lines = RepeatedLines(prefixes=("aiokafka",), window_s=10.0, clock=clock)
    first = record("aiokafka.consumer.fetcher", FETCH_FAILED, 1, "NodeNotReadyError")
    assert lines.filter(first)
    held = 0
    for _ in range(30):  # every 100 ms for 3 s, as while a broker is down
        clock.now += 0.1
        held += not lines.filter(record("aiokafka.consumer.fetcher", FETCH_FAILED, 1, "NodeNotReadyError"))
    assert held == 30

    clock.now += 10.0
    after = record("aiokafka.consumer.fetcher", FETCH_FAILED, 1, "NodeNotReadyError")
    assert lines.filter(after)
    held_note = "(30 more like this in the 10 s before)"
    assert after.getMessage() == f"Failed fetch messages from 1: NodeNotReadyError {held_note}"

    clock.now += 10.0
    quiet = record("aiokafka.consumer.fetcher", FETCH_FAILED, 1, "NodeNotReadyError")
    assert lines.filter(quiet)
    assert quiet.getMessage() == "Failed fetch messages from 1: NodeNotReadyError"


def test_different_lines_levels_and_other_loggers_are_not_held() -> None:
    clock = FakeClock()
    lines = RepeatedLines(prefixes=("aiokafka",), window_s=10.0, clock=clock)
    assert lines.filter(record("aiokafka", "Unable connect to node with id 1"))
    assert lines.filter(record("aiokafka", "Unable connect to node with id 2"))
    assert lines.filter(record("aiokafka", "Unable connect to node with id 1", level=logging.WARNING))
    assert lines.filter(record("aiokafka.producer.sender", "Unable connect to node with id 1"))
    for _ in range(3):
        # The services' own lines, and loggers that only share the prefix's letters, always pass.
        assert lines.filter(record("requests", "job accepted"))
        assert lines.filter(record("aiokafkaesque", "Unable connect to node with id 1"))
    assert not lines.filter(record("aiokafka", "Unable connect to node with id 1"))


def test_configured_logging_holds_back_repeated_kafka_client_lines(capsys: object) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        from libs.telemetry import configure_logging

        configure_logging("info", "requests")
        log = logging.getLogger("aiokafka.consumer.fetcher")
        for _ in range(5):
            log.error(FETCH_FAILED, 1, "KafkaConnectionError")
        for handler in root.handlers:
            handler.flush()
    finally:
        root.handlers, level = saved
        root.setLevel(level)
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert err.count("Failed fetch messages from 1") == 1
