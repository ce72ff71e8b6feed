"""The decoder service wired with the in-memory broker and the no-op model.

Timing is decided by the tests, never by sleeps racing: a gated model holds each pass until
the test lets it go, so an abort provably arrives between two pass boundaries.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from libs import topics
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope, Event
from libs.events.schemas import (
    AbortRender,
    DeadLetter,
    EditSource,
    RenderJob,
    RenderProgressed,
    RenderStarted,
    RenderStopped,
    StoreImage,
)
from libs.model.interface import ImageModel, RenderState, pack_cells, pack_tokens, state_from_checkpoint, unpack_tokens
from libs.model.noop import NoOpModel
from libs.runtime.service import ServiceRuntime
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap
from services.decoder.engine import BatchEngine, Render
from services.decoder.runner import ModelRunner
from services.decoder.scheduler import plan_render
from tests.helpers import eventually
from tests.unit.decoder.harness import now, serving

T = TypeVar("T")

JOB = RenderJob(
    job_id="job-1",
    tier="pro",
    prompt="a lighthouse at dusk",
    model="noop",
    seed=7,
    n=2,
    passes=4,
    size=256,
    output_format="jpeg",
    output_compression=20,
    background="auto",
    preview_passes=[2],
    content_check_passes=[3],
)


class GatedModel(NoOpModel):
    """The no-op model, but each pass waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self, states: list[RenderState]) -> list[RenderState]:
        self.steps += 1
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise TimeoutError("the test never released the pass")
        return super().step(states)


