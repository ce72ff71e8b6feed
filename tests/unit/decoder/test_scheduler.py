"""The decoder's scheduler: which pass runs next, previews and aborts, without a model."""

from __future__ import annotations

import pytest

from services.decoder.scheduler import (
    AbortedJobs,
    Decision,
    Finish,
    RenderPlan,
    RunPass,
    Stop,
    next_step,
    plan_render,
)


def _drive(plan: RenderPlan, aborted: AbortedJobs) -> list[Decision]:
    """Every decision of a render, running each pass the scheduler asks for."""
    decisions: list[Decision] = []
    while True:
        decision = next_step(plan, aborted)
        decisions.append(decision)
        if not isinstance(decision, RunPass):
            return decisions
        plan = plan.advanced()


def test_a_fresh_render_runs_every_pass_in_order_with_previews_where_asked_then_finishes() -> None:
    plan = plan_render("j", total_passes=4, preview_passes=[2, 4])

    assert _drive(plan, AbortedJobs()) == [
        RunPass("j", 1, 4, preview=False),
        RunPass("j", 2, 4, preview=True),
        RunPass("j", 3, 4, preview=False),
        RunPass("j", 4, 4, preview=True),
        Finish("j"),
    ]


def test_a_resumed_render_continues_after_its_checkpoint() -> None:
    plan = plan_render("j", total_passes=4, preview_passes=[1, 3], completed=2)

    assert _drive(plan, AbortedJobs()) == [RunPass("j", 3, 4, preview=True), RunPass("j", 4, 4, False), Finish("j")]
    assert next_step(plan_render("j", 4, completed=4), AbortedJobs()) == Finish("j")


def test_preview_passes_outside_the_render_are_dropped() -> None:
    plan = plan_render("j", total_passes=3, preview_passes=[0, 2, 2, 3, 4, -1])

    assert plan.preview_passes == frozenset({2, 3})


@pytest.mark.parametrize("completed", [0, 1, 3])
def test_an_aborted_job_stops_at_its_next_pass_boundary(completed: int) -> None:
    aborted = AbortedJobs()
    aborted.add("j")

    assert next_step(plan_render("j", 3, completed=completed), aborted) == Stop("j", completed)


def test_an_abort_during_the_last_pass_wins_over_finishing() -> None:
    # The content check may block a job while its last pass runs: its images must not be stored.
    aborted = AbortedJobs()
    plan = plan_render("j", 2, completed=1)
    assert next_step(plan, aborted) == RunPass("j", 2, 2, preview=False)

    aborted.add("j")

    assert next_step(plan.advanced(), aborted) == Stop("j", 2)


def test_an_abort_of_another_job_changes_nothing() -> None:
    aborted = AbortedJobs()
    aborted.add("other")

    assert next_step(plan_render("j", 2), aborted) == RunPass("j", 1, 2, preview=False)


@pytest.mark.parametrize(("total", "completed"), [(0, 0), (-1, 0), (4, 5), (4, -1)])
def test_impossible_plans_are_refused(total: int, completed: int) -> None:
    with pytest.raises(ValueError):
        plan_render("j", total, completed=completed)


def test_the_aborted_set_forgets_the_oldest_ids_first() -> None:
    aborted = AbortedJobs(capacity=3)
    for job in ("a", "b", "c"):
        aborted.add(job)
    aborted.add("a")  # seen again: now the newest

    aborted.add("d")

    assert len(aborted) == 3
    assert "b" not in aborted
    assert all(job in aborted for job in ("a", "c", "d"))


def test_the_aborted_set_needs_room_for_one_id() -> None:
    with pytest.raises(ValueError):
        AbortedJobs(capacity=0)
