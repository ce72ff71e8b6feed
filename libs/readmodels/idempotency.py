"""The gateway's claims of idempotency keys (`gateway_idempotency`): ids and documents.

A claim names the job an account's `Idempotency-Key` made, when, and a fingerprint of
the request that made it. The gateway claims keys as requests arrive (the rules, expiry
and reuse, are in services/gateway/idempotency.py); `darkroom rebuild` restores the
claims from the key each `JobAccepted` records. Both build the same documents here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from libs.events.schemas.images import JobSpec

KEYS = "gateway_idempotency"

_SET_BY_THE_SERVICE = {"lane", "tier"}
"""Spec fields the service decides (admission's lane, the account's tier at the time), not the body."""


def claim_id(account_id: str, key: str) -> str:
    """The claim document's id: a hash, so keys of any content make safe ids."""
    return hashlib.sha256(f"{account_id}\0{key}".encode()).hexdigest()


def request_fingerprint(spec: JobSpec) -> str:
    """A hash of everything the request decides in a job's spec (the same before and after
    admission, so a rebuild from `JobAccepted` records the same fingerprint)."""
    fields = spec.model_dump(mode="json", exclude=_SET_BY_THE_SERVICE)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim_document(account_id: str, job_id: str, created_at: datetime, request: str) -> dict[str, str]:
    """The claim of a key: the job it names, when (the job's creation time), and the
    fingerprint of the request that made it."""
    return {"account_id": account_id, "job_id": job_id, "created_at": created_at.isoformat(), "request": request}
