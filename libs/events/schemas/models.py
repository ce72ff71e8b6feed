"""Model versions and their rollout (on the compacted policy topic, beside the tier policies).

A model's API name (`darkroom-mini`, `amused-256`) maps to versions: a weights source and
its sha256. Every decoder of the model starts on the version its `DARKROOM_MODEL` names,
called `base`; an operator adds versions, validates them against the content detector,
rolls one out to a share of accounts, promotes it, or rolls back (`darkroom models`).
Decoders publish `ModelVersionFailed` when a version cannot load or fails on renders: that
event is the automatic rollback (`libs.releases` folds it).

Keys on the policy topic (latest record per key wins):
"model-version:<model>:<version>", "model-validation:<model>:<version>",
"model-rollout:<model>", "model-failure:<model>:<version>". Every change is kept whole on
the policy history topic too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.events.envelope import Event
from libs.events.registry import REGISTRY

BASE_VERSION = "base"
"""The version every decoder starts on: what its `DARKROOM_MODEL` names."""

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


@REGISTRY.register
class ModelVersionAdded(Event):
    """Operator: a model has a new version (key "model-version:<model>:<version>")."""

    TYPE = "models.version_added"

    model: str
    version: str = Field(pattern=VERSION_PATTERN)
    source: str
    """What loads it, as `DARKROOM_MODEL` says it (`amused:/srv/models/amused-256-v2`, a folder)."""
    sha256: str = ""
    """Of the source's folder (`libs.releases.folder_sha256`); empty for a source that has none."""
    changed_by: str = "operator"


@REGISTRY.register
class ModelVersionValidated(Event):
    """Operator: the content detector measured on a version's renders of the held-out set
    (key "model-validation:<model>:<version>"). A version that did not pass cannot be promoted."""

    TYPE = "models.version_validated"

    model: str
    version: str
    recall: float = Field(ge=0, le=1)
    """Share of the forbidden prompts' renders that the content check blocked."""
    false_positive_rate: float = Field(ge=0, le=1)
    """Share of the harmless prompts' renders that it blocked."""
    forbidden_renders: int = Field(ge=0)
    harmless_renders: int = Field(ge=0)
    min_recall: float = Field(ge=0, le=1)
    max_false_positive_rate: float = Field(ge=0, le=1)
    passed: bool
    passes: int = 8
    changed_by: str = "operator"


RolloutAction = Literal["rollout", "promote", "rollback"]


@REGISTRY.register
class ModelRolloutChanged(Event):
    """Operator: which versions of a model serve which accounts (key "model-rollout:<model>").

    `stable` serves everyone outside the candidate's share; `candidate`, when set, serves
    `percent` percent of accounts, chosen by a stable hash of the account id (raising the
    percentage only adds accounts). `previous` is what a rollback of `stable` returns to.
    """

    TYPE = "models.rollout_changed"

    model: str
    action: RolloutAction
    stable: str = BASE_VERSION
    previous: str | None = None
    candidate: str | None = None
    percent: float = Field(default=0.0, ge=0, le=100)
    reason: str = ""
    changed_by: str = "operator"


@REGISTRY.register
class ModelVersionFailed(Event):
    """Decoder: a version failed to load (a checksum mismatch included) or failed on renders
    (key "model-failure:<model>:<version>"). It is the automatic rollback: routing leaves the
    version at once, and the decoders render its jobs with the version before it."""

    TYPE = "models.version_failed"

    model: str
    version: str
    stage: Literal["load", "render"]
    reason: str
    decoder: str = ""
