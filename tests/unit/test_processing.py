"""The process recorder: each input once in effect, with an outbox, on the in-memory store and bus."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from libs.bus import EventPublisher, TransientError
from libs.bus.memory import InMemoryBroker
from libs.events import Envelope, Event
from libs.processing import Decide, OutboxItem, ProcessRecorder, RevisionTaken
from libs.stores.memory import InMemoryDocumentStore
from libs.stores.ports import Document, StoreUnavailable
from libs.stores.revisions import revision_id
from tests.helpers import count_reads

TOTALS, NOTES = "t.totals", "t.notes"
KEY = "k1"


class Added(Event):
    """A tally's input: add `n`."""

    TYPE: ClassVar[str] = "test.added"

    n: int


class Tally(BaseModel):
    """The caller's state."""

    total: int = 0
    inputs: int = 0


def adding(n: int, *, note: bool = False) -> Callable[[Tally], tuple[Tally, list[OutboxItem]] | None]:
    """The decision of `Added(n)`: a new total, announced on TOTALS (and NOTES); nothing for 0."""

    def decide(tally: Tally) -> tuple[Tally, list[OutboxItem]] | None:
        if n == 0:
            return None
        updated = Tally(total=tally.total + n, inputs=tally.inputs + 1)
        outbox = [OutboxItem.of(TOTALS, Envelope.wrap(Added(n=updated.total), aggregate_id=KEY))]
        if note:
            outbox.append(OutboxItem.of(NOTES, Envelope.wrap(Added(n=n), aggregate_id=KEY), partition=1))
        return updated, outbox

    return decide


