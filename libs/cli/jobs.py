"""`darkroom jobs show JOB_ID`: any account's job, for operators.

The API shows a job only to its owner; operators read the gateway's job read model
(MongoDB, `DARKROOM_MONGO_URL`) directly, whoever owns the job.
"""

from __future__ import annotations

from typing import Any

from libs.readmodels.jobs import JobProjection
from libs.runtime.wiring import mongo_store
from libs.settings import MongoSettings
from libs.stores.ports import StoreUnavailable


async def show_job(job_id: str, settings: MongoSettings | None = None) -> dict[str, Any] | None:
    """The job's latest state (with its account id), or None when unknown.

    Raises:
        OSError: The document store cannot be reached.
    """
    store = mongo_store(settings or MongoSettings())
    try:
        state = await JobProjection(store).get(job_id)
    except StoreUnavailable as exc:
        raise OSError(f"the document store is unreachable: {exc}") from exc
    finally:
        await store.close()
    return None if state is None else state.model_dump(mode="json")
