"""Topic names, as declared (with partitions and configs) in infra/topics.yaml.

Code refers to topics through these constants; tests/unit/test_topics.py checks
that they match the declaration file, so the two cannot drift.
"""

from __future__ import annotations

IMAGE_COMMANDS = "darkroom.images.commands"
REQUEST_EVENTS = "darkroom.requests.events"
ACCOUNT_COMMANDS = "darkroom.accounts.commands"
ACCOUNT_EVENTS = "darkroom.accounts.events"
RENDER_CONSUMER = "darkroom.render.consumer"
RENDER_API = "darkroom.render.api"
RENDER_CONTROL = "darkroom.render.control"
RENDER_PROGRESS = "darkroom.render.progress"
SAFETY_CHECKS = "darkroom.safety.checks"
SAFETY_VERDICTS = "darkroom.safety.verdicts"
SAFETY_POLICY = "darkroom.safety.policy"
STORAGE_BLOBS = "darkroom.storage.blobs"
STORAGE_EVENTS = "darkroom.storage.events"
POLICIES = "darkroom.policies"
REVOCATIONS = "darkroom.revocations"
POLICY_HISTORY = "darkroom.policies.history"
ACCOUNT_TIERS = "darkroom.accounts.tiers"
USAGE = "darkroom.usage"
ACCOUNT_FLAGS = "darkroom.accounts.flags"
HEARTBEATS = "darkroom.system.heartbeats"
DEAD_LETTERS = "darkroom.system.dlq"

# API traffic's own copies of every topic a job travels through, so a surge of consumer
# jobs never sits in front of an api job in a partition or a consumer group. Publishers
# route by the envelope's tier (`route`); each service's runtime runs a second consumer
# group, "<group>-api", on these (libs.runtime.service).
IMAGE_COMMANDS_API = "darkroom.images.commands.api"
REQUEST_EVENTS_API = "darkroom.requests.events.api"
RENDER_PROGRESS_API = "darkroom.render.progress.api"
SAFETY_CHECKS_API = "darkroom.safety.checks.api"
SAFETY_VERDICTS_API = "darkroom.safety.verdicts.api"
STORAGE_BLOBS_API = "darkroom.storage.blobs.api"
STORAGE_EVENTS_API = "darkroom.storage.events.api"

API_TIER = "api"
API_VARIANTS = {
    IMAGE_COMMANDS: IMAGE_COMMANDS_API,
    REQUEST_EVENTS: REQUEST_EVENTS_API,
    RENDER_PROGRESS: RENDER_PROGRESS_API,
    SAFETY_CHECKS: SAFETY_CHECKS_API,
    SAFETY_VERDICTS: SAFETY_VERDICTS_API,
    STORAGE_BLOBS: STORAGE_BLOBS_API,
    STORAGE_EVENTS: STORAGE_EVENTS_API,
}
"""A job-path topic -> the copy that carries api-tier jobs."""


def route(topic: str, tier: str | None) -> str:
    """The topic a message of this tier goes to: the api copy for api-tier jobs."""
    return API_VARIANTS.get(topic, topic) if tier == API_TIER else topic


def with_api_copies(names: list[str] | tuple[str, ...]) -> list[str]:
    """The topics and, after them, the api copies of those that have one (for readers of all traffic)."""
    return [*names, *(API_VARIANTS[t] for t in names if t in API_VARIANTS)]


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
    *API_VARIANTS.values(),
)
