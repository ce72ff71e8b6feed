"""What storing an image means: keys, the metadata document and the stored event. No I/O.

Every key and field is a function of the `StoreImage` command alone (no clock, no
random id), so a redelivered command writes the same objects to the same keys, the
same document, and announces the same `ImageStored`: retries overwrite, never duplicate.

The storage service carries out the plan; `darkroom rebuild` replays the blobs topic
through the same function to restore the `images` collection, hence its place in libs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from libs.events.schemas import ImageStored, StoreImage

IMAGES: Final = "images"
"""The collection of image metadata documents."""

TOKENS_CONTENT_TYPE: Final = "application/octet-stream"

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SAFE_EXT = re.compile(r"[a-z0-9]{1,8}")


class InvalidImage(ValueError):
    """A StoreImage that can never be stored (bad base64, unsafe ids): dead-letter it."""


def image_id(job_id: str, index: int) -> str:
    """The id of an image (its document's `_id`)."""
    return f"img_{job_id}_{index}"


def object_key(job_id: str, index: int, output_format: str) -> str:
    """Where the encoded image lives in the blob store."""
    return f"images/{job_id}/{index}.{output_format.lower()}"


def tokens_key(job_id: str, index: int) -> str:
    """Where the image's packed token grid lives (little-endian uint16, for tweaks)."""
    return f"tokens/{job_id}/{index}.u16"


@dataclass(frozen=True)
class StoragePlan:
    """Everything the handler writes for one StoreImage, in order."""

    image: bytes
    tokens: bytes
    document: dict[str, Any]
    stored: ImageStored

    @property
    def object_key(self) -> str:
        """The image's blob key."""
        return self.stored.object_key

    @property
    def tokens_key(self) -> str:
        """The token grid's blob key."""
        return self.stored.tokens_key

    @property
    def image_id(self) -> str:
        """The metadata document's id."""
        return self.stored.image_id


def _decode(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{field} is not valid base64: {exc}") from exc


def plan_storage(command: StoreImage) -> StoragePlan:
    """Decide the objects, document and event for storing one image.

    Args:
        command: The decoder's request to store an image.

    Returns:
        The plan; the same command always gives the same plan.

    Raises:
        InvalidImage: The ids would make unsafe object keys, the index is negative,
            or the payloads are not base64 (retrying cannot fix any of these).
    """
    if not _SAFE_ID.fullmatch(command.job_id):
        raise InvalidImage(f"job id {command.job_id!r} is not usable in object keys")
    if command.index < 0:
        raise InvalidImage(f"negative image index {command.index}")
    if not _SAFE_EXT.fullmatch(command.output_format.lower()):
        raise InvalidImage(f"output format {command.output_format!r} is not usable as an extension")
    image = _decode("data", command.data)
    tokens = _decode("tokens", command.tokens)
    if not image:
        raise InvalidImage("the image is empty")
    digest = hashlib.sha256(image).hexdigest()
    stored = ImageStored(
        job_id=command.job_id,
        index=command.index,
        image_id=image_id(command.job_id, command.index),
        object_key=object_key(command.job_id, command.index, command.output_format),
        tokens_key=tokens_key(command.job_id, command.index),
        content_type=command.content_type,
        size_bytes=len(image),
        sha256=digest,
    )
    document = {
        "account_id": command.account_id,
        "job_id": command.job_id,
        "index": command.index,
        "prompt": command.prompt,
        "model": command.model,
        "version": command.version,
        "seed": command.seed,
        "size": command.size,
        "output_format": command.output_format,
        "content_type": command.content_type,
        "object_key": stored.object_key,
        "tokens_key": stored.tokens_key,
        "size_bytes": stored.size_bytes,
        "sha256": digest,
        "created_at": command.created_at,
        "parent_image_id": command.parent_image_id,
    }
    return StoragePlan(image=image, tokens=tokens, document=document, stored=stored)
