"""The batching decoder on the in-memory broker: jobs share passes, paid jobs preempt free ones.

The models here record every batched pass, so the tests read what ran together from the
model itself rather than from timing.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest

from libs import topics
from libs.bus import EventPublisher
from libs.bus.memory import InMemoryBroker
from libs.events import REGISTRY, Envelope
from libs.events.schemas import EditSource, RenderJob, RenderProgressed, RenderStarted, RenderStopped, StoreImage
from libs.model.interface import ImageModel, RenderState, pack_cells, pack_tokens
from libs.model.noop import NoOpModel
from libs.model.registry import load_model
from libs.runtime.service import ServiceRuntime
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap
from services.decoder.engine import STATS_WINDOW_S, BatchEngine, BatchStats, Render
from services.decoder.runner import ModelRunner
from services.decoder.scheduler import plan_render
from tests.helpers import eventually, render_job, send_to_lane
from tests.unit.decoder.harness import lane_broker, now, serving


class RecordingModel(NoOpModel):
    """The no-op model, recording the jobs (prompts) of every batched pass."""

    def __init__(self, pass_seconds: float = 0.0, refuse: str = "") -> None:
        super().__init__(pass_seconds)
        self.passes: list[list[str]] = []
        self.refuse = refuse

    def step(self, states: list[RenderState]) -> list[RenderState]:
        if self.refuse and any(s.prompt == self.refuse for s in states):
            raise ValueError(f"the model refuses {self.refuse!r}")
        self.passes.append([s.prompt for s in states])
        return super().step(states)


class Recorded:
    """Any model, recording the prompts of every batched pass."""

    def __init__(self, model: ImageModel) -> None:
        self.model = model
        self.name, self.grid_size = model.name, model.grid_size
        self.codebook_size, self.mask_token = model.codebook_size, model.mask_token
        self.passes: list[list[str]] = []

    def schedule(self, total_passes: int) -> list[int]:
        return self.model.schedule(total_passes)

    def start(
        self,
        prompt: str,
        seed: int,
        total_passes: int,
        init_tokens: np.ndarray | None = None,
        remask: np.ndarray | None = None,
    ) -> RenderState:
        return self.model.start(prompt, seed, total_passes, init_tokens, remask)

    def step(self, states: list[RenderState]) -> list[RenderState]:
        self.passes.append([s.prompt for s in states])
        return self.model.step(states)

    def preview(self, tokens: np.ndarray, size: int) -> np.ndarray:
        return self.model.preview(tokens, size)

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        return self.model.encode_image(rgb)


class Decoder:
    """A running batching decoder on the in-memory broker."""

    def __init__(self, broker: InMemoryBroker, runtime: ServiceRuntime) -> None:
        self.broker = broker
        self.runtime = runtime

    async def send(self, render: RenderJob) -> None:
        await send_to_lane(self.broker.producer(), render)

    def events(self, topic: str = topics.RENDER_PROGRESS) -> list[object]:
        return [REGISTRY.decode(Envelope.from_bytes(r.value)) for r in self.broker.records(topic)]

    def of(self, job_id: str, kind: type) -> list:  # type: ignore[type-arg]
        topic = topics.STORAGE_BLOBS if kind is StoreImage else topics.RENDER_PROGRESS
        return [e for e in self.events(topic) if isinstance(e, kind) and getattr(e, "job_id", None) == job_id]

    def stored(self, job_id: str) -> list[StoreImage]:
        return self.of(job_id, StoreImage)


@asynccontextmanager
async def batching_decoder(
    model: ImageModel, batch_images: int, preempt: bool = True, mixed_batch_images: int = 0
) -> AsyncIterator[Decoder]:
    broker = lane_broker()
    settings = DecoderSettings(
        heartbeat_interval_s=10,
        instance_id="decoder-b",
        batch_images=batch_images,
        preempt=preempt,
        mixed_batch_images=mixed_batch_images,
        device="cpu",
    )
    runtime = bootstrap(settings, producer=broker.producer(), consumer_factory=broker.consumer, model=model)
    async with serving(runtime):
        yield Decoder(broker, runtime)


def solo_tokens(model: NoOpModel, render: RenderJob) -> list[bytes]:
    """The final grids of a job rendered alone, image by image."""
    out = []
    for i in range(render.n):
        state = model.start(render.prompt, render.seed + i, render.passes)
        while not state.done:
            [state] = model.step([state])
        out.append(pack_tokens(state.tokens))
    return out


async def test_jobs_that_wait_together_share_every_pass_up_to_the_limit_in_images() -> None:
    model = RecordingModel(pass_seconds=0.01)
    async with batching_decoder(model, batch_images=4) as decoder:
        jobs = [render_job("a"), render_job("b", n=2), render_job("c"), render_job("d")]
        for render in jobs:
            await decoder.send(render)
        for render in jobs:

            def all_stored(r: RenderJob = render) -> bool:
                return len(decoder.stored(r.job_id)) == r.n

            await eventually(now(all_stored), 10, f"{render.job_id}")

        # The four images of the first pass: b's two and two single jobs (the lane's partitions
        # come in the broker's order); the fourth job waits its turn.
        first = model.passes[0]
        assert len(first) == 4 and first.count("b") == 2 and len(set(first)) == 3
        assert max(len(p) for p in model.passes) == 4
        assert len(model.passes) < sum(r.passes for r in jobs), "passes were shared"
        for render in jobs:
            grids = [base64.b64decode(s.tokens) for s in sorted(decoder.stored(render.job_id), key=lambda s: s.index)]
            assert grids == solo_tokens(NoOpModel(), render)
            sequences = [e.sequence for e in _envelopes(decoder, render.job_id)]
            assert sequences == sorted(sequences), "a job's events stay in order"


def _envelopes(decoder: Decoder, job_id: str) -> list[Envelope]:
    return [
        e
        for e in (Envelope.from_bytes(r.value) for r in decoder.broker.records(topics.RENDER_PROGRESS))
        if e.aggregate_id == job_id
    ]


async def test_a_jobs_images_are_the_same_bytes_alone_or_in_any_batch() -> None:
    # The built-in model: a real batched forward, not a per-state loop.
    model = Recorded(load_model("builtin", "cpu"))
    tweak_source = EditSource(
        tokens=base64.b64encode(pack_tokens(np.arange(256).reshape(16, 16) % model.codebook_size)).decode(),
        remask=base64.b64encode(pack_cells(np.eye(16, dtype=bool))).decode(),
    )
    subject = render_job(
        "subject", prompt="a red circle on grass", model="builtin", passes=8, size=256, preview_passes=[3]
    )
    companions = [
        render_job("c1", prompt="a blue star", model="builtin", passes=4, n=2, seed=3),
        render_job("c2", tier="free", prompt="a green square", model="builtin", passes=12, seed=5),
        render_job("c3", prompt="a yellow moon", model="builtin", passes=8, edits=[tweak_source], seed=9),
    ]

    async with batching_decoder(model, batch_images=1) as decoder:
        await decoder.send(subject)
        await eventually(now(lambda: decoder.stored("subject")), 60, "the render alone")
        alone = decoder.stored("subject")[0]
        alone_previews = [p.previews for p in decoder.of("subject", RenderProgressed)]

    async with batching_decoder(model, batch_images=8) as decoder:
        for render in companions[:2]:
            await decoder.send(render)
        await eventually(now(lambda: decoder.of("c1", RenderProgressed)), 60, "the companions under way")
        await decoder.send(subject)
        await decoder.send(companions[2])
        await eventually(now(lambda: decoder.stored("subject")), 60, "the render in a batch")
        batched = decoder.stored("subject")[0]
        batched_previews = [p.previews for p in decoder.of("subject", RenderProgressed)]

    assert (batched.tokens, batched.data) == (alone.tokens, alone.data)
    assert batched_previews == alone_previews
    shared = [batch for batch in model.passes if "a red circle on grass" in batch and len(batch) > 1]
    assert shared, "the subject shared passes with its companions"


async def test_a_paid_job_preempts_the_youngest_free_render_and_starts_within_a_pass() -> None:
    model = RecordingModel(pass_seconds=0.05)
    # A mixed cap as large as the batch: only the preemption for room applies here.
    async with batching_decoder(model, batch_images=2, mixed_batch_images=2) as decoder:
        old, young = render_job("free-old", "free", passes=12), render_job("free-young", "free", passes=12, seed=5)
        await decoder.send(old)
        await eventually(now(lambda: decoder.of("free-old", RenderStarted)), 10, "the first free render")
        await decoder.send(young)
        await eventually(now(lambda: decoder.of("free-young", RenderProgressed)), 10, "a full batch")

        passes_before = len(model.passes)
        await decoder.send(render_job("paid", "pro", passes=4))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

        # The paid job ran its first pass at most one pass after it arrived.
        first = next(i for i, batch in enumerate(model.passes) if "paid" in batch)
        assert first <= passes_before + 1
        [stopped] = decoder.of("free-young", RenderStopped)
        assert (stopped.reason, stopped.attempt) == ("preempted", 0)
        assert decoder.of("free-old", RenderStopped) == []
        # Its checkpoint is out before it leaves: the last progress is the pass it stopped after.
        progress = decoder.of("free-young", RenderProgressed)
        assert progress[-1].pass_index == stopped.pass_index >= 1
        assert decoder.runtime.lane_report is not None and decoder.runtime.batch_report is not None
        lanes = decoder.runtime.lane_report()
        assert lanes["free"].preempted == 1 and lanes["pro"].preempted == 0
        batch = decoder.runtime.batch_report()
        assert (batch.limit, batch.pool) == (2, "consumer") and batch.passes >= len(model.passes) - 1
        assert 0 < batch.occupancy <= 1

        # The requests service dispatches it again from that checkpoint: it ends like a solo render,
        # and nothing of it is stored twice.
        resumed = young.model_copy(
            update={"attempt": 1, "resume_pass": stopped.pass_index, "resume_tokens": progress[-1].tokens}
        )
        await decoder.send(resumed)
        await eventually(now(lambda: decoder.stored("free-young")), 20, "the resumed render")
        await eventually(now(lambda: decoder.stored("free-old")), 20, "the other free render")
        [stored] = decoder.stored("free-young")
        assert base64.b64decode(stored.tokens) == solo_tokens(NoOpModel(), young)[0]
        [again] = [s for s in decoder.of("free-young", RenderStarted) if s.attempt == 1]
        assert again.pass_index == stopped.pass_index


async def test_on_cpu_a_paid_render_shares_its_batch_with_no_free_one() -> None:
    model = RecordingModel(pass_seconds=0.05)
    async with batching_decoder(model, batch_images=4) as decoder:  # the CPU default cap: 1
        for index in range(3):
            await decoder.send(render_job(f"free-{index}", "free", passes=12, seed=index))
        await eventually(
            now(lambda: all(decoder.of(f"free-{i}", RenderProgressed) for i in range(3))), 10, "a free batch"
        )
        await decoder.send(render_job("paid", "pro", passes=4))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

        # Every free render left (checkpointed) for the paid one, which then ran its passes alone.
        assert all(decoder.of(f"free-{i}", RenderStopped) for i in range(3))
        assert [batch for batch in model.passes if "paid" in batch and len(batch) > 1] == []


async def test_a_paid_job_that_finds_the_batch_full_runs_alone_from_the_next_pass() -> None:
    model = RecordingModel(pass_seconds=0.2)
    async with batching_decoder(model, batch_images=4) as decoder:  # the CPU default cap: 1
        for index in range(6):
            await decoder.send(render_job(f"free-{index}", "free", passes=12, seed=index))
        await eventually(now(lambda: len(model.passes) >= 2 and len(model.passes[-1]) == 4), 10, "a full batch")
        # Just after a pass of four free renders began: the paid job arrives well within it.
        began = len(model.passes)
        await eventually(now(lambda: len(model.passes) > began), 10, "the next pass")
        in_progress = len(model.passes)
        await decoder.send(render_job("paid", "pro", passes=4))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

        # It did not wait a pass beside the free renders it preempted: the pass after the one
        # under way when it arrived is its first, and it ran alone.
        first = next(i for i, batch in enumerate(model.passes) if "paid" in batch)
        assert first == in_progress, model.passes[in_progress - 1 : first + 1]
        assert [batch for batch in model.passes if "paid" in batch and len(batch) > 1] == []


@pytest.fixture
def fetch_waits(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The jobs in the batch at every boundary's wait for jobs being fetched, in order."""
    waits: list[list[str]] = []
    wait_for_fetch = BatchEngine._await_arrivals

    async def recorded(engine: BatchEngine, images: int, outranking: bool = False) -> None:
        waits.append(engine.running())
        await wait_for_fetch(engine, images, outranking)

    monkeypatch.setattr(BatchEngine, "_await_arrivals", recorded)
    return waits


