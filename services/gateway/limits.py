"""Policies, revocations and rate limits at the gateway, kept current from Kafka.

Two feeds run in every replica, each a group-less reader that first reads to the end
of its topics (before the app serves) and then follows them (`Feed`):

- the access feed folds the compacted policy, revocation and account-tier topics into
  `AccessState` (libs/access.py), so a change reaches every replica in one fetch (the
  broker answers a held fetch as soon as a record lands) and no request ever waits on a
  database or Kafka;
- the watch feed (`services.gateway.app.watched_topics`, which also hands live events to
  the waiting requests and heartbeats to the monitor, one reader for all, as each reader
  costs the broker its own fetches) folds every replica's admitted generations (the `GenerateImage`
  commands) and job ends (request events), both from one job hold ago, into
  `UsageLedger` (libs/ratelimit.py): the shared token buckets, images per day and jobs
  in flight; the metered usage (services/gateway/metered.py, read by the same feed) adds each account's usage
  earlier in the day, as the metering service counted it. libs/ratelimit.py states
  the error bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs import topics
from libs.access import AccessState
from libs.apikeys import Principal
from libs.bus import EventConsumer, EventPublisher, Handler, Record
from libs.bus.logreader import KafkaLogReader, LogReader, PortLogReader, read_to_end
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import (
    GenerateImage,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobFailed,
    ModelVersionFailed,
)
from libs.events.schemas.policies import QUALITY_ORDER
from libs.ratelimit import UsageLedger
from libs.releases import ModelReleases
from libs.runtime.service import ConsumerFactory
from services.gateway.errors import APIError
from services.gateway.refusals import Refusal

log = logging.getLogger(__name__)

FEATURE_GENERATION = "image_generation"
SCOPE_HEADERS = "darkroom.ratelimit_headers"
"""Where a route leaves an admission's rate-limit headers for `RateLimitHeaders` to add."""
_JOB_COMPLETED = JobCompleted.TYPE
_JOB_ENDS = frozenset({_JOB_COMPLETED, JobBlocked.TYPE, JobFailed.TYPE, JobCancelled.TYPE})

ReaderFactory = Callable[[str, Sequence[str], Mapping[str, int]], LogReader]
"""(name, topics, start time in Unix ms per topic) -> a reader, not started."""


def kafka_readers(bootstrap: str, fetch_max_wait_ms: int) -> ReaderFactory:
    """Readers on Kafka that start at the given times (the beginning for other topics)."""

    def make(name: str, names: Sequence[str], since_ms: Mapping[str, int]) -> LogReader:
        return KafkaLogReader(
            bootstrap,
            names,
            client_id=f"darkroom-gateway-{name}",
            since_ms=since_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )

    return make


def port_readers(consumer_factory: ConsumerFactory) -> ReaderFactory:
    """Readers over any bus (unit tests): each its own group, from the beginning."""

    def make(name: str, names: Sequence[str], since_ms: Mapping[str, int]) -> LogReader:
        return PortLogReader(consumer_factory(f"gateway-{name}-{uuid.uuid4().hex}", names))

    return make


class Feed:
    """A reader that is read to its end at start, then followed (see module docstring)."""

    def __init__(
        self, name: str, reader: LogReader, handler: Handler, publisher: EventPublisher, *, owned: bool = True
    ) -> None:
        """Wires the feed.

        Args:
            name: For logs and spans.
            reader: The reader (not started).
            handler: Called with every envelope, in order.
            publisher: For dead letters.
            owned: Whether the gateway is the consumer of these topics that answers for bad
                records (dead-letters them). A feed that only looks over another service's
                topic (the image commands, read by the requests service) skips them instead,
                so a poison message is dead-lettered once, not once per gateway replica.
        """
        self.name = name
        self._reader = reader
        self._handler = handler
        self._owned = owned
        self._loop = EventConsumer(
            reader,
            handler,
            publisher=publisher,
            dead_letter_topic=topics.DEAD_LETTERS,
            service="gateway",
            group=f"gateway-{name}-reader",
        )
        self.loaded = False

    async def load(self, timeout_s: float = 60.0) -> None:
        """Start the reader and apply every record up to the current end."""
        await self._reader.start()
        await read_to_end(self._reader, self._process, timeout_s=timeout_s)
        self.loaded = True
        log.info("gateway %s feed loaded", self.name)

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply records as they arrive, until `stop` is set."""
        if self._owned:
            await self._loop.run(stop)
            return
        while not stop.is_set():
            for record in await self._reader.getmany(200, 500):
                await self._process(record)

    async def _process(self, record: Record) -> None:
        if self._owned:
            await self._loop.process(record)
            return
        try:
            envelope = Envelope.from_bytes(record.value)
            await self._handler(envelope, record)
        except DecodeError as error:
            # The topic's own consumer dead-letters it; a watcher only looks.
            log.warning(
                "gateway %s feed skips %s@%s/%s: %s", self.name, record.topic, record.partition, record.offset, error
            )

    async def close(self) -> None:
        """Stop the reader."""
        await self._reader.stop()


class AccessHandler:
    """Folds policy, revocation and tier records into an AccessState, and the model
    versions and rollouts on the policy topic into ModelReleases."""

    def __init__(self, state: AccessState, releases: ModelReleases | None = None) -> None:
        self.state = state
        self.releases = releases if releases is not None else ModelReleases()
        self.updated = asyncio.Event()

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        if REGISTRY.get(envelope.type) is None:
            log.warning("ignoring unknown record %s on %s", envelope.type, record.topic)
            return
        event = REGISTRY.decode(envelope)
        if self.releases.apply(event):
            if isinstance(event, ModelVersionFailed):
                log.warning(
                    "model %s version %s failed (%s: %s): rolled back, %s serves its accounts",
                    event.model,
                    event.version,
                    event.stage,
                    event.reason,
                    self.releases.routing(event.model).stable,
                )
            self.updated.set()
        elif self.state.apply(event):
            self.updated.set()


class UsageHandler:
    """Folds admitted generations and job ends into a UsageLedger."""

    def __init__(self, ledger: UsageLedger, access: AccessState, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self._access = access
        self._clock = clock
        self._last_prune = 0.0

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        now = self._clock()
        if envelope.type == GenerateImage.TYPE:
            try:
                command = REGISTRY.decode_as(envelope, GenerateImage)
            except DecodeError:
                return  # the requests service dead-letters it; it admitted nothing
            spec = command.spec
            self.ledger.record_command(
                command.job_id,
                spec.account_id,
                spec.tier,
                self._access.policy(spec.tier),
                spec.n,
                command.created_at.timestamp(),
                now,
            )
        elif envelope.type in _JOB_ENDS:
            completed = envelope.time.timestamp() if envelope.type == _JOB_COMPLETED else None
            self.ledger.record_end(envelope.aggregate_id, now, completed)
        if now - self._last_prune > 60:
            self._last_prune = now
            self.ledger.prune(now)


def usage_since(now: float, job_hold_s: float) -> dict[str, int]:
    """Where the usage feed starts: commands and job ends of one hold ago (both traffics).

    The day's earlier images come from the metered usage (`darkroom.usage`), so a replica's
    start reads at most one hold of traffic, however late in the day it starts."""
    since = int((now - job_hold_s) * 1000)
    return {name: since for name in topics.with_api_copies([topics.IMAGE_COMMANDS, topics.REQUEST_EVENTS])}


@dataclass(frozen=True)
class Admission:
    """A generation request let in."""

    lane: str
    """The lane the tier's jobs go to."""
    headers: dict[str, str]
    """OpenAI's rate-limit headers, for every response to the request (`RateLimitHeaders`)."""


