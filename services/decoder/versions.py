"""The versions of the served model a decoder renders with, and their automatic rollback.

A render job names the version its gateway routed it to (`RenderJob.version`). The
decoder follows the policy topic, where the versions and rollouts live
(libs/events/schemas/models.py), folds it into `ModelReleases`, and before a job joins the
batch makes sure its version is loaded:

- `base` is the model `DARKROOM_MODEL` names, loaded at start;
- another version is loaded once, off the event loop, the first time a job needs it: the
  sha256 of its folder must match the one recorded when it was added, and its grid and
  codebook must match `base` (a job's checkpoint must mean the same to every version that
  may resume it);
- a version that fails to load is reported (`ModelVersionFailed`, on the policy topic and
  its history): that is its rollback, every gateway stops routing to it and every decoder
  renders its jobs with the stable version instead. This decoder applies it at once, so
  the job that found the failure renders with the version before.

A version that fails on renders is reported the same way by the batch engine
(`report_render_failure`); its renders go back to their lanes from their checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from libs.bus import EventPublisher
from libs.bus.logreader import LogReader, read_to_end
from libs.bus.ports import Record
from libs.bus.publisher import publish_in_force
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import BASE_VERSION, ModelVersionAdded, ModelVersionFailed, RenderJob
from libs.model.interface import ImageModel
from libs.releases import ModelReleases, VersionLoader, VersionMismatch, event_key

log = logging.getLogger(__name__)

UNKNOWN_VERSION_WAIT_S: Final = 5.0
"""How long a job naming a version this decoder has not read yet waits for the policy
topic to bring it (gateways and decoders read it independently)."""

LOAD_TIMEOUT_S: Final = 60.0


class ModelVersions:
    """Which version renders each job, loading versions as jobs need them.

    Args:
        served_model: The API name of the model this decoder serves.
        releases: The fold of the policy topic's model events (fed by `follow`).
        load_version: Loads a version (checking its checksum); runs in a thread.
        base: Returns the loaded `base` model (its grid and codebook bind every version).
        add: Makes a loaded version available to the batch (`ModelRunner.add_version`).
        publisher: Publishes the failure of a version.
        decoder_id: This instance, named in failure events.
    """

    def __init__(
        self,
        served_model: str,
        releases: ModelReleases,
        load_version: VersionLoader,
        base: Callable[[], ImageModel],
        add: Callable[[str, ImageModel], None],
        publisher: EventPublisher,
        decoder_id: str,
    ) -> None:
        self.model = served_model
        self.releases = releases
        self._load_version = load_version
        self._base = base
        self._add = add
        self._publisher = publisher
        self._decoder_id = decoder_id
        self._loaded: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    # -- the policy topic ----------------------------------------------------------------

    def on_record(self, record: Record) -> None:
        """Folds one policy-topic record. Tier policies are not ours, and a record that does
        not decode is the gateways' to dead-letter (they own the topic): both are skipped."""
        try:
            envelope = Envelope.from_bytes(record.value)
            if REGISTRY.get(envelope.type) is None:
                return
            event = REGISTRY.decode(envelope)
        except DecodeError:
            return
        if self.releases.apply(event):
            self._changed.set()

    # -- jobs ----------------------------------------------------------------------------

    async def resolve(self, job: RenderJob) -> str:
        """The version to render the job with, loaded and ready.

        The job's own version unless it failed (then the stable version in force); a
        version that fails to load now is reported and the next one down is tried, down
        to `base`, which is always loaded.
        """
        version = self.releases.serving(self.model, job.version)
        while version != BASE_VERSION:
            added = await self._added(version)
            if added is None:
                stable = self.releases.routing(self.model).stable
                log.warning(
                    "job %s names version %s of %s, which the policy topic does not hold: rendering with %s",
                    job.job_id,
                    version,
                    self.model,
                    stable if stable != version else BASE_VERSION,
                )
                version = stable if stable != version else BASE_VERSION
                continue
            try:
                await self._ensure_loaded(added)
                return version
            except Exception as exc:  # noqa: BLE001 - any failure to load rolls the version back
                await self.report_failure(version, "load", f"{type(exc).__name__}: {exc}")
                version = self.releases.serving(self.model, version)
        return BASE_VERSION

    async def report_render_failure(self, version: str, reason: str) -> None:
        """The batch engine's report of a render that failed with this version."""
        await self.report_failure(version, "render", reason)

    async def report_failure(self, version: str, stage: str, reason: str) -> None:
        """Rolls a version back: applied here at once, then published for every gateway and decoder."""
        if self.releases.failed(self.model, version):
            return  # already rolled back (by this decoder or another)
        failure = ModelVersionFailed(
            model=self.model,
            version=version,
            stage="load" if stage == "load" else "render",
            reason=reason[:500],
            decoder=self._decoder_id,
        )
        self.releases.apply(failure)
        log.error(
            "model %s version %s failed to %s (%s): rolled back, %s renders its jobs",
            self.model,
            version,
            "load" if stage == "load" else "render",
            reason,
            self.releases.routing(self.model).stable,
        )
        await publish_in_force(self._publisher, failure, event_key(failure))

    async def _added(self, version: str) -> ModelVersionAdded | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNKNOWN_VERSION_WAIT_S
        while (added := self.releases.version(self.model, version)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass
        return added

    async def _ensure_loaded(self, added: ModelVersionAdded) -> None:
        task = self._loaded.get(added.version)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.create_task(self._load(added))
            self._loaded[added.version] = task
        await asyncio.shield(task)

    async def _load(self, added: ModelVersionAdded) -> None:
        log.info("loading version %s of %s from %s", added.version, self.model, added.source)
        model = await asyncio.wait_for(asyncio.to_thread(self._load_version, added), LOAD_TIMEOUT_S)
        base = self._base()
        if (model.grid_size, model.codebook_size) != (base.grid_size, base.codebook_size):
            raise VersionMismatch(
                f"version {added.version} has a {model.grid_size}x{model.grid_size} grid of "
                f"{model.codebook_size} codes; base has {base.grid_size}x{base.grid_size} of {base.codebook_size}"
            )
        self._add(added.version, model)
        log.info("version %s of %s ready", added.version, self.model)


class ReleaseFeed:
    """Reads the policy topic from its beginning before the decoder takes jobs, then follows it."""

    def __init__(self, reader: LogReader, versions: ModelVersions) -> None:
        self._reader = reader
        self._versions = versions

    async def load(self) -> None:
        """Start the reader and fold every record up to the current end."""
        await self._reader.start()
        await read_to_end(self._reader, self._apply, timeout_s=LOAD_TIMEOUT_S)

    async def follow(self, stop: asyncio.Event) -> None:
        """Fold records as they arrive, until `stop` is set."""
        while not stop.is_set():
            for record in await self._reader.getmany(200, 500):
                self._versions.on_record(record)

    async def _apply(self, record: Record) -> None:
        self._versions.on_record(record)

    async def close(self) -> None:
        """Stop the reader."""
        await self._reader.stop()
