"""Why the gateway does not take a request, as a value.

Admission (`Limits.admit_generation`, the lanes, the served models) and the job use cases
(services/gateway/jobs.py) decide without raising HTTP errors: they return a `Refusal`, and
the route that called them answers it in OpenAI's error shape (`services.gateway.errors.refused`)
with the status and headers (retry-after, the rate-limit headers) it names. A decision stays a
value that a caller can test, log or undo after (a refused request frees its Idempotency-Key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Refusal:
    """A request refused, with what the client is told.

    Attributes:
        status: The HTTP status OpenAI uses for this refusal (400, 403, 404, 409, 422, 429, 503).
        message: For the client.
        code: OpenAI's error code (`rate_limit_exceeded`, `lane_full`, ...), or None.
        param: The request parameter at fault, if one is.
        headers: What the response carries besides: `retry-after` when a retry can succeed
            later, the rate-limit headers of a request over its limits.
    """

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
