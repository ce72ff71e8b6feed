"""Interceptors: what the bus does around every message besides sending and handling it.

Why: tracing and tier routing concern every message a service sends or handles, and
none of its handlers. Written into the publisher, the consumer loop and the runtime they
had three homes; as interceptors that the publisher and the consumer loop apply, each has
one (`libs.bus.tracing.Tracing`, `libs.bus.routing.TierRouting`), and a test wires the
list it needs. The shape is Temporal's interceptors (`contrib/opentelemetry.py`): each one
wraps the bus's own step and calls the next.

- Outbound, `outbound(send)` returns the send to use in its place. It may rewrite the
  message's topic or add to its headers before the send below it, and see where the
  message landed after.
- Inbound, `inbound(handle, member)` returns the handling of a record to use in its place
  (e.g. a span around it, opened from the record's headers). What the handling came to,
  the envelope or how it was dead-lettered, comes back to it.

The publisher and the consumer build their chain once, when they are made: a message then
pays one call per interceptor that wraps its step and nothing for one that leaves the step
as it is. An interceptor that acts only before the step returns the step's awaitable
without awaiting it, so it adds no coroutine either. The first interceptor of a list is
the outermost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from libs.bus.ports import Delivered, Record
from libs.events import Envelope


@dataclass(slots=True)
class Outgoing:
    """A message on its way to the producer; outbound interceptors may change it."""

    topic: str
    envelope: Envelope
    key: bytes
    partition: int | None
    headers: list[tuple[str, bytes]]
    """Sent with the message; an interceptor appends its own."""


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A record the consumer loop sent to the dead-letter topic, and why."""

    envelope: Envelope | None
    """The record's envelope; None when its bytes were not one."""
    error: Exception
    """Why: the decoding error, the handler's rejection, or its last failure."""
    exhausted: bool = False
    """The handler failed on every attempt (an error, not a rejection of the message)."""


Handled = Envelope | DeadLettered
"""What handling a record came to: its envelope, handled, or how it was dead-lettered."""

Send = Callable[[Outgoing], Awaitable[Delivered]]
Handle = Callable[[Record], Awaitable[Handled]]


@dataclass(frozen=True)
class Member:
    """The consumer-group member whose records an inbound interceptor sees."""

    service: str
    group: str


class Interceptor:
    """Leaves both steps as they are; an interceptor overrides the ones it wraps."""

    def outbound(self, send: Send) -> Send:
        """The send to use in place of `send` (which it calls, or returns for the caller to await)."""
        return send

    def inbound(self, handle: Handle, member: Member) -> Handle:
        """The handling of a record to use in place of `handle` for `member`'s records."""
        return handle


def chain_outbound(interceptors: Sequence[Interceptor], send: Send) -> Send:
    """`send` wrapped by every interceptor, the first outermost."""
    for interceptor in reversed(interceptors):
        send = interceptor.outbound(send)
    return send


def chain_inbound(interceptors: Sequence[Interceptor], handle: Handle, member: Member) -> Handle:
    """`handle` wrapped by every interceptor for `member`, the first outermost."""
    for interceptor in reversed(interceptors):
        handle = interceptor.inbound(handle, member)
    return handle