async def test_a_paid_render_does_not_wait_at_its_boundaries_for_free_jobs_the_cap_keeps_out(
    fetch_waits: list[list[str]],
) -> None:
    # A boundary gives jobs being fetched a moment to join; with free jobs waiting in Kafka and
    # a paid render in the batch, the mixed cap keeps them out, so that moment is lost time
    # on every pass of the paid render.
    model = RecordingModel(pass_seconds=0.05)
    async with batching_decoder(model, batch_images=4) as decoder:  # the CPU default cap: 1
        for index in range(8):
            await decoder.send(render_job(f"free-{index}", "free", passes=12, seed=index))
        await eventually(now(lambda: len(model.passes) >= 2 and len(model.passes[-1]) == 4), 10, "a full batch")
        await decoder.send(render_job("paid", "pro", passes=6))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

    assert [batch for batch in model.passes if "paid" in batch] == [["paid"]] * 6
    assert [running for running in fetch_waits if "paid" in running] == []


async def test_free_renders_that_leave_for_a_fetched_paid_job_make_no_wait_for_free_ones(
    fetch_waits: list[list[str]],
) -> None:
    # The batch has room, so the paid job is fetched at once; at the boundary it joins and the
    # mixed cap sends the free renders away. The free jobs waiting in Kafka cannot take their
    # place: the boundary must not hold the paid render's first pass for their fetch.
    model = RecordingModel(pass_seconds=0.1)
    async with batching_decoder(model, batch_images=4) as decoder:  # the CPU default cap: 1
        for index in range(2):
            await decoder.send(render_job(f"free-{index}", "free", passes=12, seed=index))
        await eventually(now(lambda: len(model.passes) >= 2 and len(model.passes[-1]) == 2), 10, "two free renders")
        await decoder.send(render_job("paid", "pro", passes=4))
        for index in range(2, 6):
            await decoder.send(render_job(f"free-{index}", "free", passes=12, seed=index))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

    assert [batch for batch in model.passes if "paid" in batch] == [["paid"]] * 4
    assert [running for running in fetch_waits if "paid" in running] == []


