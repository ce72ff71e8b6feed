"""The one envelope every darkroom message travels in.

The envelope carries what every consumer needs to route, order and trace a message
without knowing its payload: a sortable event id, the type name and schema version,
the aggregate it belongs to and its sequence number there, correlation and causation
ids, and the tier (for lanes). The payload is a typed event model from
`libs.events.schemas`; on the wire it is plain JSON so kcat shows it as-is. Trace
context does not live here: it travels in Kafka headers (see `libs.bus.tracing`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.events.ids import new_ulid


class Event(BaseModel):
    """Base class of every payload: an immutable model with a type name and version.

    Subclasses set `TYPE` (a dotted name, stable forever) and `VERSION`. New fields
    must have defaults; a breaking change bumps `VERSION` and registers an upcaster.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


E = TypeVar("E", bound=Event)


class Envelope(BaseModel):
    """A message on any darkroom topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_ulid)
    type: str
    version: int = 1
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    aggregate_id: str
    sequence: int = 0
    correlation_id: str = ""
    causation_id: str | None = None
    tier: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def wrap(
        cls,
        event: Event,
        *,
        aggregate_id: str,
        sequence: int = 0,
        caused_by: Envelope | None = None,
        correlation_id: str | None = None,
        tier: str | None = None,
    ) -> Envelope:
        """Build the envelope for a payload.

        Args:
            event: The typed payload.
            aggregate_id: The aggregate (job, account, ...) the event belongs to.
            sequence: The event's position in that aggregate's stream.
            caused_by: The message being handled, if any: its id becomes the
                causation id and its correlation id (and tier) carry over.
            correlation_id: Explicit correlation id; defaults to the cause's, else
                to this event's own id.
            tier: The tier for lane routing; defaults to the cause's.

        Returns:
            A new envelope with a fresh event id and the current time.
        """
        event_id = new_ulid()
        correlation = correlation_id or (caused_by.correlation_id if caused_by else "") or event_id
        return cls(
            event_id=event_id,
            type=event.TYPE,
            version=event.VERSION,
            aggregate_id=aggregate_id,
            sequence=sequence,
            correlation_id=correlation,
            causation_id=caused_by.event_id if caused_by else None,
            tier=tier if tier is not None else (caused_by.tier if caused_by else None),
            payload=event.model_dump(mode="json"),
        )

    def to_bytes(self) -> bytes:
        """Serialize to compact JSON."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        """Parse an envelope from JSON bytes.

        Raises:
            DecodeError: The bytes are not JSON or not a valid envelope.
        """
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DecodeError(f"envelope must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise DecodeError(f"not a valid envelope: {_first_error(exc)}") from exc


class DecodeError(ValueError):
    """A message could not be turned into an envelope or a known payload."""


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "<root>"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"
