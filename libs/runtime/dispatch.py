"""Routing decoded envelopes to a service's command and event handlers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from libs.bus import Record, RejectedMessage
from libs.events import REGISTRY, Envelope, Event

log = logging.getLogger(__name__)

EventHandler = Callable[[Any, Envelope], Awaitable[None]]


class Dispatcher:
    """Decodes an envelope's payload and calls the handler registered for its class.

    A type this code does not know is rejected (it goes to the dead-letter topic);
    a known type the service has no handler for is acknowledged and skipped, since
    several services read the same topic for different events.
    """

    def __init__(self, service: str) -> None:
        self._service = service
        self._handlers: dict[type[Event], EventHandler] = {}

    def on(self, event_type: type[Event], handler: EventHandler) -> None:
        """Register the handler for one payload class."""
        self._handlers[event_type] = handler

    async def __call__(self, envelope: Envelope, record: Record) -> None:
        if REGISTRY.get(envelope.type) is None:
            raise RejectedMessage(f"unknown event type {envelope.type!r} for {self._service}")
        event = REGISTRY.decode(envelope)
        handler = self._handlers.get(type(event))
        if handler is None:
            log.debug("%s ignores %s", self._service, envelope.type)
            return
        await handler(event, envelope)
