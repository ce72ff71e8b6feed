"""Model versions at the decoder: a job renders with the version it was routed to, and a
version that cannot load or fails on renders is rolled back (`ModelVersionFailed`) with its
jobs rendered by the version before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from libs import topics
from libs.bus.memory import InMemoryBroker
from libs.events.schemas import (
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionFailed,
    RenderStarted,
)
from libs.model.interface import ImageModel, RenderState
from libs.model.noop import NoOpModel
from libs.releases import VersionMismatch, checked_loader, folder_sha256
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap
from tests.helpers import eventually
from tests.unit.decoder.harness import now, serving
from tests.unit.decoder.test_decoder_service import JOB, Decoder, FailingModel

MODEL = "darkroom-mini"
JOB_V2 = JOB.model_copy(update={"model": MODEL, "version": "v2"})


def added(version: str = "v2", source: str = "noop", sha256: str = "") -> ModelVersionAdded:
    return ModelVersionAdded(model=MODEL, version=version, source=source, sha256=sha256)


class CountingModel(NoOpModel):
    """The no-op model, counting its passes."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def step(self, states: list[RenderState]) -> list[RenderState]:
        self.steps += 1
        return super().step(states)


ROLLOUT_V2 = ModelRolloutChanged(model=MODEL, action="rollout", candidate="v2", percent=100)


@asynccontextmanager
async def versioned_decoder(
    base: ImageModel, load: Callable[[ModelVersionAdded], ImageModel]
) -> AsyncIterator[Decoder]:
    broker = InMemoryBroker()
    decoder = Decoder(broker, None)  # type: ignore[arg-type]
    for event in (added(), ROLLOUT_V2):
        await decoder.send(topics.POLICIES, event, "model")
    runtime = bootstrap(
        DecoderSettings(heartbeat_interval_s=10, instance_id="decoder-v"),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        model=base,
        version_loader=load,
    )
    async with serving(runtime):
        yield Decoder(broker, runtime)


def started(decoder: Decoder) -> list[RenderStarted]:
    return [e for e in decoder.events(topics.RENDER_PROGRESS, RenderStarted) if isinstance(e, RenderStarted)]


def failures(decoder: Decoder) -> list[ModelVersionFailed]:
    return [e for e in decoder.events(topics.POLICIES, ModelVersionFailed) if isinstance(e, ModelVersionFailed)]


async def test_a_job_renders_with_the_version_it_was_routed_to() -> None:
    base, v2 = CountingModel(), CountingModel()
    async with versioned_decoder(base, lambda _: v2) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, JOB_V2, JOB_V2.job_id, tier="pro")
        stored = await eventually(now(lambda: decoder.stored() if len(decoder.stored()) == 2 else None), 10, "images")

        assert [s.version for s in started(decoder)] == ["v2"]
        assert {s.version for s in stored} == {"v2"}
        assert v2.steps == JOB.passes and base.steps == 0
        assert failures(decoder) == []


async def test_a_job_of_the_base_version_beside_one_of_another_renders_with_each() -> None:
    base, v2 = CountingModel(), CountingModel()
    async with versioned_decoder(base, lambda _: v2) as decoder:
        other = JOB.model_copy(update={"job_id": "job-2", "model": MODEL})
        await decoder.send(topics.RENDER_CONSUMER, JOB_V2, JOB_V2.job_id, tier="pro")
        await decoder.send(topics.RENDER_CONSUMER, other, other.job_id, tier="pro")
        await eventually(now(lambda: len(decoder.stored()) == 4), 10, "four images")

        versions = {s.job_id: s.version for s in decoder.stored()}
        assert versions == {"job-1": "v2", "job-2": "base"}
        assert v2.steps >= JOB.passes and base.steps >= JOB.passes


async def test_a_version_that_cannot_load_is_rolled_back_and_its_job_renders_with_the_one_before() -> None:
    base = NoOpModel()

    def broken(_: ModelVersionAdded) -> ImageModel:
        raise VersionMismatch("checksum mismatch: the weights changed")

    async with versioned_decoder(base, broken) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, JOB_V2, JOB_V2.job_id, tier="pro")
        stored = await eventually(now(lambda: decoder.stored() if len(decoder.stored()) == 2 else None), 10, "images")

        [failure] = failures(decoder)
        assert (failure.version, failure.stage, failure.decoder) == ("v2", "load", "decoder-v")
        assert "checksum mismatch" in failure.reason
        assert [s.version for s in started(decoder)] == ["base"]
        assert {s.version for s in stored} == {"base"}
        assert decoder.stopped() == []


async def test_a_version_that_fails_on_a_render_is_rolled_back_and_the_render_handed_back() -> None:
    base, v2 = NoOpModel(), FailingModel(fail_at=2)
    async with versioned_decoder(base, lambda _: v2) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, JOB_V2, JOB_V2.job_id, tier="pro")
        [stopped] = await eventually(now(decoder.stopped), 10, "the render handed back")
        # Handed back from its checkpoint (pass 1), to be dispatched again: not failed.
        assert (stopped.reason, stopped.pass_index) == ("preempted", 1)
        assert "model version v2 failed" in stopped.message
        [failure] = failures(decoder)
        assert (failure.version, failure.stage) == ("v2", "render")

        # The requests service's next attempt, resumed from the checkpoint: the base renders it.
        [progress] = decoder.progress()
        again = JOB_V2.model_copy(update={"attempt": 1, "resume_pass": 1, "resume_tokens": progress.tokens})
        await decoder.send(topics.RENDER_CONSUMER, again, again.job_id, tier="pro")
        stored = await eventually(now(lambda: decoder.stored() if len(decoder.stored()) == 2 else None), 10, "images")
        assert {s.version for s in stored} == {"base"}
        assert [s.version for s in started(decoder)] == ["v2", "base"]


async def test_a_version_the_decoder_never_heard_of_renders_with_the_stable_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("services.decoder.versions.UNKNOWN_VERSION_WAIT_S", 0.2)
    base = NoOpModel()
    async with versioned_decoder(base, lambda _: NoOpModel()) as decoder:
        job = JOB_V2.model_copy(update={"version": "v9"})
        await decoder.send(topics.RENDER_CONSUMER, job, job.job_id, tier="pro")
        await eventually(now(lambda: len(decoder.stored()) == 2), 10, "images")
        assert [s.version for s in started(decoder)] == ["base"]
        assert failures(decoder) == []  # not a failure of any version: nothing rolled back


def test_the_checked_loader_refuses_a_folder_whose_files_changed(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    version = added(source=str(folder), sha256=folder_sha256(folder))
    (folder / "model.json").write_text('{"corrupted": true}')

    with pytest.raises(VersionMismatch, match="checksum mismatch"):
        checked_loader("cpu")(version)


def test_the_checked_loader_loads_a_folder_that_matches(tmp_path: Path) -> None:
    from libs.model.interface import DEFAULT_WEIGHTS_DIR

    version = added(source="builtin", sha256=folder_sha256(DEFAULT_WEIGHTS_DIR))
    model = checked_loader("cpu")(version)
    assert model.grid_size == 16
