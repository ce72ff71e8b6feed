"""The operator's policy commands, on the in-memory broker (the Kafka wrappers are thin)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libs import topics
from libs.bus import EventPublisher
from libs.bus.logreader import PortLogReader
from libs.bus.memory import InMemoryBroker
from libs.cli.safety_policy import format_policy, publish_policy, read_policy, set_policy
from libs.events import REGISTRY, Envelope, new_ulid
from libs.events.schemas import SafetyPolicy
from libs.runtime.service import run_service
from libs.safety_policy import InvalidPolicy
from libs.settings import SafetySettings
from services.safety.bootstrap import build
from tests.helpers import eventually
from tests.unit.safety.test_service import FakeClassifier

POLICY = """
categories:
  - name: no-cats
    message: No cats.
    terms: [cat, cats]
"""


def _reader(broker: InMemoryBroker) -> PortLogReader:
    return PortLogReader(broker.consumer(f"cli-{new_ulid()}", [topics.SAFETY_POLICY]))


async def test_show_is_none_on_an_empty_topic_and_set_starts_at_version_2() -> None:
    broker = InMemoryBroker({topics.SAFETY_POLICY: 1})
    assert await read_policy(_reader(broker)) is None
    assert "no safety policy" in format_policy(None)

    published = await publish_policy(EventPublisher(broker.producer()), _reader(broker), POLICY, "ops@host")
    assert (published.version, published.updated_by) == (2, "ops@host")
    [record] = broker.records(topics.SAFETY_POLICY)
    assert record.key == b"safety-policy:v2"
    assert REGISTRY.decode_as(Envelope.from_bytes(record.value), SafetyPolicy) == published

    again = await publish_policy(EventPublisher(broker.producer()), _reader(broker), POLICY, "ops@host")
    assert again.version == 3
    shown = await read_policy(_reader(broker))
    assert shown == again
    assert format_policy(shown).startswith("# safety policy v3, set by ops@host\n")


async def test_a_set_policy_applies_live_in_a_running_service() -> None:
    broker = InMemoryBroker({topics.SAFETY_POLICY: 1})
    service = build(
        SafetySettings(model="noop", heartbeat_interval_s=60),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        classifier=FakeClassifier(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service.runtime, stop))

    async def loaded() -> bool:
        return service.policy.loaded

    await eventually(loaded, 10, "the default policy")
    # The default (v1) is on the topic now, so the operator's policy is v2.
    published = await publish_policy(EventPublisher(broker.producer()), _reader(broker), POLICY, "ops")
    assert published.version == 2
    applied = await service.policy.wait_for_version(2)
    assert [c.name for c in applied.categories] == ["no-cats"]
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_show_output_is_accepted_back_by_set() -> None:
    broker = InMemoryBroker({topics.SAFETY_POLICY: 1})
    first = await publish_policy(EventPublisher(broker.producer()), _reader(broker), POLICY, "a")
    second = await publish_policy(EventPublisher(broker.producer()), _reader(broker), format_policy(first), "b")
    assert second.categories == first.categories and second.version == first.version + 1


async def test_an_invalid_file_publishes_nothing() -> None:
    broker = InMemoryBroker({topics.SAFETY_POLICY: 1})
    with pytest.raises(InvalidPolicy, match="pattern"):
        await publish_policy(
            EventPublisher(broker.producer()), _reader(broker), "categories: [{name: x, patterns: ['(']}]", "ops"
        )
    assert broker.records(topics.SAFETY_POLICY) == []


def test_set_refuses_an_invalid_file_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("categories: [{name: x, termz: [y]}]")
    # Nothing listens on port 1: reaching Kafka would time out rather than fail like this.
    with pytest.raises(InvalidPolicy, match="termz"):
        set_policy("127.0.0.1:1", bad, "ops")
