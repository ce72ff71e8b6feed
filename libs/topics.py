"""Topics, as declared (with partitions and configs) in infra/topics.yaml, with their events.

Code refers to topics through these constants; tests/unit/test_topics.py checks that they
match the declaration file, so the two cannot drift. Each is a `Topic`: its name (a `str`,
usable wherever a topic name is), the event types it carries, and its api copy where it
has one. The publisher refuses an envelope whose type its topic does not declare
(`Topic.check`), so a message cannot land where no consumer expects it.
"""

from __future__ import annotations

from collections.abc import Sequence

from libs.events import Event, schemas

API_TIER = "api"


class UndeclaredEvent(TypeError):
    """An envelope was published on a topic that does not carry its type (a programming error)."""


class Topic(str):
    """A topic's name, with the event types it carries and its api copy.

    A `str` subclass, so a topic goes wherever a topic name goes (Kafka clients, dict keys,
    comparisons with names read back from a record or a document) and equals its name.
    """

    __slots__ = ("api", "type_names", "types")

    types: tuple[type[Event], ...]
    """The payload classes its messages may carry."""
    type_names: frozenset[str]
    """Their type names, as envelopes carry them."""
    api: Topic | None
    """The copy that carries api-tier jobs, for a job-path topic (`route`); None otherwise."""

    def __new__(cls, name: str, *types: type[Event], api: str | None = None) -> Topic:
        """A topic.

        Args:
            name: The topic's name in Kafka.
            types: The payload classes its messages may carry.
            api: The name of its api copy, which carries the same types, if it has one.
        """
        topic = super().__new__(cls, name)
        topic.types = types
        topic.type_names = frozenset(t.TYPE for t in types)
        topic.api = Topic(api, *types) if api is not None else None
        return topic

    def check(self, type_name: str) -> None:
        """Refuse a message of a type this topic does not carry.

        Raises:
            UndeclaredEvent: `type_name` is not among the topic's types.
        """
        if type_name not in self.type_names:
            raise UndeclaredEvent(
                f"{type_name!r} is not an event of {str(self)!r} (it carries {', '.join(sorted(self.type_names))})"
            )

    def renamed(self, name: str) -> Topic:
        """A topic of another name that carries the same types (a model's own render topics)."""
        return Topic(name, *self.types)


IMAGE_COMMANDS = Topic(
    "darkroom.images.commands",
    schemas.GenerateImage,
    schemas.CancelJob,
    schemas.ExpireRenderLease,
    api="darkroom.images.commands.api",
)
REQUEST_EVENTS = Topic(
    "darkroom.requests.events",
    schemas.JobAccepted,
    schemas.JobQueued,
    schemas.JobRenderStarted,
    schemas.JobRequeued,
    schemas.JobProgressed,
    schemas.JobImageStored,
    schemas.JobContentCleared,
    schemas.JobCompleted,
    schemas.JobBlocked,
    schemas.JobCancelled,
    schemas.JobFailed,
    api="darkroom.requests.events.api",
)
ACCOUNT_COMMANDS = Topic("darkroom.accounts.commands", schemas.CreateAccount, schemas.RevokeKeys, schemas.ChangeTier)
ACCOUNT_EVENTS = Topic(
    "darkroom.accounts.events", schemas.AccountCreated, schemas.AccountRejected, schemas.AccountCommandFailed
)
RENDER_CONSUMER = Topic("darkroom.render.consumer", schemas.RenderJob)
RENDER_API = Topic("darkroom.render.api", schemas.RenderJob)
RENDER_CONTROL = Topic("darkroom.render.control", schemas.AbortRender)
RENDER_PROGRESS = Topic(
    "darkroom.render.progress",
    schemas.RenderStarted,
    schemas.RenderProgressed,
    schemas.RenderStopped,
    api="darkroom.render.progress.api",
)
SAFETY_CHECKS = Topic(
    "darkroom.safety.checks", schemas.CheckPrompt, schemas.CheckContent, api="darkroom.safety.checks.api"
)
SAFETY_VERDICTS = Topic("darkroom.safety.verdicts", schemas.SafetyVerdict, api="darkroom.safety.verdicts.api")
SAFETY_POLICY = Topic("darkroom.safety.policy", schemas.SafetyPolicy)
STORAGE_BLOBS = Topic("darkroom.storage.blobs", schemas.StoreImage, api="darkroom.storage.blobs.api")
STORAGE_EVENTS = Topic("darkroom.storage.events", schemas.ImageStored, api="darkroom.storage.events.api")
_IN_FORCE = (
    schemas.TierPolicyChanged,
    schemas.RolloutChanged,
    schemas.ModelVersionAdded,
    schemas.ModelVersionValidated,
    schemas.ModelRolloutChanged,
    schemas.ModelVersionFailed,
)
"""What is in force: tiers' policies, rollouts, models' versions (libs.bus.publisher.publish_in_force)."""
POLICIES = Topic("darkroom.policies", *_IN_FORCE)
REVOCATIONS = Topic("darkroom.revocations", schemas.KeyRevoked)
POLICY_HISTORY = Topic("darkroom.policies.history", *_IN_FORCE)
ACCOUNT_TIERS = Topic("darkroom.accounts.tiers", schemas.TierChanged)
USAGE = Topic("darkroom.usage", schemas.AccountUsage)
ACCOUNT_FLAGS = Topic("darkroom.accounts.flags", schemas.AccountFlagged)
HEARTBEATS = Topic("darkroom.system.heartbeats", schemas.ServiceHeartbeat)
DEAD_LETTERS = Topic("darkroom.system.dlq", schemas.DeadLetter)
QUIET = frozenset({POLICIES, REVOCATIONS, ACCOUNT_TIERS, SAFETY_POLICY, USAGE})
"""Topics written a few times a day (what is in force, revocations, tiers, the safety policy)
or once per metering batch (usage): a reader of these alone is idle nearly always, so it
fetches with a long wait (libs.bus.logreader.KafkaLogReader)."""


