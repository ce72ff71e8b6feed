"""Probe a health endpoint: exit 0 when it answers 200 (for container health checks).

Usage: python -m libs.runtime.healthcheck http://127.0.0.1:8081/healthz
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    """Return 0 if the URL answers 200 within 3 seconds, else 1."""
    if len(argv) != 2:
        print("usage: python -m libs.runtime.healthcheck URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[1], timeout=3) as response:  # noqa: S310 - operator-given URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
