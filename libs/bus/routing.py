"""Tier routing: api-tier jobs on topics and consumer groups of their own.

Every job-path topic has an api copy (libs.topics: `Topic.api`), so a surge of consumer
jobs never sits in front of an api job in a partition, a fetch or a consumer loop. Both
halves of that are here: `TierRouting`, the interceptor that sends an api-tier envelope
to the copy of the topic it is published on, and `member_groups`, the consumer-group
members a service's runtime runs so that the copies have consumers of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from libs import topics
from libs.bus.interceptors import Interceptor, Outgoing, Send
from libs.bus.ports import Delivered
from libs.bus.tracing import Tracing


class TierRouting(Interceptor):
    """Sends a message of an api-tier envelope to its topic's api copy (`libs.topics.route`).

    The tier travels from cause to effect in the envelope, so every event of an api job
    stays on the api path. A topic without a copy is left as it is.
    """

    def outbound(self, send: Send) -> Send:
        def routed(message: Outgoing) -> Awaitable[Delivered]:
            if message.envelope.tier == topics.API_TIER:
                message.topic = topics.route(message.topic, topics.API_TIER)
            return send(message)

        return routed


SERVICE_INTERCEPTORS = (TierRouting(), Tracing())
"""A service's runtime's: routed by tier first, so the span names the topic the message goes to."""


def member_groups(group: str, names: Sequence[str], traffic: str = "all") -> list[tuple[str, list[str]]]:
    """The consumer-group members a subscription runs: one per traffic, same handler.

    A group on job-path topics gets a second member, group "<group>-api" on the api
    copies (`libs.topics.Topic.api`), so api-tier jobs never wait in a partition or a
    fetch behind consumer traffic. A process of one traffic (`traffic` "consumer" or "api",
    the setting `DARKROOM_TRAFFIC`) runs only that traffic's member, so the api path can
    have processes (and CPU) of its own. A group-less reader (a live view of every
    message) reads its process's traffic: both in one member for "all", and the other
    topics (those without an api copy) whatever the traffic, so a gateway of the api path
    never reads the consumer tiers' progress.
    """
    copies: list[str] = [copy for copy in map(topics.api_copy, names) if copy is not None]
    if not copies:
        return [(group, list(names))]
    if not group:
        shared = [t for t in names if topics.api_copy(t) is None]
        own = {"consumer": list(names), "api": [*shared, *copies]}
        return [(group, own.get(traffic, [*names, *copies]))]
    members = {"consumer": (group, list(names)), "api": (f"{group}-api", copies)}
    return [members[traffic]] if traffic in members else list(members.values())
