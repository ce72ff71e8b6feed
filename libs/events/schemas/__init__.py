"""Every payload darkroom puts on Kafka, in one place.

Importing this package registers all payload classes in `libs.events.REGISTRY`.
Rules: a payload is a frozen model; a new field gets a default; a breaking change
bumps VERSION and adds an upcaster next to the class, with a test reading the old
shape back (tests/unit/events).
"""

from libs.events.schemas.accounts import TIERS, AccountCreated, AccountRejected, CreateAccount, Tier
from libs.events.schemas.images import (
    CancelJob,
    ExpireRenderLease,
    GenerateImage,
    ImageRef,
    JobAccepted,
    JobBlocked,
    JobCancelled,
    JobCompleted,
    JobContentCleared,
    JobFailed,
    JobImageStored,
    JobProgressed,
    JobQueued,
    JobRenderStarted,
    JobRequeued,
    JobSpec,
    Usage,
)
from libs.events.schemas.render import AbortRender, RenderJob, RenderProgressed, RenderStarted, RenderStopped
from libs.events.schemas.safety import CheckContent, CheckPrompt, PolicyCategory, SafetyPolicy, SafetyVerdict
from libs.events.schemas.storage import ImageStored, StoreImage
from libs.events.schemas.system import DeadLetter, ServiceHeartbeat

__all__ = [
    "TIERS",
    "AbortRender",
    "AccountCreated",
    "AccountRejected",
    "CancelJob",
    "CheckContent",
    "CheckPrompt",
    "CreateAccount",
    "DeadLetter",
    "ExpireRenderLease",
    "GenerateImage",
    "ImageRef",
    "ImageStored",
    "JobAccepted",
    "JobBlocked",
    "JobCancelled",
    "JobCompleted",
    "JobContentCleared",
    "JobFailed",
    "JobImageStored",
    "JobProgressed",
    "JobQueued",
    "JobRenderStarted",
    "JobRequeued",
    "JobSpec",
    "PolicyCategory",
    "RenderJob",
    "RenderProgressed",
    "RenderStarted",
    "RenderStopped",
    "SafetyPolicy",
    "SafetyVerdict",
    "ServiceHeartbeat",
    "StoreImage",
    "Tier",
    "Usage",
]
