"""What `make surge` concludes from its records, as pure functions: tables, targets, series.

Every figure is computed from the request records (tests.bench.surge_load.RequestRecord),
the lane samples and the CPU snapshots, so the report can be rebuilt from report.json's
own data and each rule is unit-tested without a stack.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.bench.stats import percentile
from tests.bench.surge_load import LOAD_PHASES, PAID, TIERS, RequestRecord, Shape

PAID_P99_LIMIT = 1.5
"""Paid (pro + plus) p99 latency in the spike over its baseline p99, at most."""
API_P99_LIMIT = 1.2
"""API p99 latency in the spike over its baseline p99, at most."""
FAILOVER_P99_LIMIT = 2.0
"""Paid p99 latency of jobs submitted while a broker is down (and FAILOVER_TAIL_S after it is
back) over the baseline p99, at most (`make surge ARGS=--kill-broker`)."""
FAILOVER_TAIL_S = 10.0


def _p(values: Sequence[float], q: float) -> float | None:
    return None if not values else round(percentile(values, q), 3)


def ended_s(record: RequestRecord) -> float | None:
    """When the job ended: the client's answer, else the server's terminal event."""
    return record.end_s if record.end_s is not None else record.server_terminal_s


def phase_stats(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Counts and latency percentiles of a group of requests.

    Returns:
        requests, accepted, completed, rejected_503 (and how many carried `retry-after`),
        rate_limited_429, other_errors (any other status), no_answer (none by the end),
        lost (accepted and never terminal) and p50_s / p99_s of the completed ones.
    """
    latencies = [r.latency_s for r in records if r.latency_s is not None]
    rejected = [r for r in records if r.status == 503]
    return {
        "requests": len(records),
        "accepted": sum(r.accepted for r in records),
        "completed": sum(r.completed for r in records),
        "rejected_503": len(rejected),
        "rejected_503_with_retry_after": sum(r.retry_after is not None for r in rejected),
        "rate_limited_429": sum(r.status == 429 for r in records),
        "other_errors": sum(r.status not in (None, 200, 202, 429, 503) for r in records),
        "no_answer": sum(r.status is None for r in records),
        "lost": sum(r.accepted and not r.terminal for r in records),
        "p50_s": _p(latencies, 50),
        "p99_s": _p(latencies, 99),
    }