def _api_copy(topic: Topic) -> Topic:
    if topic.api is None:
        raise ValueError(f"{topic} has no api copy")
    return topic.api


# API traffic's own copies of every topic a job travels through, so a surge of consumer
# jobs never sits in front of an api job in a partition or a consumer group. Publishers
# route by the envelope's tier (`route`, applied by libs.bus.routing.TierRouting); each
# service's runtime runs a second consumer group, "<group>-api", on these
# (libs.bus.routing.member_groups).
IMAGE_COMMANDS_API = _api_copy(IMAGE_COMMANDS)
REQUEST_EVENTS_API = _api_copy(REQUEST_EVENTS)
RENDER_PROGRESS_API = _api_copy(RENDER_PROGRESS)
SAFETY_CHECKS_API = _api_copy(SAFETY_CHECKS)
SAFETY_VERDICTS_API = _api_copy(SAFETY_VERDICTS)
STORAGE_BLOBS_API = _api_copy(STORAGE_BLOBS)
STORAGE_EVENTS_API = _api_copy(STORAGE_EVENTS)

ALL_TOPICS = (
    IMAGE_COMMANDS,
    REQUEST_EVENTS,
    ACCOUNT_COMMANDS,
    ACCOUNT_EVENTS,
    RENDER_CONSUMER,
    RENDER_API,
    RENDER_CONTROL,
    RENDER_PROGRESS,
    SAFETY_CHECKS,
    SAFETY_VERDICTS,
    SAFETY_POLICY,
    STORAGE_BLOBS,
    STORAGE_EVENTS,
    POLICIES,
    REVOCATIONS,
    POLICY_HISTORY,
    ACCOUNT_TIERS,
    USAGE,
    ACCOUNT_FLAGS,
    HEARTBEATS,
    DEAD_LETTERS,
    IMAGE_COMMANDS_API,
    REQUEST_EVENTS_API,
    RENDER_PROGRESS_API,
    SAFETY_CHECKS_API,
    SAFETY_VERDICTS_API,
    STORAGE_BLOBS_API,
    STORAGE_EVENTS_API,
)

_BY_NAME = {str(topic): topic for topic in ALL_TOPICS}


def declared(name: str) -> Topic | None:
    """The topic of a name, or None for a name this module does not declare.

    A name read back as a plain `str` (from a record, or a message saved in a document)
    finds its topic again here; a `Topic` is its own answer.
    """
    return name if isinstance(name, Topic) else _BY_NAME.get(name)


def route(topic: str, tier: str | None) -> str:
    """The topic a message of this tier goes to: the api copy for api-tier jobs."""
    if tier != API_TIER:
        return topic
    found = declared(topic)
    return found.api if found is not None and found.api is not None else topic


def api_copy(name: str) -> Topic | None:
    """The api copy of a topic, or None where it has none (or the name is not declared)."""
    found = declared(name)
    return found.api if found is not None else None


def with_api_copies(names: Sequence[str]) -> list[str]:
    """The topics and, after them, the api copies of those that have one (for readers of all traffic)."""
    return [*names, *(copy for copy in map(api_copy, names) if copy is not None)]
