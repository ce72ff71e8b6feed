"""`darkroom lanes` folds heartbeats into paused, throughput and refusals per lane."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.cli.lanes import Sighting, fold, format_reports
from libs.events.schemas import LaneLoad

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def seen(instance: str, service: str, seconds: float, **loads: LaneLoad) -> Sighting:
    return Sighting(instance, service, T0 + timedelta(seconds=seconds), dict(loads))


def test_throughput_sums_the_decoders_and_refusals_sum_the_gateways() -> None:
    sightings = [
        seen("decoder-1", "decoder", 0, free=LaneLoad(taken=10)),
        seen("decoder-2", "decoder", 1, free=LaneLoad(taken=0)),
        seen("gateway-1", "gateway", 1, free=LaneLoad(rejected=3)),
        seen("gateway-2", "gateway", 2, free=LaneLoad(rejected=4)),
        seen("decoder-1", "decoder", 4, free=LaneLoad(taken=18, paused=True)),
        seen("decoder-2", "decoder", 5, free=LaneLoad(taken=4)),
        seen("gateway-1", "gateway", 5, free=LaneLoad(rejected=5)),
    ]
    report = fold("free", "darkroom.render.consumer", (8, 9, 10, 11), 40, 100, sightings)
    assert report.throughput_per_s == 3.0  # 8 jobs in 4 s, plus 4 in 4 s
    assert report.paused and report.rejected == 9 and report.waiting == 40 and report.max_waiting
    table = format_reports([report])
    assert "free" in table and "3.00" in table and "yes" in table


def test_without_heartbeats_the_offsets_still_show() -> None:
    report = fold("pro", "darkroom.render.consumer", (0, 1, 2, 3), 2, 7, [])
    assert report.throughput_per_s is None and not report.paused and report.rejected == 0
    assert " - " in format_reports([report])
