"""Running Kafka's own operator tools (topics, consumer groups) against darkroom's broker.

The tools are Java classes in the kafka-tools jar that `make setup` cached; this
module builds their command lines so operators need no Kafka installation.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

TOOLS = {
    "topics": "org.apache.kafka.tools.TopicCommand",
    "groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
}


def tool_command(tool: str, args: Sequence[str], *, bootstrap: str, classpath: str) -> list[str]:
    """The java command line that runs a Kafka tool against `bootstrap`.

    Raises:
        KeyError: The tool is not one of TOOLS.
    """
    main_class = TOOLS[tool]
    java = shutil.which("java") or "java"
    command = [java, "-Xmx256m", "-Dlog4j2.level=WARN", "-cp", classpath, main_class]
    if "--bootstrap-server" not in args:
        command += ["--bootstrap-server", bootstrap]
    return command + list(args)


def default_bootstrap() -> str:
    """The broker of the local stack, unless DARKROOM_KAFKA_BOOTSTRAP says otherwise."""
    return os.environ.get("DARKROOM_KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('DARKROOM_KAFKA_PORT', '9092')}")
