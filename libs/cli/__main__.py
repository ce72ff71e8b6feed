"""darkroom: the operator CLI.

darkroom kafka topics --list                 Kafka's topic tool on the local broker
darkroom kafka groups --describe --all-groups consumer groups and their lag
darkroom schemas export [DIR]                write every event's JSON Schema
darkroom dlq list                            messages parked on the dead-letter topic, with the reason
darkroom dlq replay OFFSET... | --all        send parked messages back to their topic, unchanged
darkroom rebuild                             drop the read models and rebuild them from the topics
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from libs.cli.accounts import AccountError, run_create_account
from libs.cli.kafka_tools import TOOLS, default_bootstrap, tool_command
from libs.cli.schemas import export_schemas
from libs.events.schemas import TIERS
from libs.settings import DEV_SIGNING_KEY


def _kafka(args: argparse.Namespace, rest: list[str]) -> int:
    from infra import paths

    home = paths.kafka_home()
    if not (home / ".complete").exists():
        print(f"darkroom: Kafka tools are not installed ({home}); run `make setup`", file=sys.stderr)
        return 1
    command = tool_command(args.tool, rest, bootstrap=args.bootstrap, classpath=paths.kafka_classpath())
    os.execv(command[0], command)  # noqa: S606 - hand the terminal to the Kafka tool
    return 0  # pragma: no cover - exec does not return


def _safety_policy(args: argparse.Namespace) -> int:
    from libs.cli.safety_policy import format_policy, operator_name, set_policy, show_policy
    from services.safety.domain import InvalidPolicy

    try:
        if args.action == "show":
            print(format_policy(show_policy(args.bootstrap)), end="")
            return 0
        if args.file is None:
            print("darkroom: `safety policy set` needs --file", file=sys.stderr)
            return 2
        published = set_policy(args.bootstrap, args.file, operator_name())
    except (InvalidPolicy, TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    print(f"published safety policy version {published.version} ({len(published.categories)} categories)")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    import asyncio

    from libs.cli.dlq import format_letters, read_letters, replay, select

    try:
        letters = asyncio.run(read_letters(args.bootstrap))
        if args.action == "list":
            shown = select(letters, service=args.service)
            print(format_letters(shown[-args.limit :] if args.limit else shown), end="")
            return 0
        if not args.offsets and not args.all:
            print("darkroom: `dlq replay` needs dead-letter offsets or --all", file=sys.stderr)
            return 2
        chosen = select(letters, args.offsets, args.service)
        sent = asyncio.run(replay(args.bootstrap, chosen))
    except (KeyError, TimeoutError, OSError) as exc:
        print(f"darkroom: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    print(f"replayed {sent} dead letter{'s' if sent != 1 else ''}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    import asyncio

    from libs.cli.rebuild import rebuild

    try:
        counts = asyncio.run(rebuild(args.bootstrap, args.mongo_url, args.mongo_database))
    except (TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    for collection, count in counts.items():
        print(f"rebuilt {collection}: {count} documents")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="darkroom", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    kafka = commands.add_parser("kafka", help="run Kafka's operator tools against the broker")
    kafka.add_argument("tool", choices=sorted(TOOLS), help="which Kafka tool")
    kafka.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    accounts = commands.add_parser("accounts", help="accounts and API keys")
    accounts_cmd = accounts.add_subparsers(dest="accounts_command", required=True)
    create = accounts_cmd.add_parser("create", help="create an account and print its API key")
    create.add_argument("--email", required=True)
    create.add_argument("--tier", choices=TIERS, default="free")
    create.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    safety = commands.add_parser("safety", help="the safety policy")
    safety_cmd = safety.add_subparsers(dest="safety_command", required=True)
    policy = safety_cmd.add_parser("policy", help="show or set the safety policy")
    policy.add_argument("action", choices=["show", "set"])
    policy.add_argument("--file", type=Path, help="set: a policy YAML (as `show` prints)")
    policy.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    schemas = commands.add_parser("schemas", help="event schemas")
    schemas_cmd = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_cmd.add_parser("export", help="write JSON Schemas of every event")
    export.add_argument("directory", nargs="?", default="docs/schemas", type=Path)

    dlq = commands.add_parser("dlq", help="the dead-letter topic")
    dlq_cmd = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_cmd.add_parser("list", help="list dead letters with their reason and origin")
    dlq_list.add_argument("--limit", type=int, default=0, help="only the last N letters")
    dlq_replay = dlq_cmd.add_parser("replay", help="send dead letters back to their original topic")
    dlq_replay.add_argument("offsets", nargs="*", type=int, help="dead-letter offsets (as `dlq list` shows)")
    dlq_replay.add_argument("--all", action="store_true", help="every letter (or every letter of --service)")
    for sub in (dlq_list, dlq_replay):
        sub.add_argument("--service", help="only letters parked by this service")
        sub.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    rebuild = commands.add_parser("rebuild", help="drop the read models and rebuild them by replaying the topics")
    rebuild.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")
    rebuild.add_argument(
        "--mongo-url", default=os.environ.get("DARKROOM_MONGO_URL", "mongodb://127.0.0.1:27017/"), help="MongoDB"
    )
    rebuild.add_argument("--mongo-database", default=os.environ.get("DARKROOM_MONGO_DATABASE", "darkroom"))

    args, rest = parser.parse_known_args(argv)
    if args.command == "kafka":
        return _kafka(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "accounts":
        signing_key = os.environ.get("DARKROOM_SIGNING_KEY", DEV_SIGNING_KEY)
        try:
            account = run_create_account(args.bootstrap, args.email, args.tier, signing_key)
        except AccountError as exc:
            print(f"darkroom: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(account, indent=2))
        return 0
    if args.command == "safety":
        return _safety_policy(args)
    if args.command == "dlq":
        return _dlq(args)
    if args.command == "rebuild":
        return _rebuild(args)
    if args.command == "schemas":
        written = export_schemas(args.directory)
        print(f"wrote {len(written)} files to {args.directory}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
