"""The benchmarks' own stack: the `bench` profile (ports +20000), started from nothing."""

from __future__ import annotations

import shutil
import sys

from infra.stack import Stack, StackError, load_profile


def fresh_bench_stack(note: str = "") -> Stack | None:
    """Stop any bench stack, wipe its data, start everything; None (and a message) on failure."""
    stack = Stack(load_profile("bench"))
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
