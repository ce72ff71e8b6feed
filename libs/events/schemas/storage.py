"""Storage: images handed to the storage service and what it stored."""

from __future__ import annotations

from datetime import datetime

from libs.events.envelope import Event
from libs.events.registry import REGISTRY


@REGISTRY.register
class StoreImage(Event):
    """Decoder -> storage: keep this image (the one place image bytes ride Kafka)."""

    TYPE = "storage.store_image"

    job_id: str
    index: int
    account_id: str = ""
    prompt: str
    model: str
    seed: int
    size: int
    output_format: str
    content_type: str
    data: str
    """base64 of the encoded image."""
    tokens: str
    """base64 of the packed final token grid (tweaks reuse it)."""
    created_at: datetime
    parent_image_id: str | None = None
    """The darkroom image this one was tweaked from (its lineage)."""
    version: str = "base"
    """The version of `model` that rendered it."""


@REGISTRY.register
class ImageStored(Event):
    """Storage: the object and its metadata document are written (idempotently)."""

    TYPE = "storage.image_stored"

    job_id: str
    index: int
    image_id: str
    object_key: str
    tokens_key: str
    content_type: str
    size_bytes: int
    sha256: str
