"""Render jobs on the lanes, aborts between passes, and per-pass progress.

Token grids travel compactly: each is the little-endian uint16 row-major grid
(`libs.model.interface.pack_tokens`, 512 bytes for 16x16) in base64.
"""

from __future__ import annotations

from typing import Literal

from libs.events.envelope import Event
from libs.events.registry import REGISTRY
from libs.events.schemas.accounts import Tier
from libs.events.schemas.images import Background, EditSource, OutputFormat


@REGISTRY.register
class RenderJob(Event):
    """Requests -> decoder, on the tier's lane partition: render a job's images."""

    TYPE = "render.render_job"

    job_id: str
    tier: Tier
    account_id: str = ""
    """The owner, recorded with the stored images."""
    prompt: str
    model: str
    seed: int
    n: int
    passes: int
    size: int
    output_format: OutputFormat
    output_compression: int
    background: Background
    preview_passes: list[int] = []
    """Completed-pass counts after which progress carries preview images (for streams)."""
    edits: list[EditSource] = []
    """For a tweak, what image i starts from (edits[i % len]); empty for a fresh render."""
    attempt: int = 0
    """0 for the first dispatch; each re-dispatch after a lost decoder counts one up."""
    resume_pass: int = 0
    """Passes already completed: a re-dispatched job resumes from its last checkpoint."""
    resume_tokens: list[str] = []
    """Per image, the checkpoint's packed token grid (base64), when resume_pass > 0."""
    content_check_passes: list[int] = []
    """Completed-pass counts after which progress carries the small pictures the safety
    service scores (`RenderProgressed.check_images`); the last pass always does."""
    version: str = "base"
    """The model version the job was routed to (libs.releases)."""


@REGISTRY.register
class AbortRender(Event):
    """Requests -> decoders: stop this job at the next pass boundary."""

    TYPE = "render.abort_render"

    job_id: str
    reason: Literal["blocked", "cancelled"]


@REGISTRY.register
class RenderStarted(Event):
    """Decoder: a decoder took the job and starts (or resumes) its passes: its lease begins."""

    TYPE = "render.render_started"

    job_id: str
    attempt: int
    pass_index: int
    """Passes already completed when the render starts (above 0 when resumed)."""
    total_passes: int
    decoder: str = ""
    version: str = "base"
    """The model version rendering it: the job's, or the stable one when the job's failed."""


@REGISTRY.register
class RenderProgressed(Event):
    """Decoder: a pass completed; the checkpoint of every image of the job."""

    TYPE = "render.render_progressed"

    job_id: str
    pass_index: int
    """Passes completed (1..total_passes)."""
    total_passes: int
    tokens: list[str]
    """Per image: base64 of the packed token grid."""
    previews: list[str] = []
    """Per image, on preview passes: base64 of the preview in the job's output format."""
    check_images: list[str] = []
    """Per image, on content-check passes: base64 of a PNG of the picture at the model's
    native size (64x64 for the built-in model), which the safety service scores."""
    decoder: str = ""


@REGISTRY.register
class RenderStopped(Event):
    """Decoder: the render left the decoder without images.

    `aborted` (cancelled or blocked) and `failed` end the job; `preempted` hands it back:
    a higher-priority job needed its place in the batch, its last pass's checkpoint is
    already out, and the requests service dispatches it again from there.
    """

    TYPE = "render.render_stopped"

    job_id: str
    pass_index: int
    reason: Literal["aborted", "failed", "preempted"]
    message: str = ""
    attempt: int = 0
    """The attempt that stopped (a preempted attempt is dispatched again as attempt + 1)."""
