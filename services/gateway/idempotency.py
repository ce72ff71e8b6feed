"""Idempotency keys: the same `Idempotency-Key` from the same account names the same job.

A client that retries a create (a timeout, a dropped connection) sends the key again and
gets the job the first request made instead of a second render. A key holds for
`KEY_TTL` after its first use; the claim is an insert keyed by a hash of the account and
the key, so two concurrent requests with the same key make one job between them. The
key is also recorded in the job's specification, so a rebuild of the read models from
the request events restores the claims (`darkroom rebuild`, libs/cli/rebuild.py); the claim
documents both write are built in libs.readmodels.idempotency.

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
from datetime import UTC, datetime, timedelta

from libs.readmodels.idempotency import KEYS, claim_document, claim_id
from libs.stores.ports import DocumentStore

KEY_TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def key_seed(account_id: str, key: str) -> int:
    """The seed of a keyed request that names none: the same for every retry of it."""
    return int.from_bytes(hashlib.sha256(f"seed\0{account_id}\0{key}".encode()).digest()[:4], "big") >> 1


class KeyReused(ValueError):
    """The key already names a job that another request asked for."""


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
