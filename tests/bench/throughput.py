"""`make bench-throughput`: how much of the model's capacity reaches users.

Two measures in one run on one machine (compare within a run, never across machines):

1. The built-in model alone at the decoder's batch limit (the device's default), low
   quality (4 passes), 256x256 PNG: images/s of whole renders (tests/bench/model.py),
   called as the decoder calls it: on a CPU, each pass in slices on every core
   (libs.model.split). It is measured before the stack and again after it, and R divides
   by the mean of the two: a machine whose speed drifts during the run then weighs on the
   model's figure as on the stack's. The same batch as one call on torch's own threads is
   printed first, for comparison.
2. The whole stack at saturation with the same model and limit: the `bench` profile
   started from nothing, decoders on the built-in model, the default safety policy (so
   content checks score real pictures), one pro account with its limits lifted, and
   enough concurrent `POST /v1/images/generations` calls (low quality) to keep the
   decoder's batch full. Jobs completed per second in the steady state: from the
   `limit`-th completion to the `limit`-th before the last, so the ramp-up and the
   draining batch at the end are left out.

Their ratio is what the pipeline (gateway, Kafka, requests, safety, storage, the stores,
all sharing the machine with the model) leaves of the model's capacity. Beside each
process's CPU per job, the run prints the share of the machine's CPU time left idle in the
steady state (what the stack could not use) and the CPU this benchmark's own HTTP clients
spent per job (they share the machine too). The last line is exactly:
`service/model throughput: <R> (<service> vs <model> images/s, <device>)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import httpx

from libs.model.split import split_workers
from libs.settings import DEFAULT_BATCH_IMAGES
from tests.bench import model as bench_model
from tests.bench.stack import MachineSampler, cpu_seconds, fresh_bench_stack, idle_share, lifted_pro_account

PASSES = 4  # quality "low"
SIZE = 256


async def saturate(base_url: str, api_key: str, concurrency: int, jobs: int) -> dict[str, Any]:
    """`jobs` generations from `concurrency` clients; when each completed, and errors."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    completed: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=600, limits=limits, headers={"authorization": f"Bearer {api_key}"}
    ) as http:

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                response = await http.post(
                    "/v1/images/generations",
                    json={"prompt": f"a red circle on green grass, number {i}", "quality": "low", "seed": i},
                )
                if response.status_code == 200:
                    completed.append(time.perf_counter())
                else:
                    errors.append(f"{response.status_code}: {response.text[:200]}")

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"began": began, "completed": sorted(completed), "errors": errors}


def steady_window(completed: list[float], edge: int) -> list[float]:
    """The completions of the steady state: from the `edge`-th to the `edge`-th before the
    last (all of them when there are too few to leave the edges out)."""
    return completed if len(completed) <= 2 * edge + 1 else completed[edge : len(completed) - edge]


