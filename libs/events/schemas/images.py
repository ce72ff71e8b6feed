"""Image jobs: the gateway's commands and the request aggregate's events.

`JobAccepted` is the first event of every job and carries its whole specification,
so the job's stream alone rebuilds it. Later events record what happened to it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from libs.events.envelope import Event
from libs.events.registry import REGISTRY
from libs.events.schemas.accounts import Tier

OutputFormat = Literal["png", "jpeg", "webp"]
Quality = Literal["low", "medium", "high"]
Background = Literal["opaque", "auto"]
Moderation = Literal["auto", "low"]


class EditSource(BaseModel):
    """An image a tweak starts from, and which of its token-grid cells to draw again.

    A darkroom image is recognized by the gateway and brings its stored token grid; any
    other image travels as a small PNG that the decoder's VQ encoder turns into a grid.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    parent_image_id: str | None = None
    """The darkroom image being tweaked (the lineage of the result); None for an upload."""
    tokens: str | None = None
    """base64 of the parent's packed token grid (libs.model.interface.pack_tokens)."""
    image_png: str | None = None
    """base64 PNG of an uploaded image (RGB, at most 256x256), when there is no grid."""
    remask: str
    """base64 of one byte per grid cell, row-major: 1 = draw again, 0 = keep."""


class JobSpec(BaseModel):
    """Everything that defines an image job, as the gateway validated it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: str
    tier: Tier
    prompt: str
    model: str
    n: int
    size: int
    quality: Quality
    passes: int
    output_format: OutputFormat
    output_compression: int
    background: Background
    moderation: Moderation
    partial_images: int = 0
    seed: int
    user: str | None = None
    text_tokens: int = 0
    edits: list[EditSource] = []
    """For a tweak, the images it starts from; image i of the job starts from edits[i % len]."""
    lane: str | None = None
    """The render lane from the tier's policy; None: the tier's own lane."""
    idempotency_key: str | None = None
    """The client's Idempotency-Key header, when it sent one."""
    version: str = "base"
    """The model version the gateway routed the job to (libs.releases); a decoder renders
    it with that version, or with the stable one when that version failed."""


@REGISTRY.register
class GenerateImage(Event):
    """Gateway -> requests: start a job (keyed by job id)."""

    TYPE = "images.generate_image"

    job_id: str
    spec: JobSpec
    created_at: datetime


@REGISTRY.register
class CancelJob(Event):
    """Gateway -> requests: the owner asks to cancel a job (keyed by job id)."""

    TYPE = "images.cancel_job"

    job_id: str
    account_id: str
    reason: Literal["requested", "client_disconnected"] = "requested"


@REGISTRY.register
class ExpireRenderLease(Event):
    """Requests -> requests: a rendering job's decoder stopped reporting; re-dispatch it.

    Proposed by the lease monitor and decided like any other input, against the job's
    durable state, so a stale or repeated proposal changes nothing.
    """

    TYPE = "images.expire_render_lease"

    job_id: str
    attempt: int
    pass_index: int


@REGISTRY.register
class JobAccepted(Event):
    """Requests: a job exists; the prompt check comes next."""

    TYPE = "images.job_accepted"

    job_id: str
    spec: JobSpec
    created_at: datetime


@REGISTRY.register
class JobQueued(Event):
    """Requests: the prompt passed and the render job is on its lane."""

    TYPE = "images.job_queued"

    job_id: str
    lane: str
    topic: str
    partition: int


@REGISTRY.register
class JobRenderStarted(Event):
    """Requests: a decoder started (or resumed) the render."""

    TYPE = "images.job_render_started"

    job_id: str
    attempt: int
    pass_index: int
    decoder: str = ""
    version: str = "base"
    """The model version rendering it (the routed one, or the stable one if that failed)."""


@REGISTRY.register
class JobRequeued(Event):
    """Requests: the job is dispatched again from its checkpoint, because its decoder
    stopped reporting (`lease_expired`) or handed it back for higher-priority work
    (`preempted`)."""

    TYPE = "images.job_requeued"

    job_id: str
    attempt: int
    """The new attempt."""
    resume_pass: int
    reason: Literal["lease_expired", "preempted"] = "lease_expired"


@REGISTRY.register
class JobProgressed(Event):
    """Requests: the decoder completed a pass."""

    TYPE = "images.job_progressed"

    job_id: str
    pass_index: int
    total_passes: int


class ImageRef(BaseModel):
    """One stored image of a job (the claim check the gateway reads)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    image_id: str
    object_key: str
    tokens_key: str
    content_type: str
    size_bytes: int
    sha256: str


class Usage(BaseModel):
    """Token accounting, in OpenAI's shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int
    text_tokens: int
    image_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@REGISTRY.register
class JobImageStored(Event):
    """Requests: storage kept one of the job's images. The image whose storing completes the
    job has no event of its own since completions carried their images: `JobCompleted` does."""

    TYPE = "images.job_image_stored"

    job_id: str
    image: ImageRef


@REGISTRY.register
class JobContentCleared(Event):
    """Requests: the final content check allowed what the decoder drew, before every image was
    stored. A clearance that completes the job has no event of its own: `JobCompleted` says it."""

    TYPE = "images.job_content_cleared"

    job_id: str
    pass_index: int
    policy_version: int


@REGISTRY.register
class JobCompleted(Event):
    """Requests: every image is stored and passed the final content check. It carries every
    image, the last one stored included (no `JobImageStored` of its own), and stands for the
    clearance when that came last (no `JobContentCleared`)."""

    TYPE = "images.job_completed"

    job_id: str
    images: list[ImageRef]
    usage: Usage
    account_id: str = ""
    """The job's owner; with its tier, model and acceptance time, what metering counts the
    completion by, so it keeps nothing per job. Empty in completions published before the
    job's facts were carried here: metering counts those by what it kept of `JobAccepted`."""
    tier: str = ""
    model: str = ""
    created_at: datetime | None = None
    """When the job was accepted (its usage counts on that UTC day)."""


@REGISTRY.register
class JobBlocked(Event):
    """Requests: safety blocked the prompt or the content being rendered."""

    TYPE = "images.job_blocked"

    job_id: str
    stage: Literal["prompt", "content"]
    category: str
    pass_index: int = 0
    policy_version: int = 0
    message: str


@REGISTRY.register
class JobCancelled(Event):
    """Requests: the owner cancelled the job before it ended; nothing more is rendered."""

    TYPE = "images.job_cancelled"

    job_id: str
    pass_index: int = 0
    reason: Literal["requested", "client_disconnected"] = "requested"


@REGISTRY.register
class JobFailed(Event):
    """Requests: the job cannot complete (for example the decoder failed)."""

    TYPE = "images.job_failed"

    job_id: str
    code: str
    message: str