async def test_a_paid_job_fetched_during_the_boundarys_wait_is_not_waited_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race behind an occasional failure of the test above: the boundary reads the backlog
    # while the paid job is still in Kafka, waits for it (an outranking wait), and it arrives
    # during that wait. It joins at once and the free renders leave; the boundary must not
    # then wait again, with the paid render alone, for a job no longer in Kafka.
    model = RecordingModel(pass_seconds=0.05)
    runner = ModelRunner(lambda: model)
    await runner.load()
    engine = BatchEngine(runner, EventPublisher(InMemoryBroker().producer()), "decoder-r", limit=4, mixed_limit=1)

    def render(job_id: str, lane: str, priority: int) -> Render:
        job = render_job(job_id, lane, passes=8)
        plan = plan_render(job.job_id, job.passes)
        states = [model.start(job_id, 11, 8)]
        return Render(job, Envelope.wrap(job, aggregate_id=job_id), lane, priority, 0, states, plan)

    paid = render("paid", "pro", 0)
    in_kafka: dict[int, int] = {}

    async def backlog() -> dict[int, int]:
        return dict(in_kafka)

    engine.follow_backlog(backlog)
    waits: list[list[str]] = []
    wait_for_fetch = BatchEngine._await_arrivals

    async def fetched_while_waiting(engine: BatchEngine, images: int, outranking: bool = False) -> None:
        waits.append(engine.running())
        if in_kafka:  # the lane gate fetches the paid job now
            in_kafka.clear()
            tasks.append(asyncio.create_task(engine.submit(paid)))
        await wait_for_fetch(engine, images, outranking)

    monkeypatch.setattr(BatchEngine, "_await_arrivals", fetched_while_waiting)
    stop = asyncio.Event()
    loop = asyncio.create_task(engine.run(stop))
    tasks = [asyncio.create_task(engine.submit(render(f"free-{i}", "free", 2))) for i in range(2)]
    await eventually(now(lambda: len(model.passes) >= 1 and len(model.passes[-1]) == 2), 10, "two free renders")
    in_kafka[0] = 1
    await eventually(now(lambda: "paid" in engine.running()), 10, "the paid render")
    await eventually(now(lambda: len([b for b in model.passes if "paid" in b]) >= 2), 10, "two passes of it")
    stop.set()
    await asyncio.wait_for(loop, 10)
    await asyncio.gather(*tasks, return_exceptions=True)
    runner.close()

    assert waits == [["free-0", "free-1"]], "one wait, for the paid job while it was still in Kafka"
    assert [batch for batch in model.passes if "paid" in batch][:2] == [["paid"], ["paid"]]


