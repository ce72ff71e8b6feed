"""`darkroom safety policy show|set --file F`: read and replace the safety policy on Kafka.

The policy lives on the compacted policy topic; every safety service reads it from
the beginning at start and follows it, so a `set` applies within moments on every
replica, without restart. `set` validates the file with the rules the safety service
loads policies by (`libs.safety_policy`: shape, unique category names, regexes that
compile) before publishing, and publishes it as the next version: one above the policy
in force, or 2 when the topic is still empty (version 1 is the default a starting
service publishes).

The output of `show` (YAML) is a valid input of `set`: its `version` and
`updated_by` keys are ignored there, since `set` assigns both.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
from pathlib import Path

from libs import topics
from libs.bus import EventPublisher
from libs.bus.kafka import KafkaProducer
from libs.bus.logreader import KafkaLogReader, LogReader, read_to_end
from libs.bus.ports import Record
from libs.events import REGISTRY, DecodeError, Envelope
from libs.events.schemas import SafetyPolicy
from libs.safety_policy import (
    POLICY_AGGREGATE,
    latest_policy,
    next_version,
    policy_from_yaml,
    policy_key,
    policy_to_yaml,
)

log = logging.getLogger(__name__)

CLIENT_ID = "darkroom-cli"
READ_TIMEOUT_S = 30.0


def show_policy(bootstrap: str) -> SafetyPolicy | None:
    """The safety policy in force, read from Kafka.

    Args:
        bootstrap: Kafka bootstrap servers.

    Returns:
        The policy with the highest version on the topic, or None when the topic is
        empty (no safety service has started yet; the default applies once one does).

    Raises:
        TimeoutError: The end of the topic was not reached in time (broker unreachable).
    """
    return asyncio.run(read_policy(KafkaLogReader(bootstrap, [topics.SAFETY_POLICY], client_id=CLIENT_ID)))


def set_policy(bootstrap: str, path_to_yaml: str | Path, updated_by: str) -> SafetyPolicy:
    """Publish the policy in a YAML file as the next version.

    Args:
        bootstrap: Kafka bootstrap servers.
        path_to_yaml: The policy file (a `categories` list, as `show` prints).
        updated_by: Who changes the policy (recorded in the policy).

    Returns:
        The policy as published, with its version.

    Raises:
        libs.safety_policy.InvalidPolicy: The file is not a valid policy (nothing is published).
        OSError: The file cannot be read.
        TimeoutError: The current policy could not be read in time.
    """
    text = Path(path_to_yaml).read_text(encoding="utf-8")
    policy_from_yaml(text, version=next_version(None), updated_by=updated_by)  # fail before connecting

    async def run() -> SafetyPolicy:
        producer = KafkaProducer(bootstrap, client_id=CLIENT_ID)
        await producer.start()
        try:
            reader = KafkaLogReader(bootstrap, [topics.SAFETY_POLICY], client_id=CLIENT_ID)
            return await publish_policy(EventPublisher(producer), reader, text, updated_by)
        finally:
            await producer.stop()

    return asyncio.run(run())


def format_policy(policy: SafetyPolicy | None) -> str:
    """The policy as `show` prints it: YAML that `set --file` accepts back."""
    if policy is None:
        return "# no safety policy published yet: the default applies once a safety service starts\n"
    return f"# safety policy v{policy.version}, set by {policy.updated_by}\n{policy_to_yaml(policy)}"


def operator_name() -> str:
    """A default `updated_by`: the local user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    return f"{user}@{socket.gethostname()}"


async def read_policy(reader: LogReader, *, timeout_s: float = READ_TIMEOUT_S) -> SafetyPolicy | None:
    """Read the policy topic to its end and return the policy in force (None when empty).

    Args:
        reader: A reader of the policy topic, not started; it is started and stopped here.
        timeout_s: How long reaching the end may take.
    """
    policies: list[SafetyPolicy] = []

    async def collect(record: Record) -> None:
        try:
            policies.append(REGISTRY.decode_as(Envelope.from_bytes(record.value), SafetyPolicy))
        except DecodeError as exc:
            # The safety service dead-letters such records; here they are only reported.
            log.warning("skipping policy record at offset %d: %s", record.offset, exc)

    await reader.start()
    try:
        await read_to_end(reader, collect, timeout_s=timeout_s)
    finally:
        await reader.stop()
    return latest_policy(policies)


async def publish_policy(
    publisher: EventPublisher,
    reader: LogReader,
    text: str,
    updated_by: str,
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> SafetyPolicy:
    """Validate a policy document and publish it as the next version.

    Args:
        publisher: Publishes to the policy topic.
        reader: A reader of the policy topic (not started), to find the current version.
        text: The policy document (YAML).
        updated_by: Who changes the policy.
        timeout_s: How long reading the current policy may take.

    Returns:
        The policy as published.

    Raises:
        libs.safety_policy.InvalidPolicy: The document is not a valid policy.
    """
    # Validate before touching Kafka, so a bad file fails fast and publishes nothing.
    policy_from_yaml(text, version=next_version(None), updated_by=updated_by)
    current = await read_policy(reader, timeout_s=timeout_s)
    policy = policy_from_yaml(text, version=next_version(current), updated_by=updated_by)
    envelope = Envelope.wrap(policy, aggregate_id=POLICY_AGGREGATE, sequence=policy.version)
    await publisher.publish(topics.SAFETY_POLICY, envelope, key=policy_key(policy.version))
    return policy