def summarize(records: Sequence[RequestRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """phase_stats per tier and submit phase, and per tier over the whole run ("all")."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for tier in TIERS:
        mine = [r for r in records if r.tier == tier]
        table[tier] = {phase: phase_stats([r for r in mine if r.phase == phase]) for phase in LOAD_PHASES}
        table[tier]["all"] = phase_stats(mine)
    return table


def p99_ratio(records: Sequence[RequestRecord], tiers: Iterable[str], limit: float) -> dict[str, Any]:
    """p99 latency of completed requests of `tiers` submitted in the spike over the baseline's.

    Returns:
        baseline_p99_s, spike_p99_s, the sample counts, ratio, limit and verdict: PASS
        (ratio at most limit), MISS, or n/a when a phase has no completed request.
    """
    wanted = set(tiers)

    def latencies(phase: str) -> list[float]:
        return [r.latency_s for r in records if r.tier in wanted and r.phase == phase and r.latency_s is not None]

    base, spike = latencies("baseline"), latencies("spike")
    ratio = None
    if base and spike and percentile(base, 99) > 0:
        ratio = percentile(spike, 99) / percentile(base, 99)
    verdict = "n/a" if ratio is None else ("PASS" if ratio <= limit else "MISS")
    return {
        "tiers": sorted(wanted),
        "baseline_p99_s": _p(base, 99),
        "spike_p99_s": _p(spike, 99),
        "baseline_samples": len(base),
        "spike_samples": len(spike),
        "ratio": None if ratio is None else round(ratio, 3),
        "limit": limit,
        "verdict": verdict,
    }


def deferred_free(records: Sequence[RequestRecord], shape: Shape) -> dict[str, Any]:
    """Free jobs the spike pushed back, and whether each completed after it.

    A free job counts as deferred when it was seen as `deferred` (polled, in the server's
    events, or queued while the gateway's /metrics showed its lane deferred) or, whatever
    the server called it, when it was accepted before the spike's end and had not ended
    by then: it waited out the spike.
    """
    spike_end = shape.baseline_s + shape.spike_s

    def waited(r: RequestRecord) -> bool:
        end = ended_s(r)
        return r.submit_s < spike_end and (end is None or end >= spike_end)

    deferred = [r for r in records if r.tier == "free" and r.accepted and (r.deferred or waited(r))]
    completed = [r for r in deferred if r.completed]
    after = [r for r in completed if (ended_s(r) or 0.0) >= spike_end]
    missing = [r.key for r in deferred if not r.completed]
    verdict = "n/a" if not deferred else ("PASS" if not missing else "MISS")
    return {
        "deferred": len(deferred),
        "seen_in_status_deferred": sum(r.deferred for r in deferred),
        "completed": len(completed),
        "completed_after_spike": len(after),
        "not_completed": missing,
        "verdict": verdict,
    }


def retry_after(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Whether every 503 carried `retry-after` (n/a when none was answered)."""
    rejected = [r for r in records if r.status == 503]
    without = [r.key for r in rejected if r.retry_after is None]
    verdict = "n/a" if not rejected else ("PASS" if not without else "MISS")
    codes = sorted({r.error_code or "" for r in rejected})
    return {"rejected_503": len(rejected), "without_retry_after": without, "error_codes": codes, "verdict": verdict}


def lost(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Accepted jobs that never reached a terminal state by the end of the drain."""
    keys = [r.key for r in records if r.accepted and not r.terminal]
    return {
        "accepted": sum(r.accepted for r in records),
        "lost": len(keys),
        "keys": keys,
        "verdict": "PASS" if not keys else "MISS",
    }


def targets(
    records: Sequence[RequestRecord], shape: Shape, server: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Every target of the surge, with its figures and PASS / MISS / n/a; with a broker killed
    (`server["failover"]`), the paid p99 in the failover too."""
    server = server or {}
    twice = list(server.get("completed_twice", []))
    found = {
        "zero_lost": lost(records),
        "none_completed_twice": {"completed_twice": twice, "verdict": "MISS" if twice else "PASS"},
        "paid_p99_spike_over_baseline": p99_ratio(records, PAID, PAID_P99_LIMIT),
        "api_p99_spike_over_baseline": p99_ratio(records, ("api",), API_P99_LIMIT),
        "deferred_free_completed_after_spike": deferred_free(records, shape),
        "every_503_has_retry_after": retry_after(records),
    }
    failover = server.get("failover")
    if failover:
        killed, restarted = failover["killed_s"], failover["restarted_s"]
        judged = window_p99_ratio(records, PAID, killed, restarted + FAILOVER_TAIL_S, FAILOVER_P99_LIMIT)
        # The two halves of the window, for where the time went: the node away (its
        # partitions moved to the others), then the node back (starting and catching up
        # beside everything else).
        judged["while_down"] = window_p99_ratio(records, PAID, killed, restarted, FAILOVER_P99_LIMIT)
        judged["after_restart"] = window_p99_ratio(
            records, PAID, restarted, restarted + FAILOVER_TAIL_S, FAILOVER_P99_LIMIT
        )
        # The control: the same spike before the kill, on the same cluster. What the window
        # adds over it is the failover's; what it shares, the spike's (the paid target above).
        judged["spike_before_kill"] = window_p99_ratio(records, PAID, shape.baseline_s, killed, FAILOVER_P99_LIMIT)
        found["paid_p99_failover_over_baseline"] = judged
    return found


def window_p99_ratio(
    records: Sequence[RequestRecord], tiers: Iterable[str], start_s: float, end_s: float, limit: float
) -> dict[str, Any]:
    """p99 latency of completed requests of `tiers` submitted in [start_s, end_s) over the baseline's."""
    wanted = set(tiers)
    done = [r for r in records if r.tier in wanted and r.latency_s is not None]
    base = [r.latency_s for r in done if r.phase == "baseline" and r.latency_s is not None]
    window = [r.latency_s for r in done if start_s <= r.submit_s < end_s and r.latency_s is not None]
    ratio = None
    if base and window and percentile(base, 99) > 0:
        ratio = percentile(window, 99) / percentile(base, 99)
    return {
        "tiers": sorted(wanted),
        "window_s": [round(start_s, 1), round(end_s, 1)],
        "baseline_p99_s": _p(base, 99),
        "window_p99_s": _p(window, 99),
        "baseline_samples": len(base),
        "window_samples": len(window),
        "ratio": None if ratio is None else round(ratio, 3),
        "limit": limit,
        "verdict": "n/a" if ratio is None else ("PASS" if ratio <= limit else "MISS"),
    }


def bucket_counts(times: Iterable[float], end_s: float, width_s: float = 1.0) -> list[int]:
    """How many of `times` fall in each bucket [k*width, (k+1)*width) from 0 up to end_s."""
    counts = [0] * max(1, math.ceil(end_s / width_s))
    for t in times:
        if 0 <= t < end_s:
            counts[min(len(counts) - 1, int(t // width_s))] += 1
    return counts


def windowed_percentile(
    points: Iterable[tuple[float, float]], end_s: float, width_s: float, q: float
) -> list[float | None]:
    """The q-th percentile of the values whose time falls in each window (None when empty)."""
    windows: list[list[float]] = [[] for _ in range(max(1, math.ceil(end_s / width_s)))]
    for t, value in points:
        if 0 <= t < end_s:
            windows[min(len(windows) - 1, int(t // width_s))].append(value)
    return [None if not w else percentile(w, q) for w in windows]


def cpu_use(snapshots: Sequence[tuple[str, float, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Cores each component used in each phase, from cumulative CPU-second snapshots.

    Args:
        snapshots: (phase that starts here, time, CPU seconds so far by component), in time
            order; the last one marks the end of the last phase.

    Returns:
        phase -> component -> cores (CPU seconds over wall seconds), largest first.
    """
    use: dict[str, dict[str, float]] = {}
    for (phase, t0, before), (_, t1, after) in itertools.pairwise(snapshots):
        if t1 <= t0:
            continue
        cores = {name: (after[name] - before.get(name, 0.0)) / (t1 - t0) for name in after}
        use[phase] = {k: round(v, 2) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])}
    return use


def batching(samples: Sequence[Mapping[str, Any]], shape: Shape) -> dict[str, Any]:
    """The decoders' batches over the run: mean occupancy per phase and pool, preemptions per lane.

    Occupancy is each sample's per-decoder figure (images per pass over the limit, over the
    decoder's last 20 s of passes), averaged over the decoders of a pool and the samples of
    a phase. Preemptions are the lanes' counters in the last sample that has them.
    """
    occupancy: dict[str, dict[str, list[float]]] = {}
    preempted: dict[str, int] = {}
    for sample in samples:
        phase = shape.phase_at(float(sample["t"]))
        for figures in (sample.get("decoders") or {}).values():
            if "batch_occupancy" in figures:
                pool = str(figures.get("pool", "?"))
                occupancy.setdefault(pool, {}).setdefault(phase, []).append(float(figures["batch_occupancy"]))
        lanes = sample.get("lanes") or {}
        if any("preempted_total" in f for f in lanes.values()):
            preempted = {lane: int(f.get("preempted_total", 0)) for lane, f in lanes.items() if "preempted_total" in f}
    return {
        "occupancy_by_pool_and_phase": {
            pool: {phase: round(sum(v) / len(v), 3) for phase, v in phases.items()}
            for pool, phases in occupancy.items()
        },
        "preempted_by_lane": preempted,
    }


def build_report(
    *,
    meta: Mapping[str, Any],
    shape: Shape,
    records: Sequence[RequestRecord],
    signups: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    cpu: Mapping[str, Mapping[str, float]],
    server: Mapping[str, Any],
) -> dict[str, Any]:
    """report.json: what ran, the targets, the table, and the raw records and samples."""
    signup_latencies = [s["latency_s"] for s in signups if s.get("status") in (200, 201, 202)]
    return {
        **meta,
        "shape": shape.to_json(),
        "targets": targets(records, shape, server),
        "summary": summarize(records),
        "signups": {
            "attempted": len(signups),
            "created": len(signup_latencies),
            "p50_s": _p(signup_latencies, 50),
            "p99_s": _p(signup_latencies, 99),
            "statuses": _count(str(s.get("status")) for s in signups),
        },
        "cpu_cores_by_phase": cpu,
        "batching": batching(samples, shape),
        "server": server,
        "samples": list(samples),
        "requests": [r.to_json() for r in records],
        "signup_attempts": list(signups),
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def format_summary(report: Mapping[str, Any]) -> str:
    """The table and the targets, as `make surge` prints them at its end."""
    lines = [
        f"{'tier':5} {'phase':8} {'requests':>8} {'accepted':>8} {'completed':>9} {'503':>5} {'w/ r-a':>6} "
        f"{'429':>4} {'errors':>6} {'no ans':>6} {'lost':>4} {'p50 ms':>8} {'p99 ms':>8}"
    ]
    for tier, phases in report["summary"].items():
        for phase, s in phases.items():
            lines.append(
                f"{tier:5} {phase:8} {s['requests']:8d} {s['accepted']:8d} {s['completed']:9d} "
                f"{s['rejected_503']:5d} {s['rejected_503_with_retry_after']:6d} {s['rate_limited_429']:4d} "
                f"{s['other_errors']:6d} {s['no_answer']:6d} {s['lost']:4d} {_ms(s['p50_s']):>8} {_ms(s['p99_s']):>8}"
            )
    signups = report["signups"]
    lines.append(
        f"sign-ups: {signups['created']} of {signups['attempted']} created, "
        f"p50 {_ms(signups['p50_s'])} ms, p99 {_ms(signups['p99_s'])} ms"
    )
    batch = report.get("batching") or {}
    for pool, phases in (batch.get("occupancy_by_pool_and_phase") or {}).items():
        figures = ", ".join(f"{phase} {value:.0%}" for phase, value in phases.items())
        lines.append(f"batch occupancy ({pool} pool): {figures}")
    preempted = batch.get("preempted_by_lane") or {}
    if preempted:
        lines.append("preemptions: " + ", ".join(f"{lane} {count}" for lane, count in sorted(preempted.items())))
    for phase, use in report["cpu_cores_by_phase"].items():
        top = ", ".join(f"{name} {cores:.2f}" for name, cores in list(use.items())[:6])
        lines.append(f"CPU cores in {phase}: {top}")
    t = report["targets"]
    lines.append("")
    lines.append("targets:")
    zl = t["zero_lost"]
    lines.append(f"  [{zl['verdict']}] zero accepted jobs lost: {zl['lost']} lost of {zl['accepted']} accepted")
    twice = t["none_completed_twice"]
    lines.append(f"  [{twice['verdict']}] no job completed twice: {len(twice['completed_twice'])} completed twice")
    for name, label in (("paid_p99_spike_over_baseline", "paid"), ("api_p99_spike_over_baseline", "api")):
        r = t[name]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}x"
        lines.append(
            f"  [{r['verdict']}] {label} p99 spike/baseline {ratio} (limit {r['limit']}x): "
            f"{_ms(r['spike_p99_s'])} ms over {_ms(r['baseline_p99_s'])} ms "
            f"({r['spike_samples']} and {r['baseline_samples']} jobs)"
        )
    fo = t.get("paid_p99_failover_over_baseline")
    if fo is not None:
        ratio = "-" if fo["ratio"] is None else f"{fo['ratio']:.3f}x"
        lines.append(
            f"  [{fo['verdict']}] paid p99 in the failover/baseline {ratio} (limit {fo['limit']}x): "
            f"{_ms(fo['window_p99_s'])} ms over {_ms(fo['baseline_p99_s'])} ms "
            f"(jobs submitted {fo['window_s'][0]:.0f}-{fo['window_s'][1]:.0f} s: {fo['window_samples']})"
        )
        halves = [
            f"{label} ({half['window_s'][0]:.0f}-{half['window_s'][1]:.0f} s) {_ms(half['window_p99_s'])} ms, "
            + ("-" if half["ratio"] is None else f"{half['ratio']:.3f}x")
            + f" ({half['window_samples']} jobs)"
            for label, half in (("node down", fo["while_down"]), ("back", fo["after_restart"]))
        ]
        lines.append(f"         {'; '.join(halves)}")
        control = fo["spike_before_kill"]
        lines.append(
            f"         the spike before the kill ({control['window_s'][0]:.0f}-{control['window_s'][1]:.0f} s) "
            f"{_ms(control['window_p99_s'])} ms ({control['window_samples']} jobs)"
        )
    d = t["deferred_free_completed_after_spike"]
    lines.append(
        f"  [{d['verdict']}] deferred free jobs completed: {d['completed']} of {d['deferred']} "
        f"({d['completed_after_spike']} after the spike; {d['seen_in_status_deferred']} seen as 'deferred')"
    )
    ra = t["every_503_has_retry_after"]
    lines.append(
        f"  [{ra['verdict']}] every 503 carries retry-after: {ra['rejected_503'] - len(ra['without_retry_after'])} "
        f"of {ra['rejected_503']} (codes: {', '.join(ra['error_codes']) or '-'})"
    )
    return "\n".join(lines)
