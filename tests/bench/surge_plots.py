"""The PNG plots of a surge report, drawn from report.json's own data (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tests.bench.surge_load import TIERS
from tests.bench.surge_report import bucket_counts, windowed_percentile

COLORS = {"pro": "tab:purple", "plus": "tab:blue", "free": "tab:orange", "api": "tab:green"}
P99_WINDOW_S = 5.0
RATE_WINDOW_S = 5.0


def _phases(ax: Axes, report: Mapping[str, Any]) -> None:
    """Dashed lines at the phase boundaries, each phase named at the top."""
    for phase in report["shape"]["phases"]:
        ax.axvline(phase["start_s"], color="grey", linestyle="--", linewidth=0.8)
        ax.text(phase["start_s"] + 0.5, 1.0, phase["name"], transform=ax.get_xaxis_transform(), va="bottom", fontsize=8)


def _end_s(report: Mapping[str, Any]) -> float:
    times: list[float] = [r["end_s"] or r["submit_s"] for r in report["requests"]]
    times += [s["t"] for s in report["samples"]]
    return max([float(report["shape"]["phases"][-2]["end_s"]), *times]) + 1.0


def plot_latency(report: Mapping[str, Any], path: Path) -> None:
    """Latency of every completed request by submit time, per tier, with each tier's windowed p99."""
    end = _end_s(report)
    fig, ax = plt.subplots(figsize=(11, 5))
    for tier in TIERS:
        points = [(r["submit_s"], r["latency_s"]) for r in report["requests"] if r["tier"] == tier and r["latency_s"]]
        if not points:
            continue
        ax.scatter([t for t, _ in points], [v for _, v in points], s=6, alpha=0.35, color=COLORS[tier])
        p99 = windowed_percentile(points, end, P99_WINDOW_S, 99)
        xs = [(i + 0.5) * P99_WINDOW_S for i, v in enumerate(p99) if v is not None]
        ax.plot(xs, [v for v in p99 if v is not None], color=COLORS[tier], label=f"{tier} p99 ({P99_WINDOW_S:.0f} s)")
    _phases(ax, report)
    ax.set_yscale("log")
    ax.set_xlabel("submitted at (s from the start of the load)")
    ax.set_ylabel("latency to images (s)")
    ax.set_title("Latency per tier (dots: completed requests)", pad=16)
    _save(fig, [ax], path)


def plot_backlog(report: Mapping[str, Any], path: Path) -> None:
    """Jobs waiting in each lane over time, from the gateway's /metrics or Kafka's offsets."""
    samples = report["samples"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    lanes = sorted({lane for s in samples for lane in s["lanes"]})
    for lane in lanes:
        points = [(s["t"], s["lanes"][lane].get("waiting")) for s in samples if lane in s["lanes"]]
        ax.plot(
            [t for t, v in points if v is not None],
            [v for _, v in points if v is not None],
            label=lane,
            color=COLORS.get(lane),
        )
    _phases(ax, report)
    sources = sorted({s["source"] for s in samples})
    ax.set_xlabel("s from the start of the load")
    ax.set_ylabel("jobs waiting")
    ax.set_title(f"Backlog per lane (source: {', '.join(sources) or 'none'})", pad=16)
    _save(fig, [ax], path)


def plot_throughput(report: Mapping[str, Any], path: Path) -> None:
    """Completions per second per tier, and rejections (503, 429) and sign-ups per second."""
    end = _end_s(report)
    requests = report["requests"]
    xs = [(i + 0.5) * RATE_WINDOW_S for i in range(len(bucket_counts([], end, RATE_WINDOW_S)))]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for tier in TIERS:
        ends = [r["end_s"] for r in requests if r["tier"] == tier and r["latency_s"] is not None]
        top.plot(
            xs, [n / RATE_WINDOW_S for n in bucket_counts(ends, end, RATE_WINDOW_S)], label=tier, color=COLORS[tier]
        )
    top.set_ylabel("completed jobs / s")
    top.set_title(f"Throughput per tier ({RATE_WINDOW_S:.0f} s windows)", pad=16)
    for label, times, color in (
        ("503 (lane full)", [r["submit_s"] for r in requests if r["status"] == 503], "tab:red"),
        ("429 (rate limit)", [r["submit_s"] for r in requests if r["status"] == 429], "tab:brown"),
        ("sign-ups", [s["submit_s"] for s in report["signup_attempts"]], "tab:gray"),
    ):
        bottom.plot(xs, [n / RATE_WINDOW_S for n in bucket_counts(times, end, RATE_WINDOW_S)], label=label, color=color)
    bottom.set_ylabel("per s")
    bottom.set_xlabel("s from the start of the load")
    bottom.set_title("Rejections and sign-ups", pad=16)
    for ax in (top, bottom):
        _phases(ax, report)
    _save(fig, [top, bottom], path)


def plot_all(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """Every plot of the report, written into `folder`; their paths."""
    paths = [folder / "latency.png", folder / "backlog.png", folder / "throughput.png"]
    for draw, path in zip((plot_latency, plot_backlog, plot_throughput), paths, strict=True):
        draw(report, path)
    return paths


def _save(fig: Figure, axes: list[Axes], path: Path) -> None:
    """Legends and grids on every panel, then the PNG; the figure is released."""
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
