"""`darkroom models list|add|validate|rollout|promote|rollback`: model versions, applied live.

Each command reads the model events in force from the policy topic (libs.releases), decides
the change (pure functions below, which refuse what may not be done with the reason), and
publishes it on the policy topic (latest per key wins) and its history topic (kept whole).
Every gateway folds the policy topic and routes by the change within about a second; every
decoder folds it to find a version's weights.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import yaml

from libs import topics
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import fold_topics
from libs.bus.publisher import publish_in_force
from libs.events import Event
from libs.events.schemas import (
    BASE_VERSION,
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionValidated,
)
from libs.events.schemas.models import VERSION_PATTERN
from libs.lanes import models
from libs.releases import ModelReleases, VersionMismatch, checked_loader, event_key, source_folder, source_sha256

CLIENT_ID: Final = "darkroom-cli"
READ_TIMEOUT_S: Final = 30.0
DEFAULT_MIN_RECALL: Final = 0.9
DEFAULT_MAX_FALSE_POSITIVE_RATE: Final = 0.05


class ModelsError(Exception):
    """The change may not be made; the message says why, for the operator."""


# -- decisions (pure) ------------------------------------------------------------------------


def _known_model(model: str) -> None:
    if model not in models():
        raise ModelsError(f"unknown model {model!r} (models: {', '.join(models())}; declared in infra/topics.yaml)")


def _known_version(releases: ModelReleases, model: str, version: str) -> ModelVersionAdded:
    added = releases.version(model, version)
    if added is None:
        names = [BASE_VERSION, *sorted(v for m, v in releases.versions if m == model)]
        raise ModelsError(f"{model} has no version {version!r} (versions: {', '.join(names)})")
    if releases.failed(model, version):
        failure = releases.failures[(model, version)]
        raise ModelsError(f"{model} {version} was rolled back after it failed to {failure.stage}: {failure.reason}")
    return added


def add_change(releases: ModelReleases, model: str, version: str, source: str, changed_by: str) -> ModelVersionAdded:
    """The event that adds a version (its folder's sha256 is computed here, from the files).

    Raises:
        ModelsError: Unknown model, a taken or invalid version name, or a source without files.
    """
    import re

    _known_model(model)
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ModelsError(f"version {version!r}: letters, digits, '.', '_' and '-' only, at most 64")
    if version == BASE_VERSION or releases.version(model, version) is not None:
        raise ModelsError(f"{model} already has a version {version!r}; name the new one differently")
    folder = source_folder(source)
    if folder is None and not source.startswith("noop"):
        raise ModelsError(f"{source!r} names no folder: give `amused:/path`, a model folder, `builtin` or `world`")
    try:
        sha256 = source_sha256(source)
    except FileNotFoundError as exc:
        raise ModelsError(str(exc)) from exc
    return ModelVersionAdded(model=model, version=version, source=source, sha256=sha256, changed_by=changed_by)


def rollout_change(
    releases: ModelReleases, model: str, version: str, percent: float, changed_by: str
) -> ModelRolloutChanged:
    """The event that sends `percent` percent of accounts to `version` (the candidate).

    Raises:
        ModelsError: Unknown or failed version, the stable version itself, or a bad percentage.
    """
    _known_model(model)
    if not 0 < percent <= 100:
        raise ModelsError("the percentage must be above 0 and at most 100 (`rollback` takes a rollout back)")
    routing = releases.routing(model)
    if version == routing.stable:
        raise ModelsError(f"{version} is already {model}'s stable version")
    _known_version(releases, model, version)
    return ModelRolloutChanged(
        model=model,
        action="rollout",
        stable=routing.stable,
        previous=releases.rollout(model).previous,
        candidate=version,
        percent=percent,
        changed_by=changed_by,
    )


def promote_change(releases: ModelReleases, model: str, version: str | None, changed_by: str) -> ModelRolloutChanged:
    """The event that makes a version (by default the candidate) the stable one, for everyone.

    Raises:
        ModelsError: No candidate, an unknown or failed version, or one without a passed
            safety validation.
    """
    _known_model(model)
    routing = releases.routing(model)
    version = version or routing.candidate
    if version is None:
        raise ModelsError(f"{model} has no version being rolled out; name the version to promote")
    if version == routing.stable:
        raise ModelsError(f"{version} is already {model}'s stable version")
    _known_version(releases, model, version)
    validation = releases.validations.get((model, version))
    if validation is None:
        raise ModelsError(f"{model} {version} has no safety validation yet: run `darkroom models validate` first")
    if not validation.passed:
        raise ModelsError(
            f"{model} {version} failed its safety validation (recall {validation.recall:.1%} < "
            f"{validation.min_recall:.0%} or false positives {validation.false_positive_rate:.1%} > "
            f"{validation.max_false_positive_rate:.0%}): it cannot be promoted"
        )
    return ModelRolloutChanged(
        model=model, action="promote", stable=version, previous=routing.stable, changed_by=changed_by
    )


def rollback_change(releases: ModelReleases, model: str, reason: str, changed_by: str) -> ModelRolloutChanged:
    """The event that takes the last step back: a rollout in progress ends (its accounts go
    back to the stable version), else the stable version gives way to the one it replaced.

    Raises:
        ModelsError: Nothing to roll back (everyone is on `base`).
    """
    _known_model(model)
    routing = releases.routing(model)
    rollout = releases.rollout(model)
    if routing.candidate is not None:
        return ModelRolloutChanged(
            model=model,
            action="rollback",
            stable=routing.stable,
            previous=rollout.previous,
            reason=reason,
            changed_by=changed_by,
        )
    if routing.stable == BASE_VERSION:
        raise ModelsError(f"{model} serves its base version to everyone: nothing to roll back")
    back = rollout.previous if rollout.previous and not releases.failed(model, rollout.previous) else BASE_VERSION
    return ModelRolloutChanged(
        model=model, action="rollback", stable=back, previous=None, reason=reason, changed_by=changed_by
    )


def validation_event(
    model: str,
    version: str,
    result: Any,
    min_recall: float,
    max_false_positive_rate: float,
    changed_by: str,
) -> ModelVersionValidated:
    """The event that stores a validation result (a `libs.modeltools.validation.ValidationResult`)."""
    return ModelVersionValidated(
        model=model,
        version=version,
        recall=result.recall,
        false_positive_rate=result.false_positive_rate,
        forbidden_renders=result.forbidden_renders,
        harmless_renders=result.harmless_renders,
        min_recall=min_recall,
        max_false_positive_rate=max_false_positive_rate,
        passed=result.passed(min_recall, max_false_positive_rate),
        passes=result.passes,
        changed_by=changed_by,
    )


def format_releases(releases: ModelReleases, model: str | None = None) -> str:
    """What `list` prints: every model's (or one model's) versions and rollout, as YAML."""
    names = [model] if model else list(models())
    return yaml.safe_dump([releases.snapshot(name) for name in names], sort_keys=False)


# -- I/O -------------------------------------------------------------------------------------


async def read_releases(bootstrap: str, timeout_s: float = READ_TIMEOUT_S) -> ModelReleases:
    """The model events in force, read from the policy topic."""
    releases = ModelReleases()
    await fold_topics(bootstrap, [topics.POLICIES], releases.apply, client_id=CLIENT_ID, timeout_s=timeout_s)
    return releases


async def publish_change(publisher: EventPublisher, change: Event) -> None:
    """Publish a model event on the policy topic (in force) and the history topic (kept)."""
    await publish_in_force(publisher, change, event_key(change))


async def _publish(bootstrap: str, change: Event) -> None:
    producer = KafkaProducer(bootstrap, client_id=CLIENT_ID)
    await producer.start()
    try:
        await publish_change(EventPublisher(producer), change)
    finally:
        await producer.stop()


def list_models(bootstrap: str, model: str | None = None) -> str:
    """`darkroom models list [MODEL]`."""
    if model is not None:
        _known_model(model)
    return format_releases(asyncio.run(read_releases(bootstrap)), model)


def change(bootstrap: str, decide: Any) -> Event:
    """Read what is in force, decide the change with `decide(releases)`, publish it.

    Raises:
        ModelsError: The change may not be made (nothing is published).
        TimeoutError: The policy topic could not be read in time.
    """

    async def run() -> Event:
        event: Event = decide(await read_releases(bootstrap))
        await _publish(bootstrap, event)
        return event

    return asyncio.run(run())


def validate_version(
    bootstrap: str,
    model: str,
    version: str,
    *,
    n: int,
    passes: int,
    min_recall: float,
    max_false_positive_rate: float,
    device: str,
    changed_by: str,
) -> ModelVersionValidated:
    """`darkroom models validate`: render the held-out set with the version (its checksum
    checked), measure the content detector on it and store the result with the version.

    Raises:
        ModelsError: Unknown or failed version, or weights that do not match their checksum.
    """
    from libs.model.safety_classifier import load_safety_classifier
    from libs.modeltools.validation import validate

    async def run() -> ModelVersionValidated:
        releases = await read_releases(bootstrap)
        _known_model(model)
        added = _known_version(releases, model, version)
        try:
            image_model = await asyncio.to_thread(checked_loader(device), added)
        except (VersionMismatch, FileNotFoundError) as exc:
            raise ModelsError(f"{model} {version}: {exc}") from exc
        detector = await asyncio.to_thread(load_safety_classifier, None, device if device != "auto" else "cpu")
        result = await asyncio.to_thread(validate, image_model, detector.score_batch, detector.threshold, n, passes)
        event = validation_event(model, version, result, min_recall, max_false_positive_rate, changed_by)
        await _publish(bootstrap, event)
        return event

    return asyncio.run(run())
