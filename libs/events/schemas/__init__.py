"""Every payload darkroom puts on Kafka, in one place.

Importing this package registers all payload classes in `libs.events.REGISTRY`.
Rules: a payload is a frozen model; a new field gets a default; a breaking change
bumps VERSION and adds an upcaster next to the class, with a test reading the old
shape back (tests/unit/events).
"""

from libs.events.schemas.system import DeadLetter, ServiceHeartbeat

__all__ = ["DeadLetter", "ServiceHeartbeat"]
