"""The API's request and response bodies, validated the way OpenAI's API validates them."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 32000
SIZES = {"256x256": 256, "512x512": 512, "auto": 256}
PASSES = {"low": 4, "medium": 8, "high": 12, "auto": 8}
RESOLVED_QUALITY = {"low": "low", "medium": "medium", "high": "high", "auto": "medium"}


class ImageGenerationRequest(BaseModel):
    """POST /v1/images/generations (extensions such as `seed` arrive via extra_body)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=4)
    size: Literal["256x256", "512x512", "auto"] = "256x256"
    quality: Literal["low", "medium", "high", "auto"] = "auto"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["opaque", "auto", "transparent"] = "auto"
    moderation: Literal["auto", "low"] = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    stream: bool = False
    partial_images: int = Field(default=0, ge=0, le=3)
    user: str | None = Field(default=None, max_length=256)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    style: Any = None  # accepted and ignored, as for OpenAI's image models without styles

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the prompt must contain text")
        return prompt


class AccountRequest(BaseModel):
    """POST /v1/accounts."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str | None:
    """The canonical form of an email address, or None when it is not one."""
    candidate = email.strip().lower()
    return candidate if _EMAIL.match(candidate) and len(candidate) <= 254 else None


def count_text_tokens(prompt: str) -> int:
    """Text tokens of a prompt, counted as words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", prompt))


class ImageEditRequest(ImageGenerationRequest):
    """The form fields of POST /v1/images/edits (numbers and booleans arrive as strings).

    `image_id` (a darkroom image to tweak, instead of an upload) and `strength` (the
    share of cells redrawn when there is no mask) are extensions, sent via extra_body.
    """

    image_id: str | None = Field(default=None, max_length=200)
    strength: float | None = None
    input_fidelity: Literal["high", "low"] | None = None  # accepted and ignored, as `style`