@dataclass
class Limits:
    """The access state, the usage ledger and the clock one gateway decides with."""

    access: AccessState
    ledger: UsageLedger
    clock: Callable[[], float] = time.time
    releases: ModelReleases = field(default_factory=ModelReleases)
    """The models' versions and rollouts (folded from the policy topic with `access`)."""

    def authorize(self, principal: Principal) -> Principal:
        """Refuse a revoked key; apply the account's current tier.

        Raises:
            APIError: 401 for a revoked key.
        """
        if principal.key_id in self.access.revoked:
            raise APIError(401, "This API key has been revoked.", code="invalid_api_key")
        tier = self.access.tier_of(principal.account_id, principal.tier)
        if tier != principal.tier:
            return Principal(principal.account_id, tier, principal.key_id, principal.issued_at)
        return principal

    def admit_generation(
        self,
        principal: Principal,
        job_id: str,
        n: int,
        quality: str,
        lane_open: Callable[[str], Refusal | None] | None = None,
    ) -> Admission | Refusal:
        """Decide a generation request: rollout, tier limits, room in the lane, then the rate limits.

        Args:
            principal: The authorized caller (tier already current).
            job_id: The job the request creates.
            n: Images asked for.
            quality: The resolved quality (low, medium, high).
            lane_open: Takes the job into the tier's lane, or refuses it when the lane takes no
                more jobs; asked before the rate limits, so a refused request spends none of
                the account's allowance.

        Returns:
            The lane and the rate-limit headers of an admitted request; else the refusal: 403
            outside the rollout, 400 over the tier's n or quality, what `lane_open` refuses
            with (503 when the lane is full), 429 over a limit (with the rate-limit headers).
        """
        tier = principal.tier
        if not self.access.has_feature(principal.account_id, tier, FEATURE_GENERATION):
            percent = self.access.rollout_percent(FEATURE_GENERATION, tier)
            return Refusal(
                403,
                f"Image generation is being rolled out gradually and is not yet available to this account "
                f"({percent:g}% of {tier} accounts have it so far). Please try again later.",
                code="feature_not_available",
            )
        policy = self.access.policy(tier)
        if n > policy.max_n:
            message = f"The {tier} tier allows at most {policy.max_n} image(s) per request."
            return Refusal(400, message, code="tier_limit", param="n")
        if QUALITY_ORDER.get(quality, 0) > QUALITY_ORDER[policy.max_quality]:
            message = f"The {tier} tier allows quality up to '{policy.max_quality}'."
            return Refusal(400, message, code="tier_limit", param="quality")
        if lane_open is not None and (full := lane_open(policy.lane)) is not None:
            return full
        decision = self.ledger.admit(job_id, principal.account_id, tier, policy, n, self.clock())
        headers = decision.headers()
        if not decision.allowed:
            return Refusal(429, decision.message, code=decision.code, headers=headers)
        return Admission(policy.lane, headers)


class RateLimitHeaders:
    """Pure ASGI middleware: adds the headers a route left in the scope to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: dict[str, str] = scope.get(SCOPE_HEADERS) or {}
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
