"""`make bench-throughput`'s pure parts: the steady window and the machine's idle share in it."""

from __future__ import annotations

import time

import pytest

from tests.bench.stack import MachineSampler, idle_share, machine_ticks
from tests.bench.throughput import steady_rate, steady_window


def test_the_steady_window_leaves_the_ramps_out() -> None:
    completed = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 4.2, 9.0]
    assert steady_window(completed, 2) == [1.0, 2.0, 3.0, 4.0]
    assert steady_rate(completed, 2) == pytest.approx(3 / 3.0)


def test_too_few_completions_keep_them_all() -> None:
    assert steady_window([0.0, 1.0, 3.0], 1) == [0.0, 1.0, 3.0]
    assert steady_rate([0.0, 1.0, 3.0], 1) == pytest.approx(2 / 3.0)
    assert steady_rate([5.0], 1) == 0.0


def test_idle_share_spans_the_samples_around_the_window() -> None:
    # (time, idle ticks, all ticks): 40 of 100 ticks idle from t=1 to t=3.
    samples = [(0.0, 0, 0), (1.0, 10, 50), (2.0, 30, 100), (3.0, 50, 150), (4.0, 90, 200)]
    assert idle_share(samples, 1.0, 3.0) == pytest.approx(40 / 100)
    # A window inside the samples takes the ones just outside it.
    assert idle_share(samples, 1.5, 2.5) == pytest.approx(40 / 100)
    assert idle_share(samples, 0.0, 4.0) == pytest.approx(90 / 200)


def test_idle_share_is_unknown_outside_the_samples() -> None:
    samples = [(1.0, 10, 50), (2.0, 30, 100)]
    assert idle_share(samples, 0.5, 2.0) is None
    assert idle_share(samples, 1.0, 2.5) is None
    assert idle_share([(1.0, 10, 50), (2.0, 10, 50)], 1.0, 2.0) is None


def test_the_sampler_reads_this_machine() -> None:
    idle, total = machine_ticks()
    assert 0 <= idle <= total
    with MachineSampler(interval_s=0.01) as machine:
        busy_until = time.perf_counter() + 0.2  # a few of the kernel's ticks on every core
        while time.perf_counter() < busy_until:
            pass
    assert len(machine.samples) >= 2
    times = [t for t, _, _ in machine.samples]
    assert times == sorted(times)
    share = idle_share(machine.samples, times[0], times[-1])
    assert share is not None
    # This thread kept one core busy, so at most the others' share was idle.
    assert 0.0 <= share < 1.0
