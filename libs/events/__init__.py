"""Message contracts: the envelope, the type registry and every payload schema."""

from libs.events import schemas as schemas  # registers every payload class
from libs.events.envelope import DecodeError, Envelope, Event
from libs.events.ids import new_ulid
from libs.events.registry import REGISTRY, EventRegistry

__all__ = ["REGISTRY", "DecodeError", "Envelope", "Event", "EventRegistry", "new_ulid", "schemas"]