def steady_rate(completed: list[float], edge: int) -> float:
    """Completions per second between the `edge`-th and the `edge`-th before the last."""
    window = steady_window(completed, edge)
    return (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0


def model_as_the_decoder_calls_it(model: Any, limit: int, shape: bench_model.RenderShape, repeats: int) -> float:
    """The model alone's images/s at `limit`, called as the decoder calls it (on a CPU, each
    pass in slices on every core)."""
    split = bench_model.decoder_layout(model)
    try:
        return bench_model.model_alone(model, (limit,), shape, repeats, split)[limit].images_per_s
    finally:
        split.close()


def own_cpu_s() -> float:
    """CPU seconds this process (the benchmark, its HTTP clients included) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="the decoder's batch limit (0: the device's default)")
    parser.add_argument("--jobs", type=int, default=0, help="jobs through the stack (0: 12 x the limit)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the model alone")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    limit = args.limit or DEFAULT_BATCH_IMAGES[device]
    jobs = args.jobs or 12 * limit
    figures: dict[str, Any] = {"device": bench_model.device_name(device), "limit": limit, "jobs": jobs}

    shape = bench_model.RenderShape(passes=PASSES, size=SIZE)
    print(f"1. the built-in model alone on {figures['device']}: batch {limit}, {PASSES} passes, {SIZE}x{SIZE} PNG")
    model = bench_model.load(device)
    if split_workers(model) > 1:  # for comparison: one call a pass, on torch's own threads
        whole = bench_model.model_alone(model, (limit,), shape, args.repeats)[limit]
        figures["model_one_call_images_per_s"] = whole.images_per_s
    model_before = model_as_the_decoder_calls_it(model, limit, shape, args.repeats)
    del model  # the stack's decoder loads its own

    print(f"2. the whole stack at saturation: {jobs} low-quality generations, {3 * limit} at a time")
    env = (
        ("decoder", "DARKROOM_MODEL", "builtin"),
        ("decoder", "DARKROOM_BATCH_IMAGES", str(limit)),
        ("decoder-api", "DARKROOM_MODEL", "noop"),  # idle here: no api-tier job is sent
    )
    stack = fresh_bench_stack("decoders on the built-in model", process_env=env)
    if stack is None:
        return 1
    try:
        account = lifted_pro_account(stack)
        url, key = stack.profile.gateway_url, account["api_key"]
        asyncio.run(saturate(url, key, limit, 2 * limit))  # warm-up: connections, lazy loading
        before, client_before = cpu_seconds(stack.profile.run_dir), own_cpu_s()
        with MachineSampler() as machine:
            run = asyncio.run(saturate(url, key, 3 * limit, jobs))
        after, client_after = cpu_seconds(stack.profile.run_dir), own_cpu_s()
    finally:
        stack.down()
    if run["errors"]:
        print(f"error: {len(run['errors'])} of {jobs} requests failed, first: {run['errors'][0]}", file=sys.stderr)
        return 1
    service = steady_rate(run["completed"], limit)
    done = len(run["completed"])
    cpu = {name: round((after[name] - before.get(name, 0.0)) * 1000 / done, 1) for name in after}
    window = steady_window(run["completed"], limit)
    idle = idle_share(machine.samples, window[0], window[-1])
    figures |= {
        "service_images_per_s": service,
        "overall_images_per_s": done / (run["completed"][-1] - run["began"]),
        "cpu_ms_per_job": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "client_cpu_ms_per_job": (client_after - client_before) * 1000 / done,
        "steady_idle_share": idle,
    }
    print(f"   steady state {service:.2f} images/s ({figures['overall_images_per_s']:.2f} over the whole run)")
    print("   CPU ms per job: " + ", ".join(f"{name} {ms:.0f}" for name, ms in figures["cpu_ms_per_job"].items()))
    # What the stack left unused: on a machine the stack saturates with work this is near 0;
    # above it, the pipeline waits on the decoder's passes (or the reverse) with a core free.
    idle_text = f"{idle * 100:.1f}%" if idle is not None else "not measured"
    print(
        f"   machine idle in the steady state: {idle_text} of its CPU time; "
        f"this benchmark's own clients: {figures['client_cpu_ms_per_job']:.1f} ms of CPU per job"
    )
    print(f"3. the built-in model alone again, after the stack: batch {limit}")
    model_after = model_as_the_decoder_calls_it(bench_model.load(device), limit, shape, args.repeats)
    model_rate = (model_before + model_after) / 2
    print(
        f"   model alone {model_rate:.2f} images/s: "
        f"the mean of {model_before:.2f} before the stack and {model_after:.2f} after it"
    )
    figures |= {
        "model_before_images_per_s": model_before,
        "model_after_images_per_s": model_after,
        "model_images_per_s": model_rate,
    }
    ratio = service / model_rate
    figures["ratio"] = ratio
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)
    print(f"service/model throughput: {ratio:.2f} ({service:.2f} vs {model_rate:.2f} images/s, {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