async def test_without_preemption_the_paid_job_waits_for_a_free_render_to_end() -> None:
    model = RecordingModel(pass_seconds=0.02)
    async with batching_decoder(model, batch_images=1, preempt=False) as decoder:
        await decoder.send(render_job("free", "free", passes=6))
        await eventually(now(lambda: decoder.of("free", RenderProgressed)), 10, "the free render")
        await decoder.send(render_job("paid", "pro", passes=2))
        await eventually(now(lambda: decoder.stored("paid")), 10, "the paid render")

        assert decoder.of("free", RenderStopped) == []
        assert len(decoder.stored("free")) == 1
        assert all(len(batch) == 1 for batch in model.passes)


async def test_an_aborted_render_leaves_the_batch_and_its_companions_go_on() -> None:
    model = RecordingModel(pass_seconds=0.05)
    async with batching_decoder(model, batch_images=4) as decoder:
        await decoder.send(render_job("keep", passes=8))
        await decoder.send(render_job("drop", passes=8))
        await eventually(now(lambda: decoder.of("drop", RenderProgressed)), 10, "both rendering")
        abort = Envelope.wrap(
            REGISTRY.get("render.abort_render").model_validate({"job_id": "drop", "reason": "cancelled"}),  # type: ignore[union-attr]
            aggregate_id="drop",
        )
        await EventPublisher(decoder.broker.producer()).publish(topics.RENDER_CONTROL, abort)

        [stopped] = await eventually(now(lambda: decoder.of("drop", RenderStopped)), 10, "the abort")
        await eventually(now(lambda: decoder.stored("keep")), 10, "the companion finished")
        assert stopped.reason == "aborted" and decoder.stored("drop") == []
        after = [batch for batch in model.passes if "keep" in batch][stopped.pass_index :]
        assert all(batch == ["keep"] for batch in after)


