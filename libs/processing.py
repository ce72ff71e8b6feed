"""Handled once, with an outbox: a process manager's state saved and its messages published.

Why: a handler that saves state and then publishes can crash between the two, and the
consumer loop delivers an input again after a crash or a rebalance. `ProcessRecorder`
makes each input count once in effect (like eventsourcing's process recorder, which
records an aggregate's new state, the tracking of the input and the notifications in
one transaction), on a document store that offers no transactions but an insert that
fails on a taken id (libs.stores.revisions):

1. Load the key's record: the caller's state, the ids of the inputs already handled and
   an outbox of messages decided but maybe not yet published; the latest revision of an
   append-only chain.
2. Publish any leftover outbox (a crash or a failed publish interrupted the last handling).
3. Skip an input whose id was already handled.
4. Decide (the caller's function: new state and outbox, or nothing), then save the new
   state, the input id and the new outbox as the next revision, by insert: a concurrent
   writer that took that revision makes the write fail with `RevisionTaken`, a
   `TransientError`, so the consumer loop retries the input on fresh state.
5. Publish the outbox (in order within a topic, topics side by side), and remember in
   memory which revision's outbox is out.

The latest record of recently handled keys is kept in memory, so an input usually costs
one write and no read. A cached record can only be stale if another process wrote the key
since (after a rebalance); then the insert of the next revision fails, the cached record
is dropped and the retry reads what the store holds.

An input whose effect a later input repeats (a render's checkpoint, which the next pass
replaces) may be handled `deferrable`: when its decision has no outbox, the new state and
its input id stay in memory only, and go to the store with the key's next saved revision.
A crash of this process before then loses that state (the store keeps the one before),
and a redelivery decides the input again; the caller chooses which inputs may be lost so.

The outbox stays in the saved record (emptying it would cost a second write per input);
the next decision's save replaces it. After a restart the memory is empty, so a key's last
outbox is published once more: consumers are idempotent by event id (and an aggregate's
events by sequence), so a message delivered twice changes nothing.

A stored revision is the caller's state model dumped as JSON, with two more fields,
`seen` (input ids) and `outbox` (`OutboxItem`s), under the id `<key>:<revision>`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from libs.bus import EventPublisher, TransientError
from libs.events import Envelope
from libs.recent import RecentMap
from libs.stores.ports import DocumentStore, StoreUnavailable
from libs.stores.revisions import RevisionLog

PUBLISHED_MEMORY = 100_000
RECORD_MEMORY = 10_000
BOOKKEEPING = frozenset({"seen", "outbox"})
"""The stored fields the recorder owns beside the caller's state."""

S = TypeVar("S", bound=BaseModel)


class OutboxItem(BaseModel):
    """A message decided and saved, to be published."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int | None = None
    envelope: dict[str, Any]

    @classmethod
    def of(cls, topic: str, envelope: Envelope, partition: int | None = None) -> OutboxItem:
        """The item that publishes `envelope` on `topic` (and `partition`, when given)."""
        return cls(topic=topic, partition=partition, envelope=envelope.model_dump(mode="json"))


@dataclass(frozen=True)
class ProcessRecord(Generic[S]):
    """One revision of a key: the caller's state and the recorder's bookkeeping."""

    state: S
    seen: list[str]
    outbox: list[OutboxItem]
    rev: int


Decide = Callable[[S], tuple[S, list[OutboxItem]] | None]
"""The caller's decision on the current state: the new state and its outbox, or None
when the input changes nothing (nothing is saved, the input is not marked handled)."""


class RevisionTaken(TransientError):
    """Another writer took the key's next revision: the input is decided again on fresh state."""


