"""The benchmarks' own stack: the `bench` profile (ports +20000), started from nothing."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from infra.stack import Stack, StackError, load_profile
from libs.cli.safety_policy import set_policy

DEFAULT_SAFETY_POLICY = Path(__file__).resolve().parents[2] / "services" / "safety" / "default_policy.yaml"


def fresh_bench_stack(note: str = "", process_env: tuple[tuple[str, str, str], ...] = ()) -> Stack | None:
    """Stop any bench stack, wipe its data, start everything; None (and a message) on failure.

    Args:
        note: Printed with the start message.
        process_env: Extra (process, variable, value) settings (`Profile.process_env`).
    """
    stack = Stack(replace(load_profile("bench"), process_env=process_env))
    stack.down()
    shutil.rmtree(stack.profile.run_dir, ignore_errors=True)
    print(f"bench stack: starting{f' ({note})' if note else ''}")
    try:
        stack.up_infra()
        stack.up_services()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stack.down()
        return None
    return stack


def let_stand_in_grids_through(stack: Stack) -> None:
    """Publish a safety policy under which a stand-in model's jobs complete.

    NoOpModel's grids are random token soup, which is no drawing at all; a policy without
    content classes keeps the content checks running (they are pipeline cost) but lets
    such grids through, so every job completes.
    """
    policy = yaml.safe_load(DEFAULT_SAFETY_POLICY.read_text())
    for category in policy["categories"]:
        category["content_classes"] = []
    bench_policy = stack.profile.run_dir / "bench-policy.yaml"
    bench_policy.write_text(yaml.safe_dump(policy))
    set_policy(stack.profile.kafka_bootstrap, bench_policy, "bench")


def cpu_seconds(run_dir: Path) -> dict[str, float]:
    """CPU time (user + system) each component of the stack has used so far, by name."""
    used: dict[str, float] = {}
    for pid_file in sorted((run_dir / "pids").glob("*.pid")):
        pid = pid_file.read_text().split()[0]
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        used[pid_file.stem] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used