class FailingPublisher(EventPublisher):
    """Fails publishing on the topics in `failing`, as a process dying after saving would."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker.producer())
        self.broker = broker
        self.failing: set[str] = set()

    async def publish(self, topic: str, envelope: Envelope, *, key: str | None = None, partition: int | None = None):  # type: ignore[no-untyped-def]
        if topic in self.failing:
            raise ConnectionError("crashed before publishing")
        return await super().publish(topic, envelope, key=key, partition=partition)


def totals(broker: InMemoryBroker, topic: str = TOTALS) -> list[int]:
    return [Envelope.from_bytes(r.value).payload["n"] for r in broker.records(topic)]


def recorder(docs: InMemoryDocumentStore, publisher: EventPublisher) -> ProcessRecorder[Tally]:
    return ProcessRecorder(docs, "tallies", publisher, Tally)


async def test_each_input_is_saved_as_the_next_revision_then_published() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-1", adding(2))
    await tallies.handle(KEY, "in-2", adding(3))
    assert totals(broker) == [2, 5]
    # The caller's fields and the recorder's two, side by side in one document per revision.
    stored = await docs.get("tallies", revision_id(KEY, 2))
    assert stored is not None
    fields = {k: v for k, v in stored.items() if k not in ("_id", "outbox")}
    assert fields == {"total": 5, "inputs": 2, "seen": ["in-1", "in-2"]}
    assert [item["topic"] for item in stored["outbox"]] == [TOTALS]
    assert await recorder(docs, EventPublisher(broker.producer())).load(KEY) == Tally(total=5, inputs=2)


async def test_a_redelivered_input_is_skipped() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-1", adding(2))
    await tallies.handle(KEY, "in-1", adding(2))
    assert totals(broker) == [2]
    assert await docs.get("tallies", revision_id(KEY, 2)) is None, "nothing decided twice"


async def test_an_input_that_changes_nothing_saves_nothing() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-0", adding(0))
    assert await docs.get("tallies", revision_id(KEY, 1)) is None and totals(broker) == []


Crashed = tuple[ProcessRecorder[Tally], InMemoryDocumentStore, FailingPublisher]


async def crashed(failing: str, decide: Decide[Tally]) -> Crashed:
    """A recorder, its store and its publisher (on a fresh broker) after handling "in-1" saved
    its revision and then failed to publish on `failing`; the publisher publishes from now on."""
    docs, publisher = InMemoryDocumentStore(), FailingPublisher(InMemoryBroker())
    tallies = recorder(docs, publisher)
    publisher.failing = {failing}
    with pytest.raises(ConnectionError):
        await tallies.handle(KEY, "in-1", decide)
    publisher.failing = set()
    return tallies, docs, publisher


async def test_a_crash_between_saving_and_publishing_republishes_the_outbox_once() -> None:
    tallies, docs, publisher = await crashed(TOTALS, adding(2))
    broker = publisher.broker
    assert await docs.get("tallies", revision_id(KEY, 1)) is not None and totals(broker) == []
    # The consumer loop retries the input: the saved outbox goes out, nothing is decided again.
    await tallies.handle(KEY, "in-1", adding(2))
    assert totals(broker) == [2]
    await tallies.handle(KEY, "in-1", adding(2))
    assert totals(broker) == [2], "a published outbox is not published again"
    assert await docs.get("tallies", revision_id(KEY, 2)) is None


async def test_a_process_that_died_after_saving_leaves_the_outbox_to_the_next_one() -> None:
    _, docs, dying = await crashed(TOTALS, adding(2))
    # A restarted process gets the next input: first the leftover outbox, then the decision.
    await recorder(docs, EventPublisher(dying.broker.producer())).handle(KEY, "in-2", adding(3))
    assert totals(dying.broker) == [2, 5]


async def test_items_out_before_a_failed_publish_are_not_sent_again() -> None:
    tallies, _, publisher = await crashed(NOTES, adding(2, note=True))
    broker = publisher.broker
    assert totals(broker) == [2] and totals(broker, NOTES) == []
    # The same process retries the input: only the item that did not go out is published.
    await tallies.handle(KEY, "in-1", adding(2, note=True))
    assert totals(broker) == [2] and totals(broker, NOTES) == [2]
    [note] = broker.records(NOTES)
    assert note.partition == 1 and note.key == KEY.encode()


async def test_after_a_restart_the_last_outbox_goes_out_once_more() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2))
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2))
    ids = [Envelope.from_bytes(r.value).event_id for r in broker.records(TOTALS)]
    assert len(ids) == 2 and ids[0] == ids[1], "the same message, republished"
    assert await docs.get("tallies", revision_id(KEY, 2)) is None


async def test_a_concurrent_writers_revision_fails_the_input_and_drops_the_cache() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    here = recorder(docs, EventPublisher(broker.producer()))
    there = recorder(docs, EventPublisher(broker.producer()))
    await here.handle(KEY, "in-1", adding(2))
    # A rebalance hands the key to another process, which writes revision 2.
    await there.handle(KEY, "in-2", adding(3))
    # Here revision 1 is still cached: the next input's insert of revision 2 fails.
    with pytest.raises(RevisionTaken, match="concurrently") as failed:
        await here.handle(KEY, "in-3", adding(4))
    assert isinstance(failed.value, TransientError), "the consumer loop retries it"
    # The cached record was dropped: the retry reads the store and decides on fresh state.
    reads = count_reads(docs)
    await here.handle(KEY, "in-3", adding(4))
    assert reads, "the store was read"
    assert await here.load(KEY) == Tally(total=9, inputs=3)
    assert totals(broker)[-1] == 9


async def test_the_next_input_of_a_key_costs_one_write_and_no_read() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-1", adding(2))
    reads = count_reads(docs)
    inserts: list[str] = []
    original_insert = docs.insert

    async def counting_insert(collection: str, doc_id: str, doc):  # type: ignore[no-untyped-def]
        inserts.append(doc_id)
        return await original_insert(collection, doc_id, doc)

    docs.insert = counting_insert  # type: ignore[method-assign]
    await tallies.handle(KEY, "in-2", adding(3))
    assert (reads, inserts) == ([], [revision_id(KEY, 2)])


def tallying(n: int) -> Callable[[Tally], tuple[Tally, list[OutboxItem]] | None]:
    """A decision that changes the tally and publishes nothing (as a render's checkpoint)."""
    return lambda tally: (Tally(total=tally.total + n, inputs=tally.inputs + 1), [])


async def test_a_deferrable_decision_waits_in_memory_for_the_next_saved_revision() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-1", adding(2))
    await tallies.handle(KEY, "in-2", tallying(10), deferrable=True)
    assert await docs.get("tallies", revision_id(KEY, 2)) is None, "nothing written for it"
    assert await tallies.load(KEY) == Tally(total=12, inputs=2), "decided on in memory"
    await tallies.handle(KEY, "in-2", tallying(10), deferrable=True)
    assert await tallies.load(KEY) == Tally(total=12, inputs=2), "a redelivery is still skipped"
    await tallies.handle(KEY, "in-3", adding(3))
    stored = await docs.get("tallies", revision_id(KEY, 2))
    assert stored is not None
    assert (stored["total"], stored["seen"]) == (15, ["in-1", "in-2", "in-3"]), "carried by the next revision"
    assert totals(broker) == [2, 15]


async def test_a_deferred_decision_is_lost_with_its_process_and_decided_again_on_redelivery() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2))
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-2", tallying(10), deferrable=True)
    restarted = recorder(docs, EventPublisher(broker.producer()))
    assert await restarted.load(KEY) == Tally(total=2, inputs=1), "the store keeps the state before it"
    await restarted.handle(KEY, "in-2", tallying(10), deferrable=True)
    await restarted.handle(KEY, "in-3", adding(3))
    assert await restarted.load(KEY) == Tally(total=15, inputs=3)
    assert totals(broker)[-1] == 15