class ProcessRecorder(Generic[S]):
    """Handles inputs once per key: load, leftover outbox, seen check, decide, save, publish.

    Args:
        documents: The store of the revisions (a `GroupedInserts` gives group commit).
        collection: The collection the revisions live in.
        publisher: Publishes the outbox, keyed by the record's key.
        state_type: The caller's state, a model whose every field has a default (the
            state of a key never recorded) and none named `seen` or `outbox`.
    """

    def __init__(
        self, documents: DocumentStore, collection: str, publisher: EventPublisher, state_type: type[S]
    ) -> None:
        clash = BOOKKEEPING & set(state_type.model_fields)
        if clash:
            raise ValueError(f"{state_type.__name__} uses the recorder's field names {sorted(clash)}")
        self._collection = collection
        self._revisions = RevisionLog(documents, collection)
        self._publisher = publisher
        self._state_type = state_type
        self._published: RecentMap[str, int] = RecentMap(PUBLISHED_MEMORY)
        """Key -> revision whose outbox this process has published."""
        self._partly_sent: dict[tuple[str, int], set[int]] = {}
        """(key, revision) -> indexes of its outbox items published so far, while it is being flushed."""
        self._recent: RecentMap[str, ProcessRecord[S]] = RecentMap(RECORD_MEMORY)
        """Key -> the latest record this process wrote or read."""

    async def handle(
        self,
        key: str,
        input_id: str,
        decide: Decide[S],
        *,
        creates: bool = False,
        deferrable: bool = False,
        saved: Callable[[S], None] | None = None,
    ) -> None:
        """Handles one input of `key` once in effect.

        Args:
            key: The aggregate's id (also the Kafka key of its outbox).
            input_id: The input's event id, recorded so a redelivery is skipped.
            decide: The decision on the current state (it may run twice: see `creates`).
            creates: The input normally creates the key's record: it is decided on an empty
                state without reading the store (unless this process holds the key's record).
                Where the record exists after all, writing revision 1 fails and the input is
                decided again on the record read from the store.
            deferrable: A decision with an empty outbox stays in memory until the key's next
                saved revision carries it (see the module's docstring); one with messages
                is saved as any other.
            saved: Called with the new state once it is saved (or kept, when deferred),
                before its outbox goes out.

        Raises:
            RevisionTaken: Another writer saved the key since this process read it; the
                cached record is dropped, so a retry decides on what the store holds.
            TransientError: The store is away.

        What publishing raises goes through as it is; the saved outbox stays, so a retry
        publishes what did not go out and decides nothing again.
        """
        assume_new = creates and self._recent.get(key) is None
        while True:
            record = self._empty() if assume_new else await self._load(key)
            if record.outbox and self._published.get(key) != record.rev:
                await self._flush(key, record)
            if input_id in record.seen:
                return
            decision = decide(record.state)
            if decision is None:
                return
            state, outbox = decision
            if deferrable and not outbox and not assume_new:
                # Kept under the stored revision's number: the next save writes the one after.
                kept = ProcessRecord(state, [*record.seen, input_id], [], record.rev)
                self._recent.put(key, kept)
                if saved is not None:
                    saved(kept.state)
                return
            updated = ProcessRecord(state, [*record.seen, input_id], outbox, record.rev + 1)
            try:
                await self._save(key, updated)
            except RevisionTaken:
                if not assume_new:
                    raise
                assume_new = False
                continue
            break
        if saved is not None:
            saved(updated.state)
        await self._flush(key, updated)

    async def load(self, key: str) -> S:
        """The key's latest state (from memory when this process wrote or read it last).

        Raises:
            TransientError: The store is away.
        """
        return (await self._load(key)).state

    def _empty(self) -> ProcessRecord[S]:
        return ProcessRecord(self._state_type(), [], [], 0)

    async def _load(self, key: str) -> ProcessRecord[S]:
        cached = self._recent.get(key)
        if cached is not None:
            return cached
        try:
            rev, doc = await self._revisions.latest(key)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        record = self._empty() if doc is None else self._from_doc(doc, rev)
        self._recent.put(key, record)
        return record

    def _from_doc(self, doc: dict[str, Any], rev: int) -> ProcessRecord[S]:
        state = self._state_type.model_validate({k: v for k, v in doc.items() if k not in BOOKKEEPING})
        outbox = [OutboxItem.model_validate(item) for item in doc.get("outbox", [])]
        return ProcessRecord(state, list(doc.get("seen", [])), outbox, rev)

    async def _save(self, key: str, record: ProcessRecord[S]) -> None:
        # Revision N+1 is created by insert: a concurrent writer that took it first makes
        # this one fail, and the input is retried on fresh state.
        doc = {
            **record.state.model_dump(mode="json"),
            "seen": record.seen,
            "outbox": [item.model_dump(mode="json") for item in record.outbox],
        }
        try:
            written = await self._revisions.append(key, record.rev, doc)
        except StoreUnavailable as exc:
            raise TransientError(str(exc)) from exc
        if not written:
            self._recent.pop(key)
            raise RevisionTaken(f"{self._collection} {key} changed concurrently; retrying on fresh state")
        self._recent.put(key, record)

    async def _flush(self, key: str, record: ProcessRecord[S]) -> None:
        # In order within a topic (an aggregate's events stay in sequence), topics side by side.
        # Items that went out before a failure are not sent again when the input is retried.
        sent = self._partly_sent.setdefault((key, record.rev), set())
        by_topic: dict[str, list[tuple[int, OutboxItem]]] = {}
        for index, item in enumerate(record.outbox):
            if index not in sent:
                by_topic.setdefault(item.topic, []).append((index, item))

        async def publish_in_order(items: list[tuple[int, OutboxItem]]) -> None:
            for index, item in items:
                envelope = Envelope.model_validate(item.envelope)
                await self._publisher.publish(item.topic, envelope, partition=item.partition, key=key)
                sent.add(index)

        outcomes = await asyncio.gather(
            *(publish_in_order(items) for items in by_topic.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        del self._partly_sent[(key, record.rev)]
        self._published.put(key, record.rev)
