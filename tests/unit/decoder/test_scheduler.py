"""The decoder's scheduler: which pass runs next, previews and aborts, without a model."""

from __future__ import annotations

import pytest

from services.decoder.scheduler import (
    AbortedJobs,
    BoundaryPlan,
    Decision,
    Finish,
    RenderPlan,
    RunPass,
    Slot,
    Stop,
    next_step,
    plan_boundary,
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


# -- the batch -----------------------------------------------------------------------------------

PRO, FREE = 0, 1


def slot(job_id: str, priority: int = PRO, images: int = 1, order: int = 0) -> Slot:
    return Slot(job_id, priority, images, order)


def test_waiting_jobs_join_in_priority_order_then_oldest_first_up_to_the_limit_in_images() -> None:
    waiting = [
        slot("free-1", FREE, 1, 1),
        slot("pro-2", PRO, 2, 2),
        slot("pro-3", PRO, 1, 3),
        slot("free-4", FREE, 1, 4),
    ]

    plan = plan_boundary([], waiting, limit=4)

    # n=2 counts two: pro-2 and pro-3 take three images, free-1 the fourth; free-4 waits.
    assert plan == BoundaryPlan(admit=("pro-2", "pro-3", "free-1"), preempt=())


def test_a_job_that_does_not_fit_stops_admission_so_smaller_later_jobs_do_not_overtake_it() -> None:
    running = [slot("pro-1", PRO, 2, 1)]
    waiting = [slot("pro-2", PRO, 3, 2), slot("pro-3", PRO, 1, 3)]

    assert plan_boundary(running, waiting, limit=4) == BoundaryPlan()


def test_a_job_bigger_than_the_limit_runs_alone_once_the_batch_is_empty() -> None:
    assert plan_boundary([], [slot("big", PRO, 6, 1), slot("small", PRO, 1, 2)], limit=4).admit == ("big",)
    assert plan_boundary([slot("other", PRO, 1, 0)], [slot("big", PRO, 6, 1)], limit=4) == BoundaryPlan()


def test_a_paid_job_preempts_the_youngest_free_render_of_a_full_batch() -> None:
    running = [slot("free-old", FREE, 1, 1), slot("free-young", FREE, 1, 3), slot("pro-run", PRO, 1, 2)]

    plan = plan_boundary(running, [slot("pro-new", PRO, 1, 4)], limit=3)

    assert plan == BoundaryPlan(admit=("pro-new",), preempt=("free-young",))


def test_preemption_takes_the_lowest_priority_first_and_only_as_many_images_as_needed() -> None:
    plus, free = 1, 2
    running = [slot("plus-1", plus, 1, 1), slot("free-2", free, 2, 2), slot("free-3", free, 1, 3)]

    plan = plan_boundary(running, [slot("pro", PRO, 2, 9)], limit=4)

    # Two images are needed: free-3 (youngest free, 1) then free-2 (2); plus-1 stays.
    assert plan.preempt == ("free-3", "free-2") and plan.admit == ("pro",)


def test_renders_of_the_same_or_a_higher_priority_are_never_preempted() -> None:
    running = [slot("pro-1", PRO, 1, 1), slot("pro-2", PRO, 1, 2)]

    assert plan_boundary(running, [slot("pro-3", PRO, 1, 3)], limit=2) == BoundaryPlan()
    assert plan_boundary(running, [slot("free", FREE, 1, 3)], limit=2) == BoundaryPlan()


def test_a_paid_job_still_in_kafka_makes_room_of_one_image_in_a_full_batch() -> None:
    running = [slot("free-1", FREE, 1, 1), slot("free-2", FREE, 1, 2)]

    assert plan_boundary(running, [], limit=2, lane_waiting=PRO).preempt == ("free-2",)
    # Room already there, or only free work waiting: nothing is preempted.
    assert plan_boundary(running, [], limit=3, lane_waiting=PRO) == BoundaryPlan()
    assert plan_boundary(running, [], limit=2, lane_waiting=FREE) == BoundaryPlan()


def test_without_preemption_a_paid_job_waits_for_room() -> None:
    running = [slot("free-1", FREE, 1, 1)]

    assert plan_boundary(running, [slot("pro", PRO, 1, 2)], limit=1, preempt=False) == BoundaryPlan()
    assert plan_boundary(running, [], limit=1, lane_waiting=PRO, preempt=False) == BoundaryPlan()


def test_a_paid_render_shares_its_batch_with_free_ones_only_up_to_the_mixed_cap() -> None:
    running = [slot("free-1", FREE, 1, 1), slot("free-2", FREE, 1, 2), slot("free-3", FREE, 1, 3)]

    plan = plan_boundary(running, [slot("pro", PRO, 1, 4)], limit=4, mixed_limit=2)

    # The paid job fits the limit of 4, but free renders beyond the cap of 2 leave, youngest first.
    assert plan == BoundaryPlan(admit=("pro",), preempt=("free-3", "free-2"))


def test_free_jobs_join_a_paid_render_only_within_the_mixed_cap() -> None:
    waiting = [slot("free-1", FREE, 1, 1), slot("free-2", FREE, 1, 2), slot("pro", PRO, 1, 3)]

    assert plan_boundary([], waiting, limit=4, mixed_limit=2).admit == ("pro", "free-1")
    # Without a paid render the batch fills to its limit; paid jobs are never capped.
    assert plan_boundary([], waiting[:2], limit=4, mixed_limit=2).admit == ("free-1", "free-2")
    pros = [slot(f"pro-{i}", PRO, 1, i) for i in range(4)]
    assert plan_boundary([], pros, limit=4, mixed_limit=2).admit == tuple(f"pro-{i}" for i in range(4))


def test_the_mixed_cap_takes_the_lowest_priority_first_and_spares_higher_ones() -> None:
    plus, free = 1, 2
    running = [slot("plus-1", plus, 1, 1), slot("free-2", free, 1, 2), slot("pro-3", PRO, 1, 3)]

    assert plan_boundary(running, [], limit=4, mixed_limit=2).preempt == ("free-2",)
    # Without preemption nothing leaves, and no further free job joins.
    assert plan_boundary(running, [slot("free-4", free, 1, 4)], limit=4, mixed_limit=2, preempt=False) == (
        BoundaryPlan()
    )


def test_the_batch_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        plan_boundary([], [], limit=0)
    with pytest.raises(ValueError, match="at least one image"):
        plan_boundary([], [], limit=4, mixed_limit=0)
