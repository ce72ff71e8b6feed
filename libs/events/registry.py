"""The registry of event types: decoding payloads, upcasting, JSON Schema export.

Every payload class registers here under its type name. Reading a message looks up
the current class for its type, runs the upcasters from the message's version up to
the current one (small pure functions on plain dicts), and validates the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import ValidationError

from libs.events.envelope import DecodeError, Envelope, Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
E = TypeVar("E", bound=Event)


class EventRegistry:
    """Maps type names to payload classes and holds upcasters between versions."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: type[E]) -> type[E]:
        """Register a payload class (usable as a class decorator)."""
        if not event_type.TYPE:
            raise ValueError(f"{event_type.__name__} has no TYPE")
        existing = self._types.get(event_type.TYPE)
        if existing is not None and existing is not event_type:
            raise ValueError(f"event type {event_type.TYPE!r} registered twice")
        self._types[event_type.TYPE] = event_type
        return event_type

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that upgrades a payload from `from_version` to the next."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_name, from_version)] = fn
            return fn

        return decorate

    def types(self) -> Iterable[type[Event]]:
        """All registered payload classes, sorted by type name."""
        return [self._types[name] for name in sorted(self._types)]

    def get(self, type_name: str) -> type[Event] | None:
        """The payload class for a type name, if registered."""
        return self._types.get(type_name)

    def upcast(self, type_name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Upgrade a payload dict from `version` to the type's current version.

        Raises:
            DecodeError: The type is unknown, the version is newer than this code
                knows, or an upcaster is missing.
        """
        current = self._types.get(type_name)
        if current is None:
            raise DecodeError(f"unknown event type {type_name!r}")
        if version > current.VERSION:
            raise DecodeError(f"{type_name} version {version} is newer than supported {current.VERSION}")
        data = dict(payload)
        for step in range(version, current.VERSION):
            upcast = self._upcasters.get((type_name, step))
            if upcast is None:
                raise DecodeError(f"no upcaster for {type_name} from version {step}")
            data = upcast(data)
        return data

    def decode(self, envelope: Envelope) -> Event:
        """Return the envelope's payload as its current typed model.

        Raises:
            DecodeError: Unknown type, missing upcaster or invalid payload.
        """
        data = self.upcast(envelope.type, envelope.version, envelope.payload)
        event_type = self._types[envelope.type]
        try:
            return event_type.model_validate(data)
        except ValidationError as exc:
            raise DecodeError(f"invalid {envelope.type} payload: {exc.errors()[0]['msg']}") from exc

    def decode_as(self, envelope: Envelope, event_type: type[E]) -> E:
        """Decode and check the payload is of the expected class."""
        event = self.decode(envelope)
        if not isinstance(event, event_type):
            raise DecodeError(f"expected {event_type.TYPE}, got {envelope.type}")
        return event

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schema of every registered payload, keyed by `<type>.v<version>`."""
        schemas: dict[str, dict[str, Any]] = {}
        for event_type in self.types():
            schema = event_type.model_json_schema()
            schema["x-darkroom-type"] = event_type.TYPE
            schema["x-darkroom-version"] = event_type.VERSION
            schemas[f"{event_type.TYPE}.v{event_type.VERSION}"] = schema
        return schemas


REGISTRY = EventRegistry()
"""The process-wide registry that `libs.events.schemas` fills at import."""
