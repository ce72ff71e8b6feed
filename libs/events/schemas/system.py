"""Operational messages: liveness and dead letters."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from libs.events.envelope import Event
from libs.events.registry import REGISTRY


class LaneLoad(BaseModel):
    """One instance's view of one lane, counted since the instance started."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    paused: bool = False
    """A decoder holds the lane back because a higher-priority lane has jobs waiting."""
    taken: int = 0
    """Jobs a decoder took from the lane."""
    rejected: int = 0
    """Jobs a gateway turned away because the lane was full."""
    preempted: int = 0
    """Renders a decoder handed back to the lane (checkpointed) for higher-priority jobs."""
    images_per_s: float = 0.0
    """Images a decoder finished from the lane per second, over its recent passes."""


class BatchLoad(BaseModel):
    """A decoder's running batch, over its recent passes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool: str = ""
    """The decoder pool (consumer or api)."""
    model: str = ""
    """The API's name of the model it renders ("" from decoders older than several models:
    the default model)."""
    limit: int = 0
    """The batch limit, in images."""
    images: int = 0
    """Images in the batch now."""
    occupancy: float = 0.0
    """Mean images per pass over the limit, over the recent passes (0 when idle)."""
    pass_s: float = 0.0
    """Mean seconds per batched pass, over the recent passes."""
    images_per_s: float = 0.0
    """Images finished per second, over the recent window."""
    passes: int = 0
    """Batched passes run since the instance started."""


@REGISTRY.register
class ServiceHeartbeat(Event):
    """A service instance says it is alive; the gateway's /healthz reads these."""

    TYPE = "system.service_heartbeat"

    service: str
    instance_id: str
    started_at: datetime
    healthy: bool = True
    checks: dict[str, bool] = {}
    lanes: dict[str, LaneLoad] = {}
    """Per lane, what this instance knows: a decoder whether it holds the lane back and
    how many jobs it took from it, a gateway how many jobs it turned away (503)."""
    batch: BatchLoad | None = None
    """A decoder's batch: occupancy, pass time and throughput."""


@REGISTRY.register
class DeadLetter(Event):
    """A message a consumer could not decode or handle, parked with the reason.

    The original bytes travel as text when they are valid UTF-8, else base64, so
    `darkroom dlq` and kcat can show them and a replay can put them back unchanged.
    """

    TYPE = "system.dead_letter"

    reason: str
    error_type: str
    service: str
    group: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    value: str
    value_encoding: str = "utf-8"
    headers: dict[str, str] = {}
    attempts: int = 1
