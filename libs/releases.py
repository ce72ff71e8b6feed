"""Which version of each model serves which account: a fold of the model events.

`ModelReleases` folds `ModelVersionAdded`, `ModelVersionValidated`, `ModelRolloutChanged`
and `ModelVersionFailed` (libs/events/schemas/models.py) from the compacted policy topic.
Gateways fold it to route each job to a version (`route`); decoders fold it to find a
version's weights (`version`) and what renders a failed version's jobs (`serving`). No I/O
here except `folder_sha256`, which reads the files it hashes.

Routing: a candidate being rolled out serves the accounts whose position (a hash of the
model name and the account id, in [0, 100)) is below its percentage; everyone else gets
the stable version. A failed version serves nobody: a failed candidate leaves the rollout,
a failed stable version gives way to the version it replaced (or `base`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.access import rollout_position
from libs.events import Event
from libs.events.schemas import (
    BASE_VERSION,
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionFailed,
    ModelVersionValidated,
)
from libs.model.interface import ImageModel
from libs.model.registry import load_model, weights_folder


def version_key(model: str, version: str) -> str:
    """The policy-topic key of a version."""
    return f"model-version:{model}:{version}"


def validation_key(model: str, version: str) -> str:
    """The policy-topic key of a version's safety validation."""
    return f"model-validation:{model}:{version}"


def rollout_key(model: str) -> str:
    """The policy-topic key of a model's rollout."""
    return f"model-rollout:{model}"


def failure_key(model: str, version: str) -> str:
    """The policy-topic key of a version's failure."""
    return f"model-failure:{model}:{version}"


def event_key(event: Event) -> str:
    """The policy-topic key of a model event."""
    if isinstance(event, ModelVersionAdded):
        return version_key(event.model, event.version)
    if isinstance(event, ModelVersionValidated):
        return validation_key(event.model, event.version)
    if isinstance(event, ModelRolloutChanged):
        return rollout_key(event.model)
    if isinstance(event, ModelVersionFailed):
        return failure_key(event.model, event.version)
    raise TypeError(f"{type(event).__name__} is not a model event")


def source_folder(source: str) -> Path | None:
    """The folder whose files a source loads, when it has one.

    `amused:/path` and a folder path name their folder; the built-in names (and `world`, which
    draws through the built-in VQ) load the repository's weights; `noop` stand-ins,
    `module:factory` models and names of nothing have none. Each kind of model says which
    folder it loads when it registers (libs.model.registry).
    """
    try:
        return weights_folder(source)
    except FileNotFoundError:
        return None


def folder_sha256(folder: Path) -> str:
    """One sha256 over every file of a folder: each file's path relative to the folder and
    its bytes, in path order. Any changed, added, removed or renamed file changes it.

    Raises:
        FileNotFoundError: The folder does not exist or holds no file.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no file")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def source_sha256(source: str) -> str:
    """The sha256 of a source's folder, or "" for a source without one."""
    folder = source_folder(source)
    return folder_sha256(folder) if folder is not None else ""


@dataclass(frozen=True)
class Routing:
    """Which versions of one model serve now, after failures are taken into account."""

    stable: str
    candidate: str | None
    percent: float


