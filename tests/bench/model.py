"""The built-in model alone: images/s of whole renders at several batch sizes, and where the
time of a render goes (the passes, the pixels, the image encoding).

Used by `make bench-decoder` and `make bench-throughput`, and runnable by itself where no
broker is (a GPU machine, say):

    python -m tests.bench.model --device cuda --kernels both --json figures.json

Each measure renders B images together, pass after pass, then draws every final grid into
pixels in one batch and encodes each image; the figure is B over the wall time, the median
of `repeats` runs. Compare figures within one run, never across machines.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from libs.model.split import SplitCalls, limit_torch_threads, split_workers

BATCHES = (1, 2, 4, 8, 16, 32, 64)
PROMPTS = (
    "a red circle on green grass",
    "a blue star at night",
    "a yellow triangle on a blue background",
    "a green square",
    "a purple heart",
    "an orange moon over the sea",
)


@dataclass(frozen=True)
class RenderShape:
    """What one measured render is: its passes, its side in pixels, the passes after which it
    also draws previews (as a request with partial_images does), and its encoding."""

    passes: int = 8
    size: int = 256
    preview_passes: tuple[int, ...] = ()
    output_format: str = "png"
    compression: int = 100


@dataclass(frozen=True)
class BatchRate:
    """One batch size's median figures: images/s of whole renders, and the seconds of one
    batch spent in the model's passes, in drawing pixels and in encoding."""

    batch: int
    images_per_s: float
    passes_s: float
    pixels_s: float
    encode_s: float


def load(device: str, name: str = "builtin") -> Any:
    """A model on `device` (by default the built-in MaskGITImageModel), warmed up (first
    calls allocate and compile)."""
    from libs.model.registry import load_model

    model: Any = load_model(name, device)
    states = [model.start(PROMPTS[0], 0, 2)]
    while not states[0].done:
        states = model.step(states)
    model.preview_batch([states[0].tokens], 64)
    return model


