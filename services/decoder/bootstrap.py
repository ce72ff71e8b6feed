"""Wiring of the decoder service."""

from __future__ import annotations

from libs import topics
from libs.bus import RejectedMessage
from libs.bus.logreader import KafkaLogReader, LogReader, PortLogReader
from libs.bus.ports import Producer, Record
from libs.events import REGISTRY, Envelope
from libs.events.ids import new_ulid
from libs.events.schemas import AbortRender, RenderJob
from libs.lanes import model_topic, models, pool_group
from libs.model.interface import ImageModel
from libs.releases import ModelReleases, VersionLoader, checked_loader
from libs.runtime.dispatch import Dispatcher
from libs.runtime.service import ConsumerFactory, ServiceRuntime, Subscription
from libs.runtime.wiring import kafka_consumer_factory, kafka_producer
from libs.settings import DecoderSettings
from services.decoder.assignor import LaneSpreadAssignor
from services.decoder.engine import BatchEngine
from services.decoder.handlers import DecoderHandlers
from services.decoder.lanes import LaneGate, lane_name, lane_priority
from services.decoder.runner import ModelRunner, model_loader, resolve_device
from services.decoder.versions import ModelVersions, ReleaseFeed

SERVICE = "decoder"

MAX_BATCH_IMAGES = 1024
"""The most jobs one fetch may bring (the gate asks for the batch's room, never more)."""


def control_group(instance_id: str) -> str:
    """The control topic's consumer group of one decoder instance: a group of its own.

    Every instance must see every abort, since any of them may be rendering the job or
    hold it next in its lane. A group per instance gives each all partitions, and its
    committed offsets mean an instance restarted under the same id reads the aborts
    published while it was down; a new instance reads the topic's retained aborts.
    """
    return f"{SERVICE}-control-{instance_id}"


def bootstrap(
    settings: DecoderSettings,
    *,
    producer: Producer | None = None,
    consumer_factory: ConsumerFactory | None = None,
    model: ImageModel | None = None,
    version_loader: VersionLoader | None = None,
    policy_reader: LogReader | None = None,
) -> ServiceRuntime:
    """Wire the decoder service; tests pass in-memory adapters and a model instance.

    Args:
        settings: The decoder's settings (model, device, pool).
        producer: The producer; Kafka's when omitted.
        consumer_factory: Makes consumer-group members; Kafka's when omitted.
        model: A ready model instance; when omitted, `settings.model` is loaded on
            `settings.device` at start-up.
        version_loader: Loads other versions of the served model (libs.releases); by
            default `checked_loader` on the settings' device.
        policy_reader: Reads the policy topic (the versions and rollouts) from its
            beginning; Kafka's when omitted, else a reader over `consumer_factory`.

    Returns:
        The runtime, ready for `run_service`.
    """
    runner = ModelRunner(
        (lambda: model) if model is not None else model_loader(settings.model, settings.device),
        threads=settings.model_threads,
    )
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        producer=producer or kafka_producer(settings, SERVICE),
        # Every lane spread over the pool: a decoder with no partition of a lane idles
        # while that lane has work (services/decoder/assignor.py).
        consumer_factory=consumer_factory or kafka_consumer_factory(settings, SERVICE, assignor=LaneSpreadAssignor),
    )
    versions = ModelVersions(
        settings.served_model,
        ModelReleases(),
        version_loader or checked_loader(settings.device),
        base=lambda: runner.model,
        add=runner.add_version,
        publisher=runtime.publisher,
        decoder_id=runtime.instance_id,
    )
    # The limit is the setting's, or the device default once the model is loaded (below).
    engine = BatchEngine(
        runner,
        runtime.publisher,
        runtime.instance_id,
        limit=settings.batch_images or 1,
        preempt=settings.preempt,
        pool=settings.pool,
        version_failed=versions.report_render_failure,
    )
    # The served model's pool: its own render topic and consumer group (libs.lanes).
    if settings.served_model not in models():
        raise ValueError(
            f"DARKROOM_SERVED_MODEL={settings.served_model!r} has no render topics: declare it under "
            f"`models:` in infra/topics.yaml (models: {', '.join(models())})"
        )
    render_topic = model_topic(settings.served_model, settings.pool)
    handlers = DecoderHandlers(runner, engine, versions)
    if policy_reader is None:
        if consumer_factory is None:
            policy_reader = KafkaLogReader(settings.kafka_bootstrap, [topics.POLICIES], client_id=f"darkroom-{SERVICE}")
        else:
            # A group nobody has used starts at the beginning; the reader never commits.
            policy_reader = PortLogReader(consumer_factory(f"{SERVICE}-releases-{new_ulid()}", [topics.POLICIES]))
    releases = ReleaseFeed(policy_reader, versions)
    gate = LaneGate(engine.wait_for_room, engine.room_for)
    engine.follow_backlog(gate.backlog)

    async def take(envelope: Envelope, record: Record) -> None:
        if REGISTRY.get(envelope.type) is None:
            raise RejectedMessage(f"unknown event type {envelope.type!r} for {SERVICE}")
        job = REGISTRY.decode(envelope)
        if not isinstance(job, RenderJob):
            return  # another payload on the render topic: nothing for a decoder
        await handlers.on_job(job, envelope, lane_name(record.tp), lane_priority(record.tp))
        gate.took(record)

    control = Dispatcher(SERVICE)
    control.on(AbortRender, handlers.on_abort)
    runtime.subscriptions += [
        # Only as many jobs as the batch has room for, fetched from the lanes that come
        # first (services.decoder.lanes): a job fetched early would wait in memory while
        # a paid one arrives. The jobs of one fetch join the batch side by side.
        Subscription(
            group=pool_group(render_topic),
            topics=[render_topic],
            handler=take,
            max_records=MAX_BATCH_IMAGES,
            concurrency=MAX_BATCH_IMAGES,
            before_poll=gate.before_poll,
            # A job's offset is committed as it joins the batch (the commit runs beside the
            # loop): one left uncommitted would be rendered again by the next owner of its
            # partition after a crash.
            commit_interval_s=0,
        ),
        Subscription(group=control_group(runtime.instance_id), topics=[topics.RENDER_CONTROL], handler=control),
    ]

    async def model_loaded() -> bool:
        return runner.loaded

    async def load_model() -> None:
        await runner.load()
        device = resolve_device(settings.device)
        engine.set_limit(settings.batch_limit(device))
        engine.mixed_limit = settings.mixed_limit(device)

    runtime.checks["model"] = model_loaded
    # The versions and rollouts are read before any job is taken, then followed.
    runtime.on_start.append(releases.load)
    runtime.background.append(releases.follow)
    runtime.on_stop.append(releases.close)
    runtime.lane_report = lambda: gate.report(engine.stats)
    runtime.batch_report = lambda: engine.report().model_copy(update={"model": settings.served_model})
    # Loaded before the consumers start, so no job is taken before the model can render it.
    runtime.on_start.append(load_model)
    runtime.background.append(engine.run)

    async def release_model_thread() -> None:
        runner.close()

    runtime.on_stop.append(release_model_thread)
    return runtime
