"""The topic declaration file and the names the code uses agree."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest

from infra.topics import load_specs
from libs import topics
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import RenderJob, SafetyVerdict
from libs.lanes import DEFAULT_MODEL, POOLS, lane_for, lane_name, lanes, model_topic, models, pool_group


def test_code_and_declaration_name_the_same_topics() -> None:
    # The render topics of models beside the default one are named from the `models:` section.
    model_topics = {model_topic(model, pool) for model in models()[1:] for pool in POOLS}
    assert {s.name for s in load_specs()} == set(topics.ALL_TOPICS) | model_topics


def test_each_model_has_render_topics_laid_out_like_the_defaults() -> None:
    specs = {s.name: s for s in load_specs()}
    assert models()[0] == DEFAULT_MODEL and "amused-256" in models()
    for model in models()[1:]:
        for pool, default in POOLS.items():
            own = specs[model_topic(model, pool)]
            assert own.lanes == specs[default].lanes and own.partitions == specs[default].partitions
            assert all(lanes()[lane_name(model, tier)].topic == own.name for tier in own.lanes)
    assert pool_group(model_topic("amused-256", "consumer")) == "decoder-amused-256-consumer"
    assert pool_group(topics.RENDER_CONSUMER) == "decoder-consumer"
    assert lane_for("free", "amused-256").name == "amused-256/free" and lane_for("free").name == "free"


def test_a_model_name_unfit_for_a_topic_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    body = "topics:\n  darkroom.render.consumer:\n    partitions: 1\n  darkroom.render.api:\n    partitions: 1\n"
    bad.write_text("models:\n  Big Model: {}\n" + body)
    with pytest.raises(ValueError, match="lowercase"):
        load_specs(bad)


def test_lanes_give_each_tier_its_own_partitions() -> None:
    specs = {s.name: s for s in load_specs()}
    consumer = specs[topics.RENDER_CONSUMER]
    assert set(consumer.lanes) == {"pro", "plus", "free"}
    covered = sorted(p for parts in consumer.lanes.values() for p in parts)
    assert covered == list(range(consumer.partitions))
    assert set(specs[topics.RENDER_API].lanes) == {"api"}


@pytest.mark.parametrize("name", [topics.POLICIES, topics.REVOCATIONS, topics.ACCOUNT_TIERS, topics.SAFETY_POLICY])
def test_latest_value_topics_are_compacted(name: str) -> None:
    spec = next(s for s in load_specs() if s.name == name)
    assert spec.config["cleanup.policy"] == "compact"


def test_messages_stay_small_except_where_bytes_must_travel() -> None:
    for spec in load_specs():
        limit = int(spec.config["max.message.bytes"])
        if spec.name in (topics.STORAGE_BLOBS, topics.STORAGE_BLOBS_API, topics.DEAD_LETTERS):
            assert limit <= 10 * 1024 * 1024
        else:
            assert limit <= 1024 * 1024, spec.name


def test_overlapping_lanes_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "topics.yaml"
    bad.write_text("topics:\n  t:\n    partitions: 2\n    lanes:\n      a: [0, 1]\n      b: [1]\n")
    with pytest.raises(ValueError, match="two lanes"):
        load_specs(bad)


def test_every_job_path_topic_has_an_api_copy_declared_alike() -> None:
    specs = {s.name: s for s in load_specs()}
    copies = {topic: topic.api for topic in topics.ALL_TOPICS if topic.api is not None}
    assert len(copies) == 7
    for topic, copy in copies.items():
        assert copy in specs and copy != topic
        assert copy.types == topic.types and copy.api is None
        assert specs[copy].config["retention.ms"] == specs[topic].config["retention.ms"]
        assert specs[copy].config["max.message.bytes"] == specs[topic].config["max.message.bytes"]
    assert topics.route(topics.SAFETY_CHECKS, "api") == topics.SAFETY_CHECKS_API
    assert topics.route(topics.SAFETY_CHECKS, "free") == topics.SAFETY_CHECKS
    assert topics.route(topics.HEARTBEATS, "api") == topics.HEARTBEATS


def test_partitions_per_lane_widens_render_topics_in_place() -> None:
    specs = {s.name: s for s in load_specs(per_lane=8)}
    consumer = specs[topics.RENDER_CONSUMER]
    assert consumer.partitions == 24
    # Copy 1 of the declared layout sits 12 above it: a lane keeps the partitions it had.
    assert consumer.lanes == {
        "pro": [0, 1, 2, 3, 12, 13, 14, 15],
        "plus": [4, 5, 6, 7, 16, 17, 18, 19],
        "free": [8, 9, 10, 11, 20, 21, 22, 23],
    }
    assert specs[topics.RENDER_API].partitions == 8 and specs[topics.RENDER_API].lanes == {"api": list(range(8))}
    assert specs[model_topic("amused-256", "consumer")].lanes == consumer.lanes
    assert specs[topics.REQUEST_EVENTS].partitions == 6, "only render topics have lanes to widen"
    assert {s.name: s.partitions for s in load_specs(per_lane=4)} == {s.name: s.partitions for s in load_specs()}


def test_partitions_per_lane_must_be_a_multiple_of_the_declared_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        load_specs(per_lane=6)
    with pytest.raises(ValueError, match="multiple of 4"):
        load_specs(per_lane=2)
    monkeypatch.setenv("DARKROOM_PARTITIONS_PER_LANE", "eight")
    with pytest.raises(ValueError, match="whole number"):
        load_specs()
    monkeypatch.setenv("DARKROOM_PARTITIONS_PER_LANE", "12")
    assert {s.name: s.partitions for s in load_specs()}[topics.RENDER_CONSUMER] == 36


def test_a_topic_is_its_name_wherever_a_name_goes() -> None:
    assert isinstance(topics.IMAGE_COMMANDS, str) and topics.IMAGE_COMMANDS == "darkroom.images.commands"
    assert {"darkroom.images.commands": 1}[topics.IMAGE_COMMANDS] == 1
    assert f"{topics.IMAGE_COMMANDS} publish" == "darkroom.images.commands publish"
    assert topics.declared("darkroom.images.commands") is topics.IMAGE_COMMANDS
    assert topics.declared(topics.IMAGE_COMMANDS_API) is topics.IMAGE_COMMANDS_API
    assert topics.declared("test.scratch") is None
    copied = deepcopy(topics.REQUEST_EVENTS)
    assert copied == topics.REQUEST_EVENTS and copied.types == topics.REQUEST_EVENTS.types
    assert copied.api == topics.REQUEST_EVENTS_API


def test_every_event_travels_on_a_topic_and_every_topic_carries_registered_events() -> None:
    carried = {event_type for topic in topics.ALL_TOPICS for event_type in topic.types}
    assert carried == set(REGISTRY.types())
    assert all(topic.types for topic in topics.ALL_TOPICS)
    assert topics.POLICIES.types == topics.POLICY_HISTORY.types
    assert model_topic("amused-256", "consumer").types == topics.RENDER_CONSUMER.types == (RenderJob,)
    assert topics.with_api_copies([topics.SAFETY_CHECKS, topics.HEARTBEATS]) == [
        topics.SAFETY_CHECKS,
        topics.HEARTBEATS,
        topics.SAFETY_CHECKS_API,
    ]


async def test_publishing_an_event_its_topic_does_not_carry_fails_loudly() -> None:
    broker = InMemoryBroker()
    publisher = EventPublisher(broker.producer())
    verdict = SafetyVerdict(job_id="job_1", stage="prompt", allowed=True, policy_version=1)
    envelope = Envelope.wrap(verdict, aggregate_id="job_1")
    with pytest.raises(topics.UndeclaredEvent, match=r"'safety.verdict' is not an event of 'darkroom.safety.checks'"):
        await publisher.publish(topics.SAFETY_CHECKS, envelope)
    # A name read back as a plain string (a saved outbox) is checked alike, and the api copy too.
    with pytest.raises(topics.UndeclaredEvent):
        await publisher.publish("darkroom.safety.checks", envelope)
    with pytest.raises(topics.UndeclaredEvent):
        await publisher.publish(topics.SAFETY_CHECKS_API, envelope)
    with pytest.raises(topics.UndeclaredEvent):
        await publisher.publish(model_topic("amused-256", "api"), envelope)
    assert broker.records(topics.SAFETY_CHECKS) == [] and broker.records(topics.SAFETY_CHECKS_API) == []
    await publisher.publish(topics.SAFETY_VERDICTS, envelope)
    await publisher.publish("test.scratch", envelope)  # a topic the code does not declare carries anything
    assert len(broker.records(topics.SAFETY_VERDICTS)) == len(broker.records("test.scratch")) == 1