def _sync(model: Any) -> None:
    device = getattr(model, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def decoder_layout(model: Any) -> SplitCalls:
    """How the decoder calls this model (services.decoder.runner): on the CPU, a model that
    allows it is stepped in slices, one per core, each on one intra-op thread; else whole.
    Sets torch's intra-op threads accordingly (process-wide)."""
    workers = split_workers(model)
    limit_torch_threads(workers)
    return SplitCalls(workers, "bench-slice")


def render_once(
    model: Any,
    batch: int,
    shape: RenderShape,
    seed: int,
    encoders: Executor | None = None,
    split: SplitCalls | None = None,
) -> tuple[float, float, float]:
    """Renders `batch` images together; the seconds in passes, pixels and encoding (spread
    over `encoders`' threads when given, as the decoder does). With `split`, each pass and
    the drawing run in slices on its threads, as the decoder runs them on a CPU."""
    from libs.imaging import encode

    call = split or SplitCalls(1)
    states = [model.start(PROMPTS[i % len(PROMPTS)], seed + i, shape.passes) for i in range(batch)]
    passes_s = pixels_s = encode_s = 0.0
    while not states[0].done:
        began = time.perf_counter()
        states = call(model.step, states)
        _sync(model)
        passes_s += time.perf_counter() - began
        if states[0].done or states[0].pass_index in shape.preview_passes:
            began = time.perf_counter()
            images = call(lambda grids: model.preview_batch(grids, shape.size), [s.tokens for s in states])
            pixels_s += time.perf_counter() - began
            began = time.perf_counter()

            def encoded(image: Any) -> bytes:
                return encode(image, shape.output_format, shape.compression, size=shape.size)

            list(encoders.map(encoded, images) if encoders is not None else map(encoded, images))
            encode_s += time.perf_counter() - began
    return passes_s, pixels_s, encode_s


def measure(model: Any, batch: int, shape: RenderShape, repeats: int, split: SplitCalls | None = None) -> BatchRate:
    """The median figures of `repeats` renders of `batch` images, encoding on as many threads
    as the machine has cores (and stepping in slices with `split`)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="encode") as encoders:
        runs = [render_once(model, batch, shape, 1000 * repeat, encoders, split) for repeat in range(repeats)]
    totals = [sum(run) for run in runs]
    middle = runs[totals.index(statistics.median_low(totals))]
    return BatchRate(batch, batch / statistics.median(totals), *middle)


def model_alone(
    model: Any, batches: tuple[int, ...], shape: RenderShape, repeats: int, split: SplitCalls | None = None
) -> dict[int, BatchRate]:
    """Measures each batch size, printing a line per size (with `split`: in its slices)."""
    rates: dict[int, BatchRate] = {}
    layout = f" in {split.workers} slices" if split is not None and split.workers > 1 else ""
    for batch in batches:
        rate = measure(model, batch, shape, repeats, split)
        rates[batch] = rate
        print(
            f"  model alone{layout}, batch {batch:3d}: {rate.images_per_s:8.2f} images/s "
            f"(a batch: passes {rate.passes_s * 1000:7.1f} ms, pixels {rate.pixels_s * 1000:6.1f} ms, "
            f"encoding {rate.encode_s * 1000:7.1f} ms; median of {repeats})",
            flush=True,
        )
    return rates


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class Invariance:
    """Whether renders came out the same alone and among companions: how many of the subjects
    kept every token, how many kept every encoded byte, and the largest pixel difference."""

    companions: int
    fixed_shape: bool
    subjects: int
    same_tokens: int
    same_bytes: int
    max_pixel_diff: int


def _finish(model: Any, states: list[Any], subjects: int) -> list[Any]:
    """Steps `states` until its first `subjects` are done; companions that finish first are
    replaced by fresh ones, so every pass runs at the same batch size."""
    fresh = 0
    while not all(s.done for s in states[:subjects]):
        active = [i for i, s in enumerate(states) if not s.done]
        stepped = model.step([states[i] for i in active])
        for i, state in zip(active, stepped, strict=True):
            states[i] = state
        for i in range(subjects, len(states)):
            if states[i].done:
                fresh += 1
                states[i] = model.start(PROMPTS[fresh % len(PROMPTS)], 50_000 + fresh, 4 + fresh % 9)
    return states[:subjects]


def batch_invariance(
    model: Any, companions: int, shape: RenderShape, subjects: int = 4, fixed_shape: bool = False
) -> Invariance:
    """Renders `subjects` renders alone, then again among `companions` other renders that
    started earlier and take other pass counts; compares their final tokens, their pixels and
    their encoded bytes. With `fixed_shape`, "alone" is among as many other companions, so
    both runs step batches of one shape: it tells batch-shape effects (a library choosing
    another kernel for another batch size) from true cross-talk between a batch's rows."""
    from libs.imaging import encode

    def subject(i: int) -> Any:
        return model.start(PROMPTS[i % len(PROMPTS)], 7 + i, shape.passes)

    def others(count: int, offset: int) -> list[Any]:
        states = []
        for j in range(count):
            state = model.start(PROMPTS[(j + 3) % len(PROMPTS)], offset + j, 4 + j % 9)
            for _ in range(j % min(3, state.total_passes)):
                state = model.step([state])[0]
            states.append(state)
        return states

    def rendered(states: list[Any], batch_pixels: int) -> list[tuple[np.ndarray, bytes]]:
        grids = [s.tokens for s in states]
        grids += [o.tokens for o in others(batch_pixels - len(states), 90_000)]
        images = model.preview_batch(grids, shape.size)[: len(states)]
        return [(img, encode(img, shape.output_format, shape.compression, size=shape.size)) for img in images]

    alone_states = []
    for i in range(subjects):
        padding = others(companions, 20_000 + 100 * i) if fixed_shape else []
        alone_states += _finish(model, [subject(i), *padding], 1)
    alone = [rendered([s], 1 + companions if fixed_shape else 1)[0] for s in alone_states]
    together_states = _finish(model, [subject(i) for i in range(subjects)] + others(companions, 30_000), subjects)
    together = rendered(together_states, subjects + companions)
    same_tokens = sum(
        bool(np.array_equal(a.tokens, b.tokens)) for a, b in zip(alone_states, together_states, strict=True)
    )
    same_bytes = sum(a[1] == b[1] for a, b in zip(alone, together, strict=True))
    diff = max(
        int(np.abs(a[0].astype(np.int16) - b[0].astype(np.int16)).max()) for a, b in zip(alone, together, strict=True)
    )
    return Invariance(companions, fixed_shape, subjects, same_tokens, same_bytes, diff)


def profile_step(model: Any, batch: int, passes: int, top: int = 18) -> str:
    """cProfile of the passes of one render of `batch` images: where a pass's time goes."""
    states = [model.start(PROMPTS[i % len(PROMPTS)], i, passes) for i in range(batch)]
    profiler = cProfile.Profile()
    profiler.enable()
    while not states[0].done:
        states = model.step(states)
    _sync(model)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument(
        "--model", default="builtin", help="a DARKROOM_MODEL value, e.g. amused:/path (python -m tests.tiny_amused)"
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--compression", type=int, default=100, help="0-100 as in the API (png: zlib level)")
    parser.add_argument("--previews", default="", help="passes after which previews are drawn, e.g. 1,2,3")
    parser.add_argument("--kernels", choices=("on", "off", "both"), default="on", help="darkroom's Triton kernels")
    parser.add_argument(
        "--calls",
        choices=("fixed", "as-batched", "both"),
        default="fixed",
        help="the built-in model's network calls: padded to one shape (as served), or as each batch comes",
    )
    parser.add_argument("--profile", type=int, default=0, help="also profile the passes at this batch size")
    parser.add_argument(
        "--invariance",
        type=int,
        default=0,
        help="also check that renders come out the same alone and among this many companions",
    )
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    shape = RenderShape(
        passes=args.passes,
        size=args.size,
        preview_passes=tuple(int(p) for p in args.previews.split(",") if p),
        compression=args.compression,
    )
    batches = tuple(int(b) for b in args.batches.split(","))
    figures: dict[str, Any] = {"device": device_name(device), "shape": asdict(shape)}
    print(f"the model {args.model} alone on {figures['device']}: {shape}")
    runs = [
        (kernels, calls)
        for kernels in (("on", "off") if args.kernels == "both" else (args.kernels,))
        for calls in (("fixed", "as-batched") if args.calls == "both" else (args.calls,))
    ]
    for kernels, calls in runs:
        os.environ["DARKROOM_KERNELS"] = "triton" if kernels == "on" else "reference"
        model = load(device, args.model)
        if calls == "as-batched" and hasattr(model, "generator_rows"):
            model.generator_rows = model.decoder_rows = None
        print(f" kernels {kernels}, network calls {calls}")
        run = f"kernels_{kernels}" if calls == "fixed" else f"kernels_{kernels}_{calls}"
        rates = model_alone(model, batches, shape, args.repeats)
        figures[run] = {b: asdict(r) for b, r in rates.items()}
        best = max(rates.values(), key=lambda r: r.images_per_s)
        print(
            f" best: batch {best.batch}, {best.images_per_s / rates[batches[0]].images_per_s:.2f}x batch {batches[0]}"
        )
        if args.profile:
            report = profile_step(model, args.profile, shape.passes)
            figures[f"profile_{run}"] = report
            print(report)
        if args.invariance:
            for fixed in (False, True):
                check = batch_invariance(model, args.invariance, shape, fixed_shape=fixed)
                figures.setdefault(f"invariance_{run}", []).append(asdict(check))
                print(
                    f" alone vs among {check.companions} companions"
                    f"{' (both in batches of one shape)' if fixed else ''}: "
                    f"{check.same_tokens}/{check.subjects} same tokens, {check.same_bytes}/{check.subjects} "
                    f"same {shape.output_format} bytes, largest pixel difference {check.max_pixel_diff}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