@dataclass
class ModelReleases:
    """The versions of every model and their rollout, as folded from the policy topic."""

    versions: dict[tuple[str, str], ModelVersionAdded] = field(default_factory=dict)
    validations: dict[tuple[str, str], ModelVersionValidated] = field(default_factory=dict)
    rollouts: dict[str, ModelRolloutChanged] = field(default_factory=dict)
    failures: dict[tuple[str, str], ModelVersionFailed] = field(default_factory=dict)
    changes: int = 0
    """How many records were applied (tests and tools wait on it)."""

    def apply(self, event: Event) -> bool:
        """Fold one record in; returns whether it was a model event."""
        if isinstance(event, ModelVersionAdded):
            self.versions[(event.model, event.version)] = event
        elif isinstance(event, ModelVersionValidated):
            self.validations[(event.model, event.version)] = event
        elif isinstance(event, ModelRolloutChanged):
            self.rollouts[event.model] = event
        elif isinstance(event, ModelVersionFailed):
            if event.version == BASE_VERSION:
                return True  # the base version cannot be rolled back from; its decoders say so
            self.failures[(event.model, event.version)] = event
        else:
            return False
        self.changes += 1
        return True

    def version(self, model: str, version: str) -> ModelVersionAdded | None:
        """A version's record (None for `base` and for versions never added)."""
        return self.versions.get((model, version))

    def failed(self, model: str, version: str) -> bool:
        """Whether the version failed on some decoder (and so serves nobody)."""
        return (model, version) in self.failures

    def rollout(self, model: str) -> ModelRolloutChanged:
        """The model's rollout as the operator last set it (everyone on `base` until then)."""
        return self.rollouts.get(model) or ModelRolloutChanged(model=model, action="rollout")

    def routing(self, model: str) -> Routing:
        """The versions serving now: the operator's rollout without its failed versions."""
        rollout = self.rollout(model)
        stable = rollout.stable
        if self.failed(model, stable):
            previous = rollout.previous
            stable = previous if previous and not self.failed(model, previous) else BASE_VERSION
        candidate = rollout.candidate
        if candidate is None or self.failed(model, candidate) or rollout.percent <= 0 or candidate == stable:
            return Routing(stable, None, 0.0)
        return Routing(stable, candidate, rollout.percent)

    def route(self, model: str, account_id: str) -> str:
        """The version that renders this account's next job of the model."""
        routing = self.routing(model)
        if routing.candidate is not None and (
            routing.percent >= 100 or rollout_position(account_id, f"model:{model}") < routing.percent
        ):
            return routing.candidate
        return routing.stable

    def serving(self, model: str, version: str) -> str:
        """The version a decoder renders a job routed to `version` with: the version itself,
        or, when it failed, the stable version now in force."""
        if version == BASE_VERSION or not self.failed(model, version):
            return version
        return self.routing(model).stable

    def snapshot(self, model: str) -> dict[str, Any]:
        """The model's versions and rollout, as `darkroom models list` and the admin API show them."""
        rollout = self.rollout(model)
        routing = self.routing(model)
        names = [BASE_VERSION, *sorted(v for m, v in self.versions if m == model)]
        versions = []
        for name in names:
            added = self.version(model, name)
            validation = self.validations.get((model, name))
            failure = self.failures.get((model, name))
            versions.append(
                {
                    "version": name,
                    "source": added.source if added else "DARKROOM_MODEL of each decoder",
                    "sha256": added.sha256 if added else "",
                    "validation": None
                    if validation is None
                    else {
                        "passed": validation.passed,
                        "recall": validation.recall,
                        "false_positive_rate": validation.false_positive_rate,
                        "min_recall": validation.min_recall,
                        "max_false_positive_rate": validation.max_false_positive_rate,
                        "forbidden_renders": validation.forbidden_renders,
                        "harmless_renders": validation.harmless_renders,
                    },
                    "failed": None
                    if failure is None
                    else {"stage": failure.stage, "reason": failure.reason, "decoder": failure.decoder},
                }
            )
        return {
            "model": model,
            "stable": routing.stable,
            "candidate": routing.candidate,
            "percent": routing.percent,
            "previous": rollout.previous,
            "last_change": {"action": rollout.action, "reason": rollout.reason, "changed_by": rollout.changed_by},
            "versions": versions,
        }


VersionLoader = Callable[[ModelVersionAdded], ImageModel]
"""Loads a version's model (in a worker thread: it reads weights)."""


class VersionMismatch(Exception):
    """A version's weights are not the ones recorded when it was added, or do not fit `base`."""


def checked_loader(device: str) -> VersionLoader:
    """Loads a version (on `device`, "auto" included) after checking its folder's sha256
    against the recorded one.

    Raises (from the returned function):
        VersionMismatch: The folder's files changed since `darkroom models add`.
        Exception: Whatever loading the model raises (missing files, bad weights...).
    """

    def load(added: ModelVersionAdded) -> ImageModel:
        folder: Path | None = source_folder(added.source)
        if added.sha256:
            if folder is None:
                raise VersionMismatch(f"{added.source} has no folder to check against sha256 {added.sha256[:12]}")
            found = folder_sha256(folder)
            if found != added.sha256:
                raise VersionMismatch(
                    f"checksum mismatch: {folder} has sha256 {found[:12]}..., version {added.version} "
                    f"was added with {added.sha256[:12]}..."
                )
        if device == "auto":
            import torch

            resolved = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            resolved = device
        return load_model(added.source, resolved)

    return load
