"""`make test`: a private stack, the test suites, then everything stopped again.

The test stack uses the `test` profile (its own ports and .run/test), so it never
collides with a developer's `make up`. Its data folder is wiped first so every run
starts from nothing. Integration and e2e tests find it through the same profile;
they fail, never skip, when a component is missing. The exit code is pytest's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from infra.stack import SERVICES, Stack, StackError, load_profile, port_open


def main(argv: list[str]) -> int:
    """Run pytest on `argv` (paths and options) inside a fresh test stack."""
    stack = Stack(load_profile("test"))
    needs_stack = any(not arg.startswith("tests/unit") for arg in argv if not arg.startswith("-"))
    t0 = time.monotonic()
    if needs_stack:
        stack.down()
        shutil.rmtree(stack.profile.run_dir, ignore_errors=True)
        print(f"test stack: starting Kafka, MinIO and FerretDB in {stack.profile.run_dir}")
        try:
            stack.up_infra()
        except (StackError, subprocess.CalledProcessError) as exc:
            print(f"error: test stack failed to start: {exc}", file=sys.stderr)
            stack.down()
            return 1
        print(f"test stack: up in {time.monotonic() - t0:.1f}s")
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", *argv])
    finally:
        if needs_stack:
            stopped = stack.down()
            print(f"test stack: stopped {', '.join(stopped)}")
    if needs_stack and code == 0:
        profile = stack.profile
        ports = [port for node in profile.kafka_nodes for port in (node.port, node.controller_port)]
        ports += [profile.minio_port, profile.ferretdb_port]
        ports += [profile.health_port(s) for s in SERVICES]
        left = [p for p in ports if port_open(p)]
        if left:
            print(f"error: something still listens on test ports {left} after the stack stopped", file=sys.stderr)
            code = 1
    print(f"make test: {time.monotonic() - t0:.0f}s, pytest exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
