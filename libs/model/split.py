"""One batched model call as several smaller calls at once, each on its own CPU thread.

Why: on a CPU, torch spreads one call over its intra-op threads and waits at the end of
every operation for the slowest of them. A small model at a small batch has many short
operations, so on a 2-core machine two intra-op threads render only ~1.3x faster than one,
and whenever another process takes a core the other thread idles at the barrier. A batch
cut in as many slices as the machine has cores, each stepped by its own thread with one
intra-op thread, keeps every core busy (the threads meet once per call, not once per
operation; torch releases the GIL while it computes): measured on a 2-core machine, 13.0
images/s instead of 9.7 for batches of 8, 4-pass renders (docs/operations.md).

Only models that say their calls may run on several threads at once are split
(`thread_safe_calls`, the built-in model: a pass reads its weights and writes nothing
shared), and only on the CPU: a GPU runs one batch best as one call. A render's result
does not change: a slice is a smaller batch, and a render's images do not depend on its
batch (libs.model.interface).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def split_workers(model: Any, requested: int = 0) -> int:
    """How many threads should share one batched call of `model`.

    Args:
        model: A loaded model; split only when it runs on the CPU and sets
            `thread_safe_calls`.
        requested: An explicit count (`DecoderSettings.model_threads`); 0 picks one thread
            per core for a model that can be split, else 1.
    """
    device = getattr(model, "device", None)
    if not getattr(model, "thread_safe_calls", False) or getattr(device, "type", None) != "cpu":
        return 1
    return requested or os.cpu_count() or 1


def slices(items: Sequence[T], parts: int) -> list[list[T]]:
    """`items` cut in `parts` contiguous slices as even as can be (none empty when
    len(items) >= parts; fewer slices when there are fewer items)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out: list[list[T]] = []
    at = 0
    for part in range(parts):
        end = at + size + (1 if part < extra else 0)
        out.append(list(items[at:end]))
        at = end
    return out


class SplitCalls:
    """Runs a batched call `fn(items) -> results` (one result per item, in order) as up to
    `workers` calls on slices of the batch at once: the calling thread takes the first
    slice, helper threads the others.

    With one worker it is a plain call, and so is a batch of one item. Before splitting,
    `limit_torch_threads` should give each slice's thread one core of torch's intra-op pool.

    Args:
        workers: Threads per call, the caller's included (>= 1).
        name: Prefix of the helper threads' names.
    """

    def __init__(self, workers: int, name: str = "model-slice") -> None:
        if workers < 1:
            raise ValueError(f"a call needs at least one worker, got {workers}")
        self.workers = workers
        self._helpers = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix=name) if workers > 1 else None

    def __call__(self, fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
        if self._helpers is None or len(items) < 2:
            return list(fn(list(items)))
        first, *rest = slices(items, self.workers)
        pending = [self._helpers.submit(fn, part) for part in rest]
        try:
            out = list(fn(first))
        finally:
            wait(pending)  # every slice ends before the call does, failed or not
        for future in pending:
            out.extend(future.result())
        return out

    def close(self) -> None:
        """Stops the helper threads (a call in progress finishes)."""
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)


def limit_torch_threads(workers: int) -> None:
    """Gives each of `workers` slice threads an equal share of the cores as torch's intra-op
    threads. Call it once, before the first split call, on the thread that makes the split
    calls: OpenMP and MKL keep their thread count per thread, so a thread that already ran
    torch keeps its own count until it calls this; threads started later take the new
    count at their first operation."""
    if workers <= 1:
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
