"""`darkroom lanes` folds heartbeats into paused, throughput and refusals per lane."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.cli.lanes import Sighting, fold, format_batches, format_reports, latest_batches
from libs.events.schemas import BatchLoad, LaneLoad

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


def test_images_per_second_and_preemptions_sum_the_decoders_and_batches_show_per_decoder() -> None:
    batch = BatchLoad(pool="consumer", limit=8, images=6, occupancy=0.75, pass_s=0.31, images_per_s=2.5, passes=40)
    sightings = [
        seen("decoder-1", "decoder", 0, free=LaneLoad(preempted=1, images_per_s=1.0)),
        Sighting(
            "decoder-1", "decoder", T0 + timedelta(seconds=4), {"free": LaneLoad(preempted=3, images_per_s=1.5)}, batch
        ),
        seen("decoder-2", "decoder", 4, free=LaneLoad(preempted=2, images_per_s=0.5)),
    ]
    report = fold("free", "darkroom.render.consumer", (8, 9, 10, 11), 0, 9, sightings)
    assert report.preempted == 5 and report.images_per_s == 2.0
    assert "2.00" in format_reports([report])

    batches = latest_batches(sightings)
    table = format_batches(batches)
    assert list(batches) == ["decoder-1"] and "6/8" in table and "75%" in table and "310" in table
    assert format_batches({}) == ""
