"""Tracking the services' heartbeats: who is alive, as last reported on Kafka."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libs.bus import Record
from libs.events import REGISTRY, Envelope
from libs.events.schemas import BatchLoad, LaneLoad, ServiceHeartbeat
from libs.lanes import DEFAULT_MODEL

SERVICES = ("gateway", "auth", "requests", "decoder", "safety", "storage", "metering")


@dataclass
class Beat:
    """The last heartbeat of one instance and when it arrived (monotonic seconds)."""

    heartbeat: ServiceHeartbeat
    received_at: float


class HeartbeatMonitor:
    """Keeps the latest heartbeat per service instance; a consumer handler."""

    def __init__(self, stale_after_s: float = 10.0) -> None:
        self.stale_after_s = stale_after_s
        self._beats: dict[str, Beat] = {}

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        beat = REGISTRY.decode_as(envelope, ServiceHeartbeat)
        self._beats[beat.instance_id] = Beat(beat, time.monotonic())

    def seen(self, instance_id: str) -> float | None:
        """Seconds since this instance's last heartbeat, or None if never seen."""
        beat = self._beats.get(instance_id)
        return None if beat is None else time.monotonic() - beat.received_at

    def lane_loads(self) -> dict[str, dict[str, LaneLoad]]:
        """Per fresh instance that reports lanes, its view of them (see ServiceHeartbeat.lanes)."""
        now = time.monotonic()
        return {
            instance: beat.heartbeat.lanes
            for instance, beat in self._beats.items()
            if beat.heartbeat.lanes and now - beat.received_at <= self.stale_after_s
        }

    def batch_loads(self, within_s: float | None = None) -> dict[str, BatchLoad]:
        """Per decoder instance heard from within `within_s` (default: fresh), its batch
        (see ServiceHeartbeat.batch)."""
        now = time.monotonic()
        window = self.stale_after_s if within_s is None else within_s
        return {
            instance: beat.heartbeat.batch
            for instance, beat in self._beats.items()
            if beat.heartbeat.batch is not None and now - beat.received_at <= window
        }

    def pools(self, models: Sequence[str], pools: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per decoder pool of each model, `<model>/<pool>`: its live instances and whether
        any is there (a pool nobody serves leaves its lanes' jobs waiting)."""
        report: dict[str, dict[str, Any]] = {}
        for model in models:
            for pool in pools:
                count = self.decoders_of(model, pool)
                report[f"{model}/{pool}"] = {"healthy": count > 0, "instances": count}
        return report

    def decoders_of(self, model: str, pool: str, within_s: float | None = None) -> int:
        """Decoders of this model's pool heard from within `within_s` (default: fresh); a
        decoder that names no model serves the default one."""
        loads = self.batch_loads(within_s).values()
        return sum(1 for load in loads if (load.model or DEFAULT_MODEL) == model and load.pool == pool)

    def paused_lanes(self) -> set[str]:
        """The lanes some live decoder holds back for higher-priority ones."""
        return {lane for loads in self.lane_loads().values() for lane, load in loads.items() if load.paused}

    def report(self) -> dict[str, dict[str, Any]]:
        """Per service: healthy if a fresh, healthy heartbeat came from any instance."""
        now = time.monotonic()
        services: dict[str, dict[str, Any]] = {}
        for name in SERVICES:
            instances = [b for b in self._beats.values() if b.heartbeat.service == name]
            fresh = [b for b in instances if now - b.received_at <= self.stale_after_s]
            last = min((now - b.received_at for b in instances), default=None)
            services[name] = {
                "healthy": any(b.heartbeat.healthy for b in fresh),
                "instances": len(fresh),
                "last_seen_s": None if last is None else round(last, 2),
                "checks": {k: v for b in fresh for k, v in b.heartbeat.checks.items()},
            }
        return services
