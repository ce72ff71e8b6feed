"""Typed settings, one class per service, read from DARKROOM_* environment variables.

Defaults are safe for local development (everything on 127.0.0.1). Outside
development a service refuses to start while any secret still has its development
default, so a forgotten variable cannot ship a known password.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_MINIO_SECRET = "darkroom-dev-secret"  # noqa: S105 - development default, refused in production
DEV_SIGNING_KEY = "darkroom-dev-signing-key"
DEV_OPERATOR_TOKEN = "darkroom-dev-operator"  # noqa: S105 - development default, refused in production
_DEV_SECRETS = {DEV_MINIO_SECRET, DEV_SIGNING_KEY, DEV_OPERATOR_TOKEN}

DEFAULT_BATCH_IMAGES = {"cpu": 8, "cuda": 64}
"""A decoder's batch limit in images when `DecoderSettings.batch_images` is 0. On CPU the
built-in model's images/s stop growing past a small batch while every pass gets slower
(`make bench-decoder`); a GPU keeps gaining up to far larger batches."""
DEFAULT_MIXED_BATCH_IMAGES: dict[str, int | None] = {"cpu": 1, "cuda": None}
"""The most images of a batch where a paid render meets lower-priority ones, when
`DecoderSettings.mixed_batch_images` is 0. On CPU each further image of a batch slows every
pass (the built-in model: about 0.6 of an image's time each), so a paid render among free
ones takes several times its alone time: on CPU a paid render shares its batch with none
(`make surge`, docs/operations.md); on a GPU a batch costs about one image, so no cap."""


class ServiceSettings(BaseSettings):
    """What every service needs: where Kafka is, telemetry, health and heartbeats."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_replication_factor: int = 1
    """The cluster's replication factor (3 on a cluster of three): for topics a service creates
    itself (the metering service's table changelogs)."""
    kafka_fetch_max_wait_ms: int = 500
    """How long the broker holds a consumer's fetch when there is nothing new (see libs.bus.kafka):
    every idle consumer of every service sends one fetch per wait."""
    otlp_endpoint: str = ""
    """OTLP/HTTP base URL traces are exported to; none (and no span recorded) when empty."""
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """The share of traces recorded and exported (decided where a trace starts, in the gateway)."""
    health_host: str = "127.0.0.1"
    health_port: int = 0
    heartbeat_interval_s: float = 2.0
    instance_id: str = ""
    log_level: str = "INFO"
    handler_concurrency: int = 16
    """Records of one poll handled side by side, by key, where a service allows it."""
    traffic: Literal["all", "consumer", "api"] = "all"
    """Which traffic's job-path consumer groups this process joins: both (one process serves
    consumer and api jobs), or one, so the api path runs in processes of its own
    (libs.bus.routing.member_groups)."""

    def secrets(self) -> dict[str, str]:
        """Secret settings of this service, by name (checked at start-up)."""
        return {}

    @model_validator(mode="after")
    def _no_default_secrets_outside_development(self) -> ServiceSettings:
        if self.env == "production":
            leaked = sorted(name for name, value in self.secrets().items() if not value or value in _DEV_SECRETS)
            if leaked:
                raise ValueError(
                    "refusing to start in production with empty or development secrets: "
                    + ", ".join(f"DARKROOM_{name.upper()}" for name in leaked)
                )
        return self


class MongoSettings(ServiceSettings):
    """Adds the document store."""

    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_database: str = "darkroom"


class MinioSettings(ServiceSettings):
    """Adds the object store."""

    minio_endpoint: str = "127.0.0.1:9000"
    minio_access_key: str = "darkroom"
    minio_secret_key: str = DEV_MINIO_SECRET
    minio_bucket: str = "darkroom-images"
    minio_secure: bool = False

    def secrets(self) -> dict[str, str]:
        return {"minio_secret_key": self.minio_secret_key}


class MeteringSettings(ServiceSettings):
    """The metering service: what its abuse detection does about an account over its limits."""

    abuse_action: Literal["flag", "throttle", "suspend"] = "flag"
    """`flag`: publish `AccountFlagged` (a metric and an alert follow); `throttle`: also move
    the account to the free tier's limits (keys intact); `suspend`: also revoke every key of
    the account (every gateway refuses it within a second)."""
    abuse_tolerance: float = Field(default=1.5, ge=1.0)
    """How far over its tier's admissible images (per minute, per day) an account may go before
    it is flagged: gateways enforce limits per replica within an error bound (libs/ratelimit.py)."""
    abuse_baseline_factor: float = Field(default=10.0, ge=2.0)
    """How many times its own mean images per hour (over the 24 hours before) an account with a
    history may render in an hour before it is flagged, once past a quarter of its tier's images
    per day in that hour. Only flagged, never suspended: it is within the policy."""


class StorageSettings(MinioSettings, MongoSettings):
    """The storage service: MinIO and MongoDB."""


class SigningSettings(ServiceSettings):
    """Services that sign or verify API keys."""

    signing_key: str = DEV_SIGNING_KEY

    def secrets(self) -> dict[str, str]:
        return {"signing_key": self.signing_key}


class GatewaySettings(SigningSettings, MinioSettings, MongoSettings):
    """The HTTP gateway."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    heartbeat_stale_s: float = 10.0
    sync_wait_s: float = 540.0
    """How long a synchronous call waits for its job before answering 202 with the job
    (9 minutes: inside the openai SDK's 10-minute read timeout)."""
    stream_keepalive_s: float = 15.0
    """Seconds between SSE keep-alive comments while a streamed job waits."""
    reply_timeout_s: float = 30.0
    """How long a sign-up waits for the auth service's answer."""
    url_expiry_s: int = 3600
    models: tuple[str, ...] = ("darkroom-mini",)
    """Model names the API accepts; the first is the default. Each needs render topics
    (darkroom-mini's are built in; others under `models:` in infra/topics.yaml)."""
    model_aliases: tuple[str, ...] = ("gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2")
    """OpenAI's model names that clients hard-code; a request naming one gets the default model."""
    model_unserved_after_s: float = 60.0
    """A model other than the default whose decoders this gateway has not heard from for this
    long is refused at once (503 `model_unavailable` with retry-after) instead of queued."""
    lane_max_waiting: str = ""
    """Per-lane bounds on waiting jobs that override infra/topics.yaml, e.g. "free=500,plus=2000";
    beyond a bound new jobs are refused with 503 and retry-after."""
    lane_poll_s: float = 1.0
    """Seconds between readings of the lanes' offsets."""
    job_hold_s: float = 600.0
    """A job counts against its account's concurrent jobs until its end is read, or this
    long at most; a starting gateway reads this much of the commands and job ends (the
    day's earlier usage comes from metering, libs/ratelimit.py). Under 60 s a starting
    gateway's per-minute buckets miss what was admitted before its window."""
    operator_token: str = DEV_OPERATOR_TOKEN
    """The bearer token of the operator API (`/v1/admin/...`); API keys do not open it."""

    def secrets(self) -> dict[str, str]:
        return {
            **MinioSettings.secrets(self),
            **SigningSettings.secrets(self),
            "operator_token": self.operator_token,
        }


class AuthSettings(SigningSettings, MongoSettings):
    """The auth service."""


class RequestsSettings(MongoSettings):
    """The requests service (job aggregates and their projections)."""

    content_check_stride: int = 1
    """Check drawn content after every k-th of the passes that carry risk (see
    libs.jobs.content_check_passes; the last pass is always checked)."""
    render_lease_s: float = 20.0
    """Seconds a decoder may stay silent about a job it renders (it reports at the start and
    after every pass) before the job is dispatched again from its last checkpoint."""
    lease_check_s: float = 1.0
    """How often expired leases are looked for: a lost job is re-dispatched within
    render_lease_s + lease_check_s of its decoder's last report."""


class DecoderSettings(ServiceSettings):
    """The decoder service."""

    model: str = "builtin"
    """What renders: "builtin", "noop", a weights directory, "amused:/path", or
    "package.module:factory" (libs.model.registry.load_model)."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N"."""
    model_threads: int = Field(default=0, ge=0, le=256)
    """On the CPU, threads that step one batch together, each a slice of it with an equal
    share of torch's intra-op threads (libs.model.split); 0: one per core. Only for a model
    whose calls may run on several threads at once (the built-in one); 1: one call per batch."""
    pool: Literal["consumer", "api"] = "consumer"
    """Which render topic this decoder serves: the consumer tiers' lanes or the API's."""
    served_model: str = "darkroom-mini"
    """The API's name of the model this decoder renders (`model` in a request): it serves
    that model's render topics (libs.lanes.model_topic), declared in infra/topics.yaml."""
    batch_images: int = Field(default=0, ge=0, le=1024)
    """The batch limit in images (a job of n images counts n); 0: the device's default
    (`DEFAULT_BATCH_IMAGES`: small on CPU, large on CUDA)."""
    preempt: bool = True
    """Whether a paid job waiting for a full batch preempts a lower-priority render."""
    mixed_batch_images: int = Field(default=0, ge=0, le=1024)
    """The most images of a batch where a paid render meets lower-priority ones (free jobs
    join only within it, and leave beyond it); 0: the device's default
    (`DEFAULT_MIXED_BATCH_IMAGES`: 1 on CPU, none on CUDA)."""

    def batch_limit(self, device: str) -> int:
        """The batch limit on a resolved torch device ("cpu", "cuda", "cuda:1"...)."""
        if self.batch_images:
            return self.batch_images
        return DEFAULT_BATCH_IMAGES["cuda" if device.startswith("cuda") else "cpu"]

    def mixed_limit(self, device: str) -> int | None:
        """The cap of a batch where priorities meet on a resolved device (None: no cap)."""
        if self.mixed_batch_images:
            return self.mixed_batch_images
        return DEFAULT_MIXED_BATCH_IMAGES["cuda" if device.startswith("cuda") else "cpu"]


class SafetySettings(ServiceSettings):
    """The safety service."""

    model: str = "builtin"
    """The image model whose token grids the content check renders (as the decoder's)."""
    device: str = "cpu"
    content_threshold: float | None = None
    """Classifier score at or above which drawn content counts as detected; unset, the
    threshold calibrated with the classifier's weights applies."""