class FailingModel(NoOpModel):
    """The no-op model, but pass `fail_at` (1-based) raises."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.steps = 0

    def step(self, states: list[RenderState]) -> list[RenderState]:
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("weights went missing")
        return super().step(states)


@dataclass
class Bus:
    """The in-memory broker, with what tests send and read there."""

    broker: InMemoryBroker

    async def send(self, topic: str, event: Event, aggregate_id: str, tier: str | None = None) -> Envelope:
        envelope = Envelope.wrap(event, aggregate_id=aggregate_id, tier=tier)
        await EventPublisher(self.broker.producer()).publish(topic, envelope)
        return envelope

    def envelopes(self, topic: str) -> list[Envelope]:
        return [Envelope.from_bytes(r.value) for r in self.broker.records(topic)]

    def events(self, topic: str, event_type: type[Event]) -> list[Event]:
        return [REGISTRY.decode(e) for e in self.envelopes(topic) if e.type == event_type.TYPE]

    def progress(self) -> list[RenderProgressed]:
        return [e for e in self.events(topics.RENDER_PROGRESS, RenderProgressed) if isinstance(e, RenderProgressed)]

    def stopped(self) -> list[RenderStopped]:
        return [e for e in self.events(topics.RENDER_PROGRESS, RenderStopped) if isinstance(e, RenderStopped)]

    def stored(self) -> list[StoreImage]:
        return [e for e in self.events(topics.STORAGE_BLOBS, StoreImage) if isinstance(e, StoreImage)]


@dataclass
class Decoder(Bus):
    """A running decoder and the broker it talks to."""

    runtime: ServiceRuntime

    def handled(self) -> int:
        return sum(c.handled for c in self.runtime.consumers)


@asynccontextmanager
async def running_decoder(model: ImageModel | None, settings: DecoderSettings | None = None) -> AsyncIterator[Decoder]:
    broker = InMemoryBroker()
    runtime = bootstrap(
        settings or DecoderSettings(heartbeat_interval_s=10, instance_id="decoder-t"),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        model=model,
    )
    async with serving(runtime):
        yield Decoder(broker, runtime)


def _grid(b64: str) -> np.ndarray:
    return unpack_tokens(base64.b64decode(b64))


def _image(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


async def _render(job: RenderJob, model: ImageModel) -> tuple[list[RenderProgressed], list[StoreImage]]:
    async with running_decoder(model) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, job, job.job_id, tier=job.tier)
        await eventually(now(lambda: len(decoder.stored()) >= job.n), 10, "stored images")
        return decoder.progress(), decoder.stored()


async def test_a_job_progresses_pass_by_pass_then_hands_its_images_to_storage() -> None:
    model = NoOpModel()
    async with running_decoder(model) as decoder:
        cause = await decoder.send(topics.RENDER_CONSUMER, JOB, JOB.job_id, tier="pro")
        await eventually(now(lambda: len(decoder.stored()) >= 2), 10, "two stored images")
        progress, stored = decoder.progress(), decoder.stored()

        # One checkpoint per reported pass, in order, each with both images' grids: pass 1
        # (odd, no preview, nothing to check) is not published; 2 has previews, 3 is
        # checked, 4 is the last.
        assert [p.pass_index for p in progress] == [2, 3, 4]
        assert all(p.total_passes == 4 and p.decoder == "decoder-t" and len(p.tokens) == 2 for p in progress)
        grids = [[_grid(t) for t in p.tokens] for p in progress]
        assert all(g.shape == (16, 16) for per_pass in grids for g in per_pass)
        for index in range(2):
            masked = [int((per_pass[index] == model.mask_token).sum()) for per_pass in grids]
            assert masked == sorted(masked, reverse=True) and len(set(masked)) == 3 and masked[-1] == 0
            assert 0 < masked[0] < 16 * 16, "pass 2's grid has pass 1's cells drawn too"
        assert grids[-1][0].tolist() != grids[-1][1].tolist()  # image i has seed + i

        # Previews only after pass 2, in the job's format and size.
        assert [len(p.previews) for p in progress] == [2, 0, 0]
        for preview in progress[0].previews:
            image = _image(preview)
            assert (image.format, image.size) == ("JPEG", (256, 256))

        # The pictures the safety service scores: a 64x64 PNG per image on the checked
        # passes the job names, and always on the last one.
        assert [len(p.check_images) for p in progress] == [0, 2, 2]
        for picture in progress[1].check_images + progress[2].check_images:
            image = _image(picture)
            assert (image.format, image.size) == ("PNG", (64, 64))

        # The final images, with the last checkpoint's grids.
        assert [s.index for s in stored] == [0, 1] and decoder.stopped() == []
        for i, store in enumerate(stored):
            assert (store.job_id, store.prompt, store.model, store.seed) == ("job-1", JOB.prompt, "noop", 7 + i)
            assert (store.size, store.output_format, store.content_type) == (256, "jpeg", "image/jpeg")
            assert store.tokens == progress[-1].tokens[i]
            assert store.account_id == ""
            image = _image(store.data)
            assert (image.format, image.size) == ("JPEG", (256, 256))

        # Every event carries the job's correlation and tier, caused by the job, keyed by it.
        sent = decoder.envelopes(topics.RENDER_PROGRESS) + decoder.envelopes(topics.STORAGE_BLOBS)
        assert {(e.aggregate_id, e.correlation_id, e.causation_id, e.tier) for e in sent} == {
            ("job-1", cause.correlation_id, cause.event_id, "pro")
        }
        # RenderStarted first (sequence 0: it orders nothing), then the reported passes (their
        # pass numbers) and the images (after the 4 passes) in order.
        assert [e.type for e in sent][:2] == ["render.render_started", "render.render_progressed"]
        assert [e.sequence for e in sent] == [0, 2, 3, 4, 5, 6]
        records = decoder.broker.records(topics.RENDER_PROGRESS) + decoder.broker.records(topics.STORAGE_BLOBS)
        assert {r.key for r in records} == {b"job-1"}


async def test_the_images_are_exactly_the_models_render_of_each_seed() -> None:
    model = NoOpModel()
    _, stored = await _render(JOB, model)

    for i, store in enumerate(stored):
        state = model.start(JOB.prompt, JOB.seed + i, JOB.passes)
        for _ in range(JOB.passes):
            [state] = model.step([state])
        assert base64.b64decode(store.tokens) == pack_tokens(state.tokens)


async def test_a_render_resumed_from_a_checkpoint_ends_like_the_uninterrupted_one() -> None:
    progress, stored = await _render(JOB, NoOpModel())
    model = NoOpModel()
    runner = ModelRunner(lambda: model)
    await runner.load()
    broker = InMemoryBroker()
    engine = BatchEngine(runner, EventPublisher(broker.producer()), "decoder-r", limit=4)
    [checkpoint] = [p for p in progress if p.pass_index == 2]
    states = [
        state_from_checkpoint(model, JOB.prompt, JOB.seed + i, JOB.passes, checkpoint.pass_index, _grid(t))
        for i, t in enumerate(checkpoint.tokens)
    ]
    plan = plan_render(JOB.job_id, JOB.passes, JOB.preview_passes, completed=checkpoint.pass_index)
    stop = asyncio.Event()
    loop = asyncio.create_task(engine.run(stop))

    await engine.submit(Render(JOB, Envelope.wrap(JOB, aggregate_id=JOB.job_id), "pro", 0, 0, states, plan))
    resumed = Bus(broker)
    await eventually(now(lambda: len(resumed.stored()) == 2 and not engine.running()), 10, "the render finished")
    stop.set()
    await asyncio.wait_for(loop, 10)
    runner.close()

    assert [(p.pass_index, p.tokens) for p in resumed.progress()] == [(p.pass_index, p.tokens) for p in progress[2:]]
    assert [s.tokens for s in resumed.stored()] == [s.tokens for s in stored]


async def test_the_same_job_renders_the_same_tokens_on_two_decoders() -> None:
    job = JOB.model_copy(update={"output_format": "png", "preview_passes": [1, 3]})

    first_progress, first_stored = await _render(job, NoOpModel())
    second_progress, second_stored = await _render(job, NoOpModel())

    assert [p.tokens for p in first_progress] == [p.tokens for p in second_progress]
    assert [p.previews for p in first_progress] == [p.previews for p in second_progress]
    assert [(s.tokens, s.data) for s in first_stored] == [(s.tokens, s.data) for s in second_stored]
    assert _image(first_stored[0].data).format == "PNG"


async def test_an_abort_during_a_pass_stops_the_render_at_the_next_boundary() -> None:
    # Also proves passes run off the event loop: the abort is consumed while a pass blocks.
    model = GatedModel()
    async with running_decoder(model) as decoder:
        try:
            await decoder.send(topics.RENDER_CONSUMER, JOB, JOB.job_id)
            assert await asyncio.to_thread(model.entered.wait, 10), "pass 1 never started"

            # Pass 1 is running: the abort is recorded before it can end.
            await decoder.send(topics.RENDER_CONTROL, AbortRender(job_id="job-1", reason="blocked"), "job-1")
            await eventually(now(lambda: decoder.handled() >= 2), 10, "the abort handled")  # the job, then the abort
        finally:
            model.release.set()

        [stopped] = await eventually(now(decoder.stopped), 10, "the render stopped")
        assert (stopped.job_id, stopped.pass_index, stopped.reason) == ("job-1", 1, "aborted")
        assert decoder.progress() == [], "pass 1 is not reported (libs.jobs.pass_reported)"
        assert decoder.stored() == []
        assert model.steps == 1


async def test_a_job_aborted_before_it_arrives_is_never_rendered() -> None:
    model = GatedModel()
    model.release.set()
    async with running_decoder(model) as decoder:
        await decoder.send(topics.RENDER_CONTROL, AbortRender(job_id="job-1", reason="cancelled"), "job-1")
        await eventually(now(lambda: decoder.handled() >= 1), 10, "the abort handled")
        await decoder.send(topics.RENDER_CONSUMER, JOB, JOB.job_id)

        [stopped] = await eventually(now(decoder.stopped), 10, "the render stopped")
        assert (stopped.pass_index, stopped.reason) == (0, "aborted")
        assert decoder.progress() == [] and decoder.stored() == [] and model.steps == 0


async def test_a_model_failure_stops_the_job_once_without_retries() -> None:
    model = FailingModel(fail_at=2)
    async with running_decoder(model) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, JOB, JOB.job_id)
        await eventually(now(lambda: decoder.handled() >= 1), 10, "the job handled")

        [stopped] = await eventually(now(decoder.stopped), 10, "the render stopped")
        assert (stopped.pass_index, stopped.reason) == (1, "failed")
        assert "weights went missing" in stopped.message
        assert decoder.progress() == [], "pass 1 is not reported (libs.jobs.pass_reported)"
        assert decoder.stored() == []
        assert decoder.events(topics.DEAD_LETTERS, DeadLetter) == []
        assert model.steps == 2


async def test_a_job_the_model_cannot_start_fails_instead_of_looping() -> None:
    async with running_decoder(NoOpModel()) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, JOB.model_copy(update={"passes": 0}), JOB.job_id)
        await eventually(now(lambda: decoder.handled() >= 1), 10, "the job handled")

        [stopped] = decoder.stopped()
        assert (stopped.pass_index, stopped.reason) == (0, "failed")
        assert decoder.progress() == [] and decoder.events(topics.DEAD_LETTERS, DeadLetter) == []


async def test_the_api_pool_serves_the_api_topic_in_its_own_group_with_the_configured_model() -> None:
    settings = DecoderSettings(pool="api", model="noop", device="cpu", heartbeat_interval_s=10)
    async with running_decoder(None, settings) as decoder:
        assert [(s.group, list(s.topics)) for s in decoder.runtime.subscriptions] == [
            ("decoder-api", [topics.RENDER_API]),
            (f"decoder-control-{decoder.runtime.instance_id}", [topics.RENDER_CONTROL]),
        ]
        job = JOB.model_copy(update={"tier": "api", "n": 1})
        await decoder.send(topics.RENDER_API, job, job.job_id)

        await eventually(now(lambda: len(decoder.stored()) == 1), 10, "the stored image")


def test_the_consumer_pool_serves_the_lanes_in_its_own_group() -> None:
    runtime = bootstrap(DecoderSettings(), producer=InMemoryBroker().producer(), model=NoOpModel())

    assert [(s.group, list(s.topics)) for s in runtime.subscriptions] == [
        ("decoder-consumer", [topics.RENDER_CONSUMER]),
        (f"decoder-control-{runtime.instance_id}", [topics.RENDER_CONTROL]),
    ]


async def test_the_model_check_passes_once_the_model_is_loaded() -> None:
    broker = InMemoryBroker()
    runtime = bootstrap(
        DecoderSettings(heartbeat_interval_s=10),
        producer=broker.producer(),
        consumer_factory=broker.consumer,
        model=NoOpModel(),
    )
    assert await runtime.run_checks() == {"model": False}

    async with running_decoder(NoOpModel()) as decoder:
        assert await decoder.runtime.run_checks() == {"model": True}


def _left_half() -> np.ndarray:
    cells = np.zeros((16, 16), bool)
    cells[:, :8] = True
    return cells


async def test_a_tweak_keeps_the_cells_it_does_not_redraw_and_records_its_parent() -> None:
    _, [parent, _] = await _render(JOB, NoOpModel())
    source = EditSource(
        parent_image_id="img_job-1_0",
        tokens=parent.tokens,
        remask=base64.b64encode(pack_cells(_left_half())).decode(),
    )
    tweak = JOB.model_copy(update={"job_id": "job-2", "prompt": "at night", "n": 2, "edits": [source]})
    progress, stored = await _render(tweak, NoOpModel())

    before = _grid(parent.tokens)
    masked = [int((_grid(p.tokens[0]) == NoOpModel().mask_token).sum()) for p in progress]
    assert masked[0] < 8 * 16 and masked[-1] == 0, "only the left half is drawn, over the passes"
    for store in stored:
        after = _grid(store.tokens)
        assert np.array_equal(after[:, 8:], before[:, 8:]), "the right half keeps its tokens exactly"
        assert store.parent_image_id == "img_job-1_0" and store.prompt == "at night"
    assert not np.array_equal(_grid(stored[0].tokens)[:, :8], _grid(stored[1].tokens)[:, :8]), "seed + i"


async def test_an_uploaded_image_is_encoded_by_the_model_then_tweaked() -> None:
    model = NoOpModel()
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :, 2] = 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    source = EditSource(
        image_png=base64.b64encode(buffer.getvalue()).decode(),
        remask=base64.b64encode(pack_cells(_left_half())).decode(),
    )
    tweak = JOB.model_copy(update={"job_id": "job-3", "n": 1, "edits": [source]})
    _, [store] = await _render(tweak, model)
    encoded = model.encode_image(pixels)
    assert np.array_equal(_grid(store.tokens)[:, 8:], encoded[:, 8:])
    assert store.parent_image_id is None


async def test_a_tweak_without_a_source_image_fails_once() -> None:
    source = EditSource(remask=base64.b64encode(pack_cells(_left_half())).decode())
    tweak = JOB.model_copy(update={"job_id": "job-4", "edits": [source]})
    async with running_decoder(NoOpModel()) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, tweak, tweak.job_id, tier="pro")
        await eventually(now(lambda: len(decoder.stopped()) == 1), 10, "the job failed")
        [stopped] = decoder.stopped()
        assert stopped.reason == "failed" and "token grid or an image" in (stopped.message or "")
        assert decoder.stored() == []


async def test_a_redispatched_job_resumes_from_its_checkpoint_and_ends_like_the_uninterrupted_one() -> None:
    progress, stored = await _render(JOB, NoOpModel())
    [checkpoint] = [p for p in progress if p.pass_index == 2]
    resumed_job = JOB.model_copy(update={"attempt": 1, "resume_pass": 2, "resume_tokens": checkpoint.tokens})

    async with running_decoder(NoOpModel()) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, resumed_job, JOB.job_id)
        await eventually(now(lambda: len(decoder.stored()) >= 2), 10, "stored images")
        [started] = decoder.events(topics.RENDER_PROGRESS, RenderStarted)
        assert isinstance(started, RenderStarted)
        assert (started.attempt, started.pass_index, started.total_passes) == (1, 2, 4)
        await eventually(now(lambda: len(decoder.progress()) >= 2), 10, "the last pass reported")
        assert [(p.pass_index, p.tokens) for p in decoder.progress()] == [
            (p.pass_index, p.tokens) for p in progress if p.pass_index > 2
        ]
        assert [(s.tokens, s.data) for s in decoder.stored()] == [(s.tokens, s.data) for s in stored]


async def test_a_resumed_job_without_its_checkpoints_fails_instead_of_rendering_something_else() -> None:
    broken = JOB.model_copy(update={"attempt": 1, "resume_pass": 2, "resume_tokens": ["AAAA"]})
    async with running_decoder(NoOpModel()) as decoder:
        await decoder.send(topics.RENDER_CONSUMER, broken, JOB.job_id)
        [stopped] = await eventually(now(decoder.stopped), 10, "the render stopped")
        assert (stopped.reason, stopped.pass_index) == ("failed", 2)
        assert "2 images carries 1 checkpoints" in stopped.message
        assert decoder.progress() == [] and decoder.stored() == []