async def test_a_state_the_model_refuses_fails_its_own_job_only() -> None:
    model = RecordingModel(pass_seconds=0.02, refuse="poison")
    async with batching_decoder(model, batch_images=4) as decoder:
        await decoder.send(render_job("poison"))
        await decoder.send(render_job("fine"))
        await eventually(now(lambda: decoder.stored("fine")), 10, "the healthy job")
        [stopped] = await eventually(now(lambda: decoder.of("poison", RenderStopped)), 10, "the refused job")

        assert stopped.reason == "failed" and "refuses" in stopped.message
        assert decoder.stored("poison") == []


def test_batch_figures_average_the_passes_of_the_window() -> None:
    now = [100.0]
    stats = BatchStats(limit=4, pool="api", clock=lambda: now[0])
    stats.record_pass(images=4, seconds=0.5)
    stats.record_pass(images=2, seconds=0.25)
    stats.record_finished("pro", 3)
    stats.preempted["free"] += 1

    report = stats.report(images_now=2)

    assert (report.pool, report.limit, report.images, report.passes) == ("api", 4, 2, 2)
    assert report.occupancy == 0.75 and report.pass_s == 0.375
    assert report.images_per_s == round(3 / STATS_WINDOW_S, 4) and stats.lanes() == {"pro", "free"}
    now[0] += STATS_WINDOW_S + 1  # the window moved past every pass: nothing recent
    later = stats.report(images_now=0)
    assert (later.occupancy, later.pass_s, later.images_per_s, later.passes) == (0.0, 0.0, 0.0, 2)
