"""darkroom: the operator CLI.

darkroom kafka topics --list                 Kafka's topic tool on the local broker
darkroom kafka groups --describe --all-groups consumer groups and their lag
darkroom schemas export [DIR]                write every event's JSON Schema
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from libs.cli.kafka_tools import TOOLS, default_bootstrap, tool_command
from libs.cli.schemas import export_schemas


def _kafka(args: argparse.Namespace, rest: list[str]) -> int:
    from infra import paths

    home = paths.kafka_home()
    if not (home / ".complete").exists():
        print(f"darkroom: Kafka tools are not installed ({home}); run `make setup`", file=sys.stderr)
        return 1
    command = tool_command(args.tool, rest, bootstrap=args.bootstrap, classpath=paths.kafka_classpath())
    os.execv(command[0], command)  # noqa: S606 - hand the terminal to the Kafka tool
    return 0  # pragma: no cover - exec does not return


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="darkroom", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    kafka = commands.add_parser("kafka", help="run Kafka's operator tools against the broker")
    kafka.add_argument("tool", choices=sorted(TOOLS), help="which Kafka tool")
    kafka.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    schemas = commands.add_parser("schemas", help="event schemas")
    schemas_cmd = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_cmd.add_parser("export", help="write JSON Schemas of every event")
    export.add_argument("directory", nargs="?", default="docs/schemas", type=Path)

    args, rest = parser.parse_known_args(argv)
    if args.command == "kafka":
        return _kafka(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "schemas":
        written = export_schemas(args.directory)
        print(f"wrote {len(written)} files to {args.directory}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
