"""Start a supervised process with the environment saved for it.

supervisord's program line is `python infra/launch.py ENV_FILE -- COMMAND...`: this reads
the JSON object in ENV_FILE (the whole environment of the process) and replaces itself with
COMMAND, so the process supervisord watches is COMMAND itself (same pid). Keeping the
environment in a file rather than in supervisord's `environment=` line spares every value
from supervisord's quoting rules (JSON lists, quotes, `%`, commas). Standard library only.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    """Exec COMMAND with the saved environment (see the module docstring)."""
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: launch.py ENV_FILE -- COMMAND [ARG...]")
    with open(argv[0], encoding="utf-8") as handle:
        env = json.load(handle)
    command = argv[2:]
    os.execvpe(command[0], command, env)  # noqa: S606 - the supervised program itself


if __name__ == "__main__":
    main(sys.argv[1:])
