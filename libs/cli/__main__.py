"""darkroom: the operator CLI.

darkroom kafka topics --list                 Kafka's topic tool on the local broker
darkroom kafka groups --describe --all-groups consumer groups and their lag
darkroom schemas export [DIR]                write every event's JSON Schema
darkroom accounts create|upgrade|revoke      accounts, tiers and API keys
darkroom policy show|set                     tier limits and rollout flags, applied live
darkroom jobs show JOB_ID                    any account's job (operators see all)
darkroom dlq list                            messages parked on the dead-letter topic, with the reason
darkroom dlq replay OFFSET... | --all        send parked messages back to their topic, unchanged
darkroom rebuild                             drop the read models and rebuild them from the topics
darkroom lanes                               per lane: jobs waiting, bound, taken, jobs/s, paused, refused
darkroom models list|add|validate|rollout|promote|rollback   model versions and their rollout, applied live
darkroom usage --account ID                  an account's metered usage per UTC day
darkroom capacity --images-per-s N ...       devices, replicas, brokers and partitions for a demand
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

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
    from libs.safety_policy import InvalidPolicy

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


_POLICY_FIELDS = (
    "requests_per_minute",
    "tier_requests_per_minute",
    "images_per_day",
    "concurrent_jobs",
    "max_n",
    "max_quality",
    "lane",
)


def _accounts(args: argparse.Namespace) -> int:
    from libs.cli.accounts import change_tier, key_id_of, revoke

    signing_key = os.environ.get("DARKROOM_SIGNING_KEY", DEV_SIGNING_KEY)
    try:
        if args.accounts_command == "create":
            result: object = run_create_account(args.bootstrap, args.email, args.tier, signing_key)
        elif args.accounts_command == "upgrade":
            result = asyncio.run(change_tier(args.bootstrap, args.account, args.tier, _operator()))
        else:
            account, key_id = args.account, args.key_id
            if args.key:
                account, key_id = key_id_of(args.key, signing_key)
            if not account:
                print("darkroom: `accounts revoke` needs --account (and maybe --key-id) or --key", file=sys.stderr)
                return 2
            revoked = asyncio.run(revoke(args.bootstrap, account, key_id, args.reason, _operator()))
            result = {"id": account, "object": "account", "revoked_key_ids": revoked}
    except (AccountError, TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _policy(args: argparse.Namespace) -> int:
    from libs.cli.policy import PolicyError, set_policy, show

    try:
        if args.policy_command == "show":
            print(show(args.bootstrap), end="")
            return 0
        changes = {name: getattr(args, name) for name in _POLICY_FIELDS if getattr(args, name) is not None}
        if args.rollout is not None and changes:
            print("darkroom: set either a rollout or limits, not both at once", file=sys.stderr)
            return 2
        change = set_policy(
            args.bootstrap,
            changed_by=_operator(),
            tier=args.tier,
            changes=changes,
            rollout=args.rollout,
            percent=args.percent,
        )
    except (PolicyError, TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(change.model_dump(mode="json"), indent=2))
    return 0


def _models(args: argparse.Namespace) -> int:
    from libs.cli import models as cli

    by = _operator()
    try:
        match args.models_command:
            case "list":
                print(cli.list_models(args.bootstrap, args.model), end="")
                return 0
            case "add":
                event = cli.change(
                    args.bootstrap, lambda r: cli.add_change(r, args.model, args.version, args.source, by)
                )
            case "validate":
                event = cli.validate_version(
                    args.bootstrap,
                    args.model,
                    args.version,
                    n=args.n,
                    passes=args.passes,
                    min_recall=args.min_recall,
                    max_false_positive_rate=args.max_false_positive_rate,
                    device=args.device,
                    changed_by=by,
                )
            case "rollout":
                event = cli.change(
                    args.bootstrap, lambda r: cli.rollout_change(r, args.model, args.version, args.percent, by)
                )
            case "promote":
                event = cli.change(args.bootstrap, lambda r: cli.promote_change(r, args.model, args.version, by))
            case _:
                event = cli.change(args.bootstrap, lambda r: cli.rollback_change(r, args.model, args.reason, by))
    except (cli.ModelsError, TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(event.model_dump(mode="json"), indent=2))
    if args.models_command == "validate" and not getattr(event, "passed", True):
        print("darkroom: the version failed its safety validation; it cannot be promoted", file=sys.stderr)
        return 1
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from libs.cli.jobs import show_job

    try:
        job = asyncio.run(show_job(args.job_id))
    except OSError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    if job is None:
        print(f"darkroom: no job {args.job_id}", file=sys.stderr)
        return 1
    print(json.dumps(job, indent=2))
    return 0


def _operator() -> str:
    from libs.cli.safety_policy import operator_name

    return operator_name()


def _lanes(args: argparse.Namespace) -> int:
    from libs.cli.lanes import format_batches, format_reports, lane_reports

    try:
        reports, batches = asyncio.run(lane_reports(args.bootstrap))
    except (TimeoutError, OSError) as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    print(format_reports(reports), end="")
    if batches:
        print()
        print(format_batches(batches), end="")
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
    upgrade = accounts_cmd.add_parser("upgrade", help="move an account to another tier (its keys keep working)")
    upgrade.add_argument("--account", required=True, help="account id (acct_...)")
    upgrade.add_argument("--tier", choices=TIERS, required=True)
    upgrade.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")
    revoke = accounts_cmd.add_parser("revoke", help="revoke an API key, or every key of an account")
    revoke.add_argument("--account", help="account id: revoke all its keys (or the one --key-id names)")
    revoke.add_argument("--key-id", help="the key id to revoke (with --account)")
    revoke.add_argument("--key", help="the API key itself (sk-dr-...): revoke that key")
    revoke.add_argument("--reason", default="")
    revoke.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    safety = commands.add_parser("safety", help="the safety policy")
    safety_cmd = safety.add_subparsers(dest="safety_command", required=True)
    policy = safety_cmd.add_parser("policy", help="show or set the safety policy")
    policy.add_argument("action", choices=["show", "set"])
    policy.add_argument("--file", type=Path, help="set: a policy YAML (as `show` prints)")
    policy.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    policy_cli = commands.add_parser("policy", help="tier limits and rollout flags (applied live by every gateway)")
    policy_cmd = policy_cli.add_subparsers(dest="policy_command", required=True)
    policy_show = policy_cmd.add_parser("show", help="every tier's limits and every rollout flag (YAML)")
    policy_show.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")
    policy_set = policy_cmd.add_parser("set", help="change some limits of a tier, or a rollout flag")
    policy_set.add_argument("--tier", choices=TIERS, required=True)
    for name in _POLICY_FIELDS:
        policy_set.add_argument(f"--{name.replace('_', '-')}", dest=name, help=name.replace("_", " "))
    policy_set.add_argument("--rollout", metavar="FEATURE", help="set this feature's rollout for the tier")
    policy_set.add_argument("--percent", type=float, help="with --rollout: share of the tier's accounts, 0-100")
    policy_set.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    jobs = commands.add_parser("jobs", help="image jobs of any account")
    jobs_cmd = jobs.add_subparsers(dest="jobs_command", required=True)
    job_show = jobs_cmd.add_parser("show", help="a job's state as the gateway's read model holds it (JSON)")
    job_show.add_argument("job_id")

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

    lanes = commands.add_parser("lanes", help="per lane: jobs waiting, bound, taken, jobs/s, paused, refused (503)")
    lanes.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    _add_models_parser(commands)
    usage = commands.add_parser("usage", help="an account's metered usage per UTC day (YAML)")
    usage.add_argument("--account", required=True, help="the account id (acct_...)")
    usage.add_argument("--bootstrap", default=default_bootstrap(), help="broker (default: %(default)s)")

    _add_capacity_parser(commands)

    args, rest = parser.parse_known_args(argv)
    if args.command == "kafka":
        return _kafka(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "accounts":
        return _accounts(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "jobs":
        return _jobs(args)
    if args.command == "safety":
        return _safety_policy(args)
    if args.command == "dlq":
        return _dlq(args)
    if args.command == "rebuild":
        return _rebuild(args)
    if args.command == "lanes":
        return _lanes(args)
    if args.command == "models":
        return _models(args)
    if args.command == "capacity":
        return _capacity(args)
    if args.command == "usage":
        from libs.cli.usage import show_usage

        try:
            print(show_usage(args.bootstrap, args.account), end="")
        except (TimeoutError, OSError) as exc:
            print(f"darkroom: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "schemas":
        written = export_schemas(args.directory)
        print(f"wrote {len(written)} files to {args.directory}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


def _add_capacity_parser(commands: Any) -> None:
    from libs.cli.capacity import DEFAULT_MODEL, DEFAULT_PIPELINE, Demand

    defaults = Demand(images_per_s=0, signups_per_s=0)
    capacity = commands.add_parser(
        "capacity", help="devices, replicas, brokers and partitions for a demand, from the benchmarks' figures"
    )
    capacity.add_argument("--images-per-s", type=float, required=True, help="images per second at peak")
    capacity.add_argument("--signups-per-s", type=float, default=0.0, help="sign-ups per second at peak")
    capacity.add_argument("--images-per-job", type=float, default=defaults.images_per_job, help="mean n")
    capacity.add_argument("--api-share", type=float, default=defaults.api_share, help="share of images via the API")
    capacity.add_argument(
        "--utilisation", type=float, default=defaults.utilisation, help="how busy a core or device may be at peak"
    )
    capacity.add_argument(
        "--service-over-model",
        type=float,
        default=defaults.service_over_model,
        help="what the decoder service keeps of its model's images/s (bench-decoder's R)",
    )
    capacity.add_argument("--cores-per-broker", type=float, default=defaults.cores_per_broker)
    capacity.add_argument("--replication", type=int, default=defaults.replication)
    capacity.add_argument(
        "--follower-broker-cost",
        type=float,
        default=defaults.follower_broker_cost,
        help="what each follower replica adds to the brokers' CPU, in one broker's (measured)",
    )
    capacity.add_argument("--batch", type=int, default=None, help="the decoder's batch limit (default: the best)")
    capacity.add_argument(
        "--signup-cpu-ms",
        type=float,
        default=3.16,
        help="CPU of one sign-up, all processes (default: docs/operations.md, make bench-auth)",
    )
    capacity.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE, help="make bench-pipeline's --json")
    capacity.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="python -m tests.bench.model's --json")


def _capacity(args: argparse.Namespace) -> int:
    from libs.cli.capacity import Demand, format_plan, load_measured, plan

    try:
        measured = load_measured(args.pipeline, args.model, args.signup_cpu_ms, args.batch)
        demand = Demand(
            images_per_s=args.images_per_s,
            signups_per_s=args.signups_per_s,
            images_per_job=args.images_per_job,
            api_share=args.api_share,
            utilisation=args.utilisation,
            service_over_model=args.service_over_model,
            cores_per_broker=args.cores_per_broker,
            replication=args.replication,
            follower_broker_cost=args.follower_broker_cost,
        )
        result = plan(measured, demand)
    except (OSError, ValueError, KeyError) as exc:
        print(f"darkroom capacity: {exc}", file=sys.stderr)
        return 2
    print(format_plan(measured, demand, result), end="")
    return 0


def _add_models_parser(commands: Any) -> None:
    from libs.cli.models import DEFAULT_MAX_FALSE_POSITIVE_RATE, DEFAULT_MIN_RECALL

    broker = {"default": default_bootstrap(), "help": "broker (default: %(default)s)"}
    models = commands.add_parser("models", help="model versions: add, validate, roll out, promote, roll back")
    cmd = models.add_subparsers(dest="models_command", required=True)
    listing = cmd.add_parser("list", help="every model's versions, validations, failures and rollout (YAML)")
    listing.add_argument("model", nargs="?")
    add = cmd.add_parser("add", help="a new version of a model: its weights and their sha256")
    add.add_argument("model")
    add.add_argument("version")
    add.add_argument("source", help="what loads it, as DARKROOM_MODEL says it: amused:/path, a model folder, builtin")
    validate = cmd.add_parser("validate", help="measure the content detector on the version's renders; store it")
    validate.add_argument("model")
    validate.add_argument("version")
    validate.add_argument("--n", type=int, default=50, help="held-out prompts of each kind (default: %(default)s)")
    validate.add_argument("--passes", type=int, default=8, help="passes per render (default: %(default)s)")
    validate.add_argument("--min-recall", type=float, default=DEFAULT_MIN_RECALL, help="(default: %(default)s)")
    validate.add_argument(
        "--max-false-positive-rate", type=float, default=DEFAULT_MAX_FALSE_POSITIVE_RATE, help="(default: %(default)s)"
    )
    validate.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    rollout = cmd.add_parser("rollout", help="send a share of accounts (a stable hash) to a version")
    rollout.add_argument("model")
    rollout.add_argument("version")
    rollout.add_argument("--percent", type=float, required=True, help="share of accounts, above 0 and up to 100")
    promote = cmd.add_parser("promote", help="make a validated version (the candidate by default) the stable one")
    promote.add_argument("model")
    promote.add_argument("version", nargs="?")
    rollback = cmd.add_parser("rollback", help="end the rollout, or return to the version before the stable one")
    rollback.add_argument("model")
    rollback.add_argument("--reason", default="", help="why, kept with the event")
    for sub in (listing, add, validate, rollout, promote, rollback):
        sub.add_argument("--bootstrap", **broker)


if __name__ == "__main__":
    sys.exit(main())
