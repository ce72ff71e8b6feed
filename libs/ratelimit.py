"""Rate limits shared by gateway replicas: token buckets, images per day, concurrent jobs.

Every replica keeps a `UsageLedger` and feeds it three things: its own admissions (at
once, when it admits a request), every `GenerateImage` command on the image-command
topics (the log of what all replicas admitted) with the request events that end jobs,
and the metering service's usage per account-day (`AccountUsage`, compacted). Since the
logs are the record, every replica converges to the same counts without a shared
database and without a message of its own.

Images per day are what the account's jobs accepted that day delivered, as metered,
plus what its jobs still in flight asked for: a job that fails, is blocked or is
cancelled gives its images back. A replica starting reads the metered usage and only
one job hold of commands and ends (not the day's commands), so its start does not grow
with the day's traffic. A completion is in the metered count once the account-day's
`completed_through` has reached its time; until then the ledger counts it itself.
Completions of one account reach metering from several partitions, so one may be taken
as metered a moment before it is (an undercount for as long as metering's lag, then
exact); a job still in flight at a replica's start whose command is older than the
hold counts when it completes, and metering stopped for longer than the hold is not
made up by a replica that starts meanwhile.

Error bound: a replica learns of another replica's admission one Kafka hop after it
(the command's publish-to-read latency L, tens of milliseconds locally). Within L, N
replicas may each spend the same last tokens of one account, so the fleet admits at
most N times an account's remaining burst in any window of length L; over a longer
window T the admitted count stays within `capacity + rate * T` plus what was admitted
elsewhere in the last L, because late debits are still charged (the bucket may go
into debt, down to minus its capacity). No I/O here; time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from libs.events.schemas import TierPolicy


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole_ms = math.ceil(seconds * 1000)
    hours, rest = divmod(whole_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `capacity` per minute; debt allowed down to -capacity."""

    capacity: float
    tokens: float
    updated: float

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        """Add what accrued since the last update."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def resize(self, capacity: float, now: float) -> None:
        """Apply a changed limit: a raise grants the extra tokens at once, a cut caps them."""
        self.refill(now)
        if capacity != self.capacity:
            self.tokens = min(capacity, self.tokens + max(0.0, capacity - self.capacity))
            self.capacity = capacity

    def debit(self, tokens: float, at: float, now: float) -> None:
        """Charge tokens spent at time `at` (maybe elsewhere, maybe a while ago)."""
        self.refill(now)
        if now - at >= 60.0:
            return  # a full refill has happened since: it no longer weighs on the bucket
        self.tokens = max(-self.capacity, self.tokens - tokens)

    def seconds_until(self, tokens: float) -> float:
        """How long until the bucket holds `tokens` (0 when it does)."""
        missing = tokens - self.tokens
        return 0.0 if missing <= 0 or self.rate <= 0 else missing / self.rate


@dataclass(frozen=True)
class Decision:
    """The answer to one request.

    Attributes:
        allowed: Whether it may go ahead.
        code: Why not: "rate_limit_exceeded" (requests per minute, tier capacity,
            concurrent jobs) or "insufficient_quota" (images per day).
        message: For the client, when refused.
        limit: The account's requests per minute.
        remaining: Requests left in the account's bucket after this one.
        reset_s: Seconds until the account's bucket is full again.
        retry_after_s: When refused for rate, seconds until a retry can succeed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    code: Literal["rate_limit_exceeded", "insufficient_quota"] | None = None
    message: str = ""
    retry_after_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers for this decision."""
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_s),
        }
        if self.code == "insufficient_quota":
            headers["x-should-retry"] = "false"
        elif not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_s * 1000)))
        return headers


@dataclass
class _Job:
    account_id: str
    n: int
    started: float
    """When it was admitted (Unix seconds)."""
    completed: float | None = None
    """When it completed (its `JobCompleted`'s time); None while it is in flight."""


@dataclass(frozen=True)
class _Ended:
    at: float
    """When the end was read (Unix seconds)."""
    completed: float | None
    """The completion's time; None for a job that failed, was blocked or was cancelled."""


@dataclass
class UsageLedger:
    """Per-account and per-tier buckets, images per UTC day, and jobs in flight.

    Args (fields):
        job_hold_s: A job counts as in flight until its end is seen, or for at most this
            long (a job whose end was missed cannot hold a slot forever).
    """

    job_hold_s: float = 600.0
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    day: date | None = None
    metered: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Today's metered usage: account -> (images, `completed_through` in Unix seconds)."""
    jobs: dict[str, dict[str, _Job]] = field(default_factory=dict)
    """account -> its jobs that count beside the metered usage: in flight, or completed
    and not yet metered."""
    ended: dict[str, _Ended] = field(default_factory=dict)
    """Ends read before their job's command (another partition), kept for one hold."""
    own: set[str] = field(default_factory=set)
    """Jobs this replica admitted whose command it has not read back yet."""
    _job_accounts: dict[str, str] = field(default_factory=dict)
    _midnight: float = 0.0
    """00:00 UTC of `day`, in Unix seconds."""

    # -- admission ---------------------------------------------------------------

    def admit(self, job_id: str, account_id: str, tier: str, policy: TierPolicy, n: int, now: float) -> Decision:
        """Decide a generation request and, when allowed, charge it.

        Args:
            job_id: The job the request would create (recorded as in flight).
            account_id: Whose request.
            tier: The account's tier.
            policy: The tier's policy.
            n: Images asked for.
            now: Unix seconds.

        Returns:
            The decision, with the numbers for the response headers.
        """
        account = self._bucket(f"acct:{account_id}", policy.requests_per_minute, now)
        tier_bucket = (
            self._bucket(f"tier:{tier}", policy.tier_requests_per_minute, now)
            if policy.tier_requests_per_minute
            else None
        )

        def refuse(code: Literal["rate_limit_exceeded", "insufficient_quota"], message: str, retry: float) -> Decision:
            return Decision(
                allowed=False,
                limit=policy.requests_per_minute,
                remaining=max(0, math.floor(account.tokens)),
                reset_s=account.seconds_until(account.capacity),
                code=code,
                message=message,
                retry_after_s=retry,
            )

        running = self.in_flight(account_id, now)
        if running >= policy.concurrent_jobs:
            return refuse(
                "rate_limit_exceeded",
                f"Too many concurrent jobs: the {tier} tier allows {policy.concurrent_jobs} at once "
                "and this account has as many running. Retry when one has finished.",
                1.0,
            )
        used = self.images_today(account_id, now)
        if used + n > policy.images_per_day:
            return refuse(
                "insufficient_quota",
                f"You have used {used} of the {policy.images_per_day} images per day of the {tier} tier"
                + (f" and asked for {n} more" if used < policy.images_per_day else "")
                + ". The quota resets at 00:00 UTC.",
                0.0,
            )
        if account.tokens < 1:
            return refuse(
                "rate_limit_exceeded",
                f"Rate limit reached for requests: {policy.requests_per_minute} per minute on the {tier} tier. "
                f"Please try again in {format_duration(account.seconds_until(1))}.",
                account.seconds_until(1),
            )
        if tier_bucket is not None and tier_bucket.tokens < 1:
            return refuse(
                "rate_limit_exceeded",
                f"The {tier} tier is at capacity right now. Please try again in "
                f"{format_duration(tier_bucket.seconds_until(1))}.",
                tier_bucket.seconds_until(1),
            )
        account.tokens -= 1
        if tier_bucket is not None:
            tier_bucket.tokens -= 1
        self._track(job_id, _Job(account_id, n, now))
        self.own.add(job_id)
        return Decision(
            allowed=True,
            limit=policy.requests_per_minute,
            remaining=max(0, math.floor(account.tokens)),
            reset_s=account.seconds_until(account.capacity),
        )

    # -- what every replica reads ------------------------------------------------

    def record_command(
        self, job_id: str, account_id: str, tier: str, policy: TierPolicy, n: int, at: float, now: float
    ) -> None:
        """A generation admitted by any replica (its command, read from the topic).

        Args:
            job_id: The command's job.
            account_id: Whose job.
            tier: The tier it was admitted under.
            policy: That tier's policy now (sizes buckets this replica has not used yet).
            n: Images granted.
            at: When it was admitted (Unix seconds).
            now: Unix seconds.
        """
        if job_id in self.own:
            self.own.discard(job_id)  # charged when admitted here
            return
        if job_id in self._job_accounts:
            return  # read twice
        self._bucket(f"acct:{account_id}", policy.requests_per_minute, now).debit(1, at, now)
        if policy.tier_requests_per_minute:
            self._bucket(f"tier:{tier}", policy.tier_requests_per_minute, now).debit(1, at, now)
        ended = self.ended.pop(job_id, None)
        if ended is None:
            if now - at < self.job_hold_s:
                self._track(job_id, _Job(account_id, n, at))
        elif ended.completed is not None:
            self._track(job_id, _Job(account_id, n, at, completed=ended.completed))
            self._drop_metered(account_id)

    def record_end(self, job_id: str, now: float, completed: float | None = None) -> None:
        """A job reached its end.

        Args:
            job_id: The job.
            now: Unix seconds.
            completed: For a completed job, its completion's time (Unix seconds, as its
                `JobCompleted` envelope says, which metering's `completed_through` compares
                with); None for a job that failed, was blocked or was cancelled: its images
                are given back.
        """
        account_id = self._job_accounts.get(job_id)
        if account_id is None:
            self.ended[job_id] = _Ended(now, completed)  # its command may still be on its way (another partition)
            return
        job = self.jobs[account_id][job_id]
        if completed is None:
            self._untrack(job_id)
        else:
            job.completed = completed
            self._drop_metered(account_id)

    def record_metered(self, account_id: str, day: str, images: int, through: float | None, now: float) -> None:
        """The metering service's usage of an account on a UTC day (its latest record).

        Args:
            account_id: Whose usage.
            day: The UTC day (YYYY-MM-DD) its jobs were accepted; other days than today are not kept.
            images: Images its completed jobs delivered.
            through: The time of the latest completion counted (Unix seconds), if known.
            now: Unix seconds.
        """
        if day != self._roll_day(now).isoformat():
            return
        self.metered[account_id] = (images, through if through is not None else 0.0)
        self._drop_metered(account_id)

    # -- reading -----------------------------------------------------------------

    def in_flight(self, account_id: str, now: float) -> int:
        """Jobs of the account in flight (holds that expired are dropped)."""
        jobs = self.jobs.get(account_id)
        if not jobs:
            return 0
        for job_id in [j for j, job in jobs.items() if job.completed is None and now - job.started >= self.job_hold_s]:
            self._untrack(job_id)
        return sum(1 for job in self.jobs.get(account_id, {}).values() if job.completed is None)

    def images_today(self, account_id: str, now: float) -> int:
        """Images the account's jobs accepted today (UTC) delivered or asked for while in flight."""
        self._roll_day(now)
        self.in_flight(account_id, now)
        metered, _ = self.metered.get(account_id, (0, 0.0))
        midnight = self._midnight
        return metered + sum(job.n for job in self.jobs.get(account_id, {}).values() if job.started >= midnight)

    def prune(self, now: float) -> None:
        """Forget ended markers and full buckets that no longer matter (call now and then)."""
        self.ended = {j: e for j, e in self.ended.items() if now - e.at < self.job_hold_s}
        for account_id in list(self.jobs):
            self.in_flight(account_id, now)
        cutoff = now - 86400  # a completion never metered (metering down) is let go after a day
        for key in [k for k, b in self.buckets.items() if _idle_and_full(b, now)]:
            del self.buckets[key]
        for jobs in list(self.jobs.values()):
            for job_id in [j for j, job in jobs.items() if job.completed is not None and job.completed < cutoff]:
                self._untrack(job_id)

    # -- internals ---------------------------------------------------------------

    def _bucket(self, key: str, capacity: int, now: float) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(capacity=float(capacity), tokens=float(capacity), updated=now)
        else:
            bucket.resize(float(capacity), now)
        return bucket

    def _roll_day(self, now: float) -> date:
        today = datetime.fromtimestamp(now, UTC).date()
        if self.day != today:
            self.day, self.metered = today, {}
            self._midnight = datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp()
        return today

    def _track(self, job_id: str, job: _Job) -> None:
        self.jobs.setdefault(job.account_id, {})[job_id] = job
        self._job_accounts[job_id] = job.account_id

    def _untrack(self, job_id: str) -> None:
        account_id = self._job_accounts.pop(job_id, None)
        if account_id is None:
            return
        jobs = self.jobs[account_id]
        del jobs[job_id]
        if not jobs:
            del self.jobs[account_id]

    def _drop_metered(self, account_id: str) -> None:
        """Forget the account's completions that today's metered usage counts already."""
        _, through = self.metered.get(account_id, (0, 0.0))
        jobs = self.jobs.get(account_id, {})
        for job_id in [j for j, job in jobs.items() if job.completed is not None and job.completed <= through]:
            self._untrack(job_id)


def _idle_and_full(bucket: TokenBucket, now: float) -> bool:
    bucket.refill(now)
    return bucket.capacity > 0 and bucket.tokens >= bucket.capacity
