"""Idempotency keys: the same `Idempotency-Key` from the same account names the same job.

A client that retries a create (a timeout, a dropped connection) sends the key again and
gets the job the first request made instead of a second render. A key holds for
`KEY_TTL` after its first use; the claim is an insert keyed by a hash of the account and
the key, so two concurrent requests with the same key make one job between them. The
key is also recorded in the job's specification, so a rebuild of the read models from
the request events restores the claims (`darkroom rebuild`, libs/cli/rebuild.py).

A key names one request: the claim records a fingerprint of the job the request asks for
(`request_fingerprint`), and a request with the key that asks for another job is refused
(`KeyReused`), even while the first is still being admitted, rather than answered with a job
the client did not ask for. A request with a key and no seed gets a seed derived from the
key (`key_seed`), so its retries ask for the same job. Claims written before fingerprints
existed (they expire within `KEY_TTL`) name their job for any body.

A request refused at admission (a rate limit, a full lane) made no job, so its claim is
released (`release`) and the key is free for any request, as if it had never been sent.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from libs.events.schemas.images import JobSpec
from libs.stores.ports import DocumentStore

KEYS = "gateway_idempotency"
KEY_TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def claim_id(account_id: str, key: str) -> str:
    """The claim document's id: a hash, so keys of any content make safe ids."""
    return hashlib.sha256(f"{account_id}\0{key}".encode()).hexdigest()


def key_seed(account_id: str, key: str) -> int:
    """The seed of a keyed request that names none: the same for every retry of it."""
    return int.from_bytes(hashlib.sha256(f"seed\0{account_id}\0{key}".encode()).digest()[:4], "big") >> 1


_SET_BY_THE_SERVICE = {"lane", "tier"}
"""Spec fields the service decides (admission's lane, the account's tier at the time), not the body."""


class KeyReused(ValueError):
    """The key already names a job that another request asked for."""


def request_fingerprint(spec: JobSpec) -> str:
    """A hash of everything the request decides in a job's spec (the same before and after
    admission, so a rebuild from `JobAccepted` records the same fingerprint)."""
    fields = spec.model_dump(mode="json", exclude=_SET_BY_THE_SERVICE)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim_document(account_id: str, job_id: str, created_at: datetime, request: str) -> dict[str, str]:
    """The claim of a key: the job it names, when (the job's creation time), and the
    fingerprint of the request that made it."""
    return {"account_id": account_id, "job_id": job_id, "created_at": created_at.isoformat(), "request": request}


class IdempotencyKeys:
    """Claims of idempotency keys by job, in the gateway's own collection."""

    def __init__(self, documents: DocumentStore, ttl: timedelta = KEY_TTL) -> None:
        self._docs = documents
        self._ttl = ttl

    async def claim(self, account_id: str, key: str, job_id: str, request: str, now: datetime | None = None) -> str:
        """Claims the key for `job_id` unless a live claim exists.

        Args:
            account_id: The caller's account.
            key: The Idempotency-Key header.
            job_id: The job this request would create.
            request: The request's fingerprint (`request_fingerprint` of its spec).
            now: The new job's creation time (recorded, and compared with the TTL).

        Returns:
            The job the key names: `job_id` when this call claimed it, else the earlier job.

        Raises:
            KeyReused: A live claim of the key was made by a request with another fingerprint.
            StoreUnavailable: The document store is away.
        """
        now = now or datetime.now(UTC)
        doc_id = claim_id(account_id, key)
        doc = claim_document(account_id, job_id, now, request)
        if await self._docs.insert(KEYS, doc_id, doc):
            return job_id
        existing = await self._docs.get(KEYS, doc_id)
        if existing is not None and now - datetime.fromisoformat(str(existing["created_at"])) < self._ttl:
            if existing.get("request", request) != request:
                raise KeyReused(key)
            return str(existing["job_id"])
        # Expired (or deleted meanwhile): the key starts over with this job.
        await self._docs.put(KEYS, doc_id, doc)
        return job_id

    async def release(self, account_id: str, key: str, job_id: str) -> bool:
        """Drops the key's claim if it still names `job_id`: the request that claimed it was
        refused before its job existed.

        Returns:
            Whether a claim was dropped.

        Raises:
            StoreUnavailable: The document store is away.
        """
        doc_id = claim_id(account_id, key)
        existing = await self._docs.get(KEYS, doc_id)
        if existing is None or existing.get("job_id") != job_id:
            return False
        return await self._docs.delete(KEYS, doc_id)
