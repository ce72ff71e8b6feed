"""BlobStore on the `minio` client (MinIO locally, any S3 API in production).

The minio client is synchronous; calls run in a worker thread so they never block
the service's event loop. Connection failures surface as StoreUnavailable so the
consumer loop retries them instead of dead-lettering the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from libs.stores.ports import BlobInfo, StoreUnavailable

T = TypeVar("T")
_SHA_META = "sha256"


class MinioBlobStore:
    """A BlobStore over one bucket, created on first use."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=urllib3.Retry(total=0),
        )
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
        self._bucket = bucket
        self._bucket_ready = False

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except S3Error as exc:
            # A server answering 5xx (starting up, overloaded) is away for now, like an unreachable one.
            if exc.response is not None and exc.response.status >= 500:
                raise StoreUnavailable(f"object store unavailable: {exc.code}") from exc
            raise
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store unreachable: {exc}") from exc

    async def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def create() -> None:
            if not self._client.bucket_exists(self._bucket):
                try:
                    self._client.make_bucket(self._bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        await self._call(create)
        self._bucket_ready = True

    async def ping(self) -> None:
        await self._ensure_bucket()

    async def put(self, key: str, data: bytes, content_type: str) -> BlobInfo:
        await self._ensure_bucket()
        digest = hashlib.sha256(data).hexdigest()
        await self._call(
            lambda: self._client.put_object(
                self._bucket,
                key,
                io.BytesIO(data),
                length=len(data),
                content_type=content_type,
                metadata={_SHA_META: digest},
            )
        )
        return BlobInfo(key, len(data), digest, content_type)

    async def get(self, key: str) -> bytes:
        await self._ensure_bucket()

        def read() -> bytes:
            try:
                response = self._client.get_object(self._bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise KeyError(key) from exc
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self._call(read)

    async def stat(self, key: str) -> BlobInfo | None:
        await self._ensure_bucket()

        def stat() -> BlobInfo | None:
            try:
                info = self._client.stat_object(self._bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            meta = {k.lower(): v for k, v in (info.metadata or {}).items()}
            digest = str(meta.get(f"x-amz-meta-{_SHA_META}", ""))
            return BlobInfo(key, int(info.size or 0), digest, str(info.content_type or ""))

        return await self._call(stat)

    async def delete(self, key: str) -> None:
        await self._ensure_bucket()
        await self._call(lambda: self._client.remove_object(self._bucket, key))

    async def url(self, key: str, expires_s: int) -> str:
        await self._ensure_bucket()
        return await self._call(
            lambda: self._client.presigned_get_object(self._bucket, key, expires=timedelta(seconds=expires_s))
        )