async def test_a_deferrable_decision_with_messages_is_saved_and_published() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    tallies = recorder(docs, EventPublisher(broker.producer()))
    await tallies.handle(KEY, "in-1", adding(2), creates=True, deferrable=True)
    await tallies.handle(KEY, "in-2", adding(3), deferrable=True)
    assert await docs.get("tallies", revision_id(KEY, 2)) is not None
    assert totals(broker) == [2, 5]


async def test_a_deferred_decision_yields_to_a_concurrent_writers_revision() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    here = recorder(docs, EventPublisher(broker.producer()))
    await here.handle(KEY, "in-1", adding(2))
    await here.handle(KEY, "in-2", tallying(10), deferrable=True)
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-3", adding(5))
    with pytest.raises(RevisionTaken):
        await here.handle(KEY, "in-4", adding(1))
    await here.handle(KEY, "in-4", adding(1))
    assert await here.load(KEY) == Tally(total=8, inputs=3), "decided again on what the store holds"


async def test_an_input_that_creates_its_key_is_decided_without_a_read() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    reads = count_reads(docs)
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2), creates=True)
    assert reads == [] and totals(broker) == [2]


async def test_an_input_that_creates_a_key_recorded_already_is_decided_again_on_the_record() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    await recorder(docs, EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2))
    # Another process assumes the key is new: revision 1 is taken, so it reads and decides again.
    elsewhere = recorder(docs, EventPublisher(broker.producer()))
    await elsewhere.handle(KEY, "in-2", adding(3), creates=True)
    assert totals(broker) == [2, 2, 5], "revision 1's outbox once more (new to this process), then in-2's"
    # Redelivered, the creating input is found handled (the key is cached now: no assumption).
    await elsewhere.handle(KEY, "in-2", adding(3), creates=True)
    assert totals(broker) == [2, 2, 5]
    assert await docs.get("tallies", revision_id(KEY, 3)) is None


async def test_saved_sees_the_new_state_before_its_outbox_goes_out() -> None:
    broker, docs = InMemoryBroker(), InMemoryDocumentStore()
    publisher = FailingPublisher(broker)
    publisher.failing = {TOTALS}
    seen: list[Tally] = []
    with pytest.raises(ConnectionError):
        await recorder(docs, publisher).handle(KEY, "in-1", adding(2), saved=seen.append)
    assert seen == [Tally(total=2, inputs=1)]


class AwayStore(InMemoryDocumentStore):
    """A store that cannot be reached."""

    async def get(self, collection: str, doc_id: str) -> Document | None:
        raise StoreUnavailable("store away")

    async def insert(self, collection: str, doc_id: str, doc: Mapping[str, Any]) -> bool:
        raise StoreUnavailable("store away")


@pytest.mark.parametrize("creates", [False, True], ids=["reading", "writing"])
async def test_a_store_away_is_a_transient_error(creates: bool) -> None:
    broker = InMemoryBroker()
    with pytest.raises(TransientError, match="store away"):
        await recorder(AwayStore(), EventPublisher(broker.producer())).handle(KEY, "in-1", adding(2), creates=creates)


def test_a_state_may_not_use_the_recorders_field_names() -> None:
    class Clashing(BaseModel):
        seen: list[str] = []

    with pytest.raises(ValueError, match="seen"):
        ProcessRecorder(InMemoryDocumentStore(), "c", EventPublisher(InMemoryBroker().producer()), Clashing)
