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
HEARTBEATS = "darkroom.system.heartbeats"
DEAD_LETTERS = "darkroom.system.dlq"

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
    HEARTBEATS,
    DEAD_LETTERS,
)
