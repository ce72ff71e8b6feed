"""Every payload darkroom puts on Kafka, in one place.

Importing this package registers all payload classes in `libs.events.REGISTRY`.
Rules: a payload is a frozen model; a new field gets a default; a breaking change
bumps VERSION and adds an upcaster next to the class, with a test reading the old
shape back (tests/unit/events).
"""

from libs.events.schemas.accounts import (
    TIERS,
    AccountCommandFailed,
    AccountCreated,
    AccountRejected,
    ChangeTier,
    CreateAccount,
    KeyRevoked,
    RevokeKeys,
    Tier,
    TierChanged,
)
from libs.events.schemas.images import (
    CancelJob,
    EditSource,
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
from libs.events.schemas.models import (
    BASE_VERSION,
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionFailed,
    ModelVersionValidated,
)
from libs.events.schemas.policies import FEATURES, RolloutChanged, TierPolicy, TierPolicyChanged
from libs.events.schemas.render import AbortRender, RenderJob, RenderProgressed, RenderStarted, RenderStopped
from libs.events.schemas.safety import CheckContent, CheckPrompt, PolicyCategory, SafetyPolicy, SafetyVerdict
from libs.events.schemas.storage import ImageStored, StoreImage
from libs.events.schemas.system import BatchLoad, DeadLetter, LaneLoad, ServiceHeartbeat
from libs.events.schemas.usage import AccountFlagged, AccountUsage, ModelUsage

__all__ = [
    "BASE_VERSION",
    "FEATURES",
    "TIERS",
    "AbortRender",
    "AccountCommandFailed",
    "AccountCreated",
    "AccountFlagged",
    "AccountRejected",
    "AccountUsage",
    "BatchLoad",
    "CancelJob",
    "ChangeTier",
    "CheckContent",
    "CheckPrompt",
    "CreateAccount",
    "DeadLetter",
    "EditSource",
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
    "KeyRevoked",
    "LaneLoad",
    "ModelRolloutChanged",
    "ModelUsage",
    "ModelVersionAdded",
    "ModelVersionFailed",
    "ModelVersionValidated",
    "PolicyCategory",
    "RenderJob",
    "RenderProgressed",
    "RenderStarted",
    "RenderStopped",
    "RevokeKeys",
    "RolloutChanged",
    "SafetyPolicy",
    "SafetyVerdict",
    "ServiceHeartbeat",
    "StoreImage",
    "Tier",
    "TierChanged",
    "TierPolicy",
    "TierPolicyChanged",
    "Usage",
]
