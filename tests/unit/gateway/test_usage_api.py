"""GET /v1/usage: the caller's metered usage per day, from the metering service's topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs import topics
from libs.bus import EventPublisher
from libs.events import Envelope
from libs.events.schemas import AccountUsage, ModelUsage
from tests.helpers import eventually
from tests.unit.gateway.conftest import GatewayUnderTest, key_for


async def _publish(under_test: GatewayUnderTest, usage: AccountUsage) -> None:
    key = f"{usage.account_id}|{usage.day}"
    envelope = Envelope.wrap(usage, aggregate_id=key)
    await EventPublisher(under_test.pipeline.broker.producer()).publish(topics.USAGE, envelope, key=key)


def _day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()


async def test_an_account_sees_its_own_days_of_usage_and_nobody_elses(gateway: GatewayUnderTest) -> None:
    metered = gateway.app.state.gateway.metered
    part = ModelUsage(jobs=2, images=3, output_tokens=768)
    for usage in (
        AccountUsage(account_id="acct_owner", day=_day(1), tier="pro", jobs=1, images=1, output_tokens=256),
        AccountUsage(account_id="acct_owner", day=_day(0), tier="pro", jobs=1, images=2, output_tokens=512),
        # The latest record of an account-day is its usage so far.
        AccountUsage(
            account_id="acct_owner",
            day=_day(0),
            tier="pro",
            jobs=2,
            images=3,
            output_tokens=768,
            by_model={"darkroom-mini": part},
        ),
        AccountUsage(account_id="acct_owner", day=_day(40), tier="pro", jobs=9, images=9, output_tokens=9),
        AccountUsage(account_id="acct_other", day=_day(0), tier="free", jobs=5, images=5, output_tokens=5),
    ):
        await _publish(gateway, usage)

    async def folded() -> bool:
        return bool(metered.changes >= 5)

    await eventually(folded, 5, "the gateway folded the usage topic")
    body = (await gateway.http.get("/v1/usage", headers={"authorization": f"Bearer {gateway.api_key}"})).json()
    assert body["account_id"] == "acct_owner"
    assert [(d["date"], d["jobs"], d["images"], d["output_tokens"]) for d in body["data"]] == [
        (_day(1), 1, 1, 256),
        (_day(0), 2, 3, 768),
    ]  # oldest first; the day 40 days ago is outside the default 30
    assert body["data"][1]["by_model"] == {"darkroom-mini": {"jobs": 2, "images": 3, "output_tokens": 768}}
    week = await gateway.http.get("/v1/usage?days=60", headers={"authorization": f"Bearer {gateway.api_key}"})
    assert len(week.json()["data"]) == 3

    stranger = await gateway.http.get("/v1/usage", headers={"authorization": f"Bearer {key_for('acct_nobody')}"})
    assert stranger.json()["data"] == []
    assert (await gateway.http.get("/v1/usage")).status_code == 401
    bad = await gateway.http.get("/v1/usage?days=0", headers={"authorization": f"Bearer {gateway.api_key}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "days"
