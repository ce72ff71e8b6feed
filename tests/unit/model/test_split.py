"""A batched call cut in slices on several threads (libs.model.split): the same results, in
order, from every slice, and only for models that allow it on the CPU."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from libs.model.split import SplitCalls, slices, split_workers


@pytest.mark.parametrize(("items", "parts", "sizes"), [(8, 2, [4, 4]), (7, 2, [4, 3]), (5, 3, [2, 2, 1]), (1, 4, [1])])
def test_slices_are_contiguous_and_even(items: int, parts: int, sizes: list[int]) -> None:
    cut = slices(list(range(items)), parts)
    assert [len(part) for part in cut] == sizes
    assert [item for part in cut for item in part] == list(range(items))


def test_a_split_call_returns_every_slice_in_order_from_several_threads() -> None:
    threads: set[str] = set()
    both_running = threading.Barrier(2, timeout=5)  # a slice waits for the other: they overlap

    def double(part: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        both_running.wait()
        return [2 * item for item in part]

    split = SplitCalls(2)
    try:
        assert split(double, list(range(9))) == [2 * item for item in range(9)]
    finally:
        split.close()
    assert len(threads) == 2


def test_a_failed_slice_fails_the_call_after_every_slice_ended() -> None:
    ended: list[int] = []

    def picky(part: list[int]) -> list[int]:
        if 0 in part:
            raise ValueError("no zero")
        ended.append(len(part))
        return part

    split = SplitCalls(2)
    try:
        with pytest.raises(ValueError, match="no zero"):
            split(picky, [0, 1, 2, 3])
    finally:
        split.close()
    assert ended == [2]


def test_one_worker_or_one_item_is_a_plain_call() -> None:
    caller = threading.current_thread().name
    seen: list[str] = []

    def record(part: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        return part

    assert SplitCalls(1)(record, [1, 2, 3]) == [1, 2, 3]
    two = SplitCalls(2)
    assert two(record, [7]) == [7]
    two.close()
    assert seen == [caller, caller]
    with pytest.raises(ValueError, match="at least one worker"):
        SplitCalls(0)


def test_only_a_thread_safe_model_on_the_cpu_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert split_workers(SimpleNamespace(device=cpu, thread_safe_calls=True)) == 4
    assert split_workers(SimpleNamespace(device=cpu, thread_safe_calls=True), requested=2) == 2
    assert split_workers(SimpleNamespace(device=cuda, thread_safe_calls=True)) == 1
    assert split_workers(SimpleNamespace(device=cpu)) == 1  # its calls may share state
    assert split_workers(SimpleNamespace()) == 1  # no device: a stand-in without compute
