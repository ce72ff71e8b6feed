"""GET /v1/models and the names a request's `model` may use, through the openai SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from libs import topics
from libs.bus import EventPublisher
from libs.events import Envelope, Event
from libs.events.schemas import (
    BatchLoad,
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionFailed,
    ServiceHeartbeat,
)
from libs.releases import ModelReleases, event_key
from libs.settings import DEV_OPERATOR_TOKEN
from services.gateway.context import Gateway
from tests.helpers import eventually
from tests.unit.gateway.conftest import GatewayUnderTest, gateway_with, key_for


async def test_the_models_list_has_darkroom_models_then_openais_names_as_aliases(gateway: GatewayUnderTest) -> None:
    listed = await gateway.client.models.list()
    ids = [m.id for m in listed.data]
    assert ids == ["darkroom-mini", "gpt-image-1", "gpt-image-1-mini", "dall-e-3", "dall-e-2"]
    assert all(m.object == "model" and m.owned_by == "darkroom" for m in listed.data)
    assert getattr(listed.data[1], "alias_of", None) == "darkroom-mini"
    assert getattr(listed.data[0], "alias_of", None) is None

    one = await gateway.client.models.retrieve("dall-e-3")
    assert one.id == "dall-e-3" and getattr(one, "alias_of", None) == "darkroom-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.client.models.retrieve("stable-diffusion-3")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_the_models_list_takes_a_key(gateway: GatewayUnderTest) -> None:
    response = await gateway.http.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("name", ["gpt-image-1", "dall-e-3", None, "darkroom-mini"])
async def test_an_alias_or_no_model_renders_with_the_default(gateway: GatewayUnderTest, name: str | None) -> None:
    extra: dict[str, Any] = {} if name is None else {"model": name}
    result = await gateway.client.images.generate(prompt="a red circle", quality="low", **extra)
    assert result.data
    assert gateway.pipeline.commands[-1].spec.model == "darkroom-mini"


async def test_an_unknown_model_is_a_400_naming_model_and_the_choices(gateway: GatewayUnderTest) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.client.images.generate(prompt="a red circle", model="stable-diffusion-3")
    body = caught.value.body
    assert body["param"] == "model" and body["code"] == "model_not_found"  # type: ignore[index]
    assert "darkroom-mini" in body["message"] and "gpt-image-1" in body["message"]  # type: ignore[index]
    assert gateway.pipeline.commands == []


async def _decoder_beat(under_test: GatewayUnderTest, model: str, pool: str) -> None:
    """What the gateway hears from a live decoder of `model`'s `pool`."""
    beat = ServiceHeartbeat(
        service="decoder",
        instance_id=f"decoder-{model}-{pool}",
        started_at=datetime.now(UTC),
        batch=BatchLoad(pool=pool, model=model, limit=8),
    )
    gateway: Gateway = under_test.app.state.gateway
    await gateway.heartbeats(Envelope.wrap(beat, aggregate_id=beat.instance_id), None)  # type: ignore[arg-type]


async def test_a_second_model_renders_only_while_its_decoders_are_heard() -> None:
    async with gateway_with(models=("darkroom-mini", "amused-256")) as under_test:
        ids = [m.id for m in (await under_test.client.models.list()).data]
        assert ids[:2] == ["darkroom-mini", "amused-256"]

        # No decoder of amused-256's consumer pool: refused at once, nothing queued.
        with pytest.raises(openai.APIStatusError) as caught:
            await under_test.client.images.generate(prompt="a red circle", model="amused-256", quality="low")
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "model_unavailable"  # type: ignore[index]
        assert caught.value.response.headers["retry-after"] == "30"
        assert under_test.pipeline.commands == []
        # Its api pool's decoder does not serve a pro key's consumer lane.
        await _decoder_beat(under_test, "amused-256", "api")
        with pytest.raises(openai.APIStatusError):
            await under_test.client.images.generate(prompt="a red circle", model="amused-256", quality="low")

        await _decoder_beat(under_test, "amused-256", "consumer")
        result = await under_test.client.images.generate(prompt="a red circle", model="amused-256", quality="low")
        assert result.data
        [command] = under_test.pipeline.commands
        assert command.spec.model == "amused-256" and command.spec.lane == "pro"
        gateway: Gateway = under_test.app.state.gateway
        assert gateway.lanes.waiting("amused-256/pro") == 1 and gateway.lanes.waiting("pro") == 0

        # The default model queues without a decoder heard: its jobs wait durably for one.
        await under_test.client.images.generate(prompt="a red circle", quality="low")
        assert under_test.pipeline.commands[-1].spec.model == "darkroom-mini"


async def test_a_model_without_render_topics_stops_the_gateway_at_start() -> None:
    with pytest.raises(ValueError, match="no-such-model"):
        async with gateway_with(models=("darkroom-mini", "no-such-model")):
            pass


async def test_a_tweak_keeps_the_model_that_drew_its_image() -> None:
    async with gateway_with(models=("darkroom-mini", "amused-256")) as under_test:
        await _decoder_beat(under_test, "amused-256", "consumer")
        drawn = await under_test.client.images.generate(prompt="a red circle", model="amused-256", quality="low")
        assert drawn.data
        image_id = f"img_{under_test.pipeline.commands[-1].job_id}_0"
        listed = await under_test.http.get(
            f"/v1/images/{image_id}", headers={"authorization": f"Bearer {under_test.api_key}"}
        )
        assert listed.json()["model"] == "amused-256"

        await under_test.client.images.edit(image=[], prompt="at night", extra_body={"image_id": image_id})
        assert under_test.pipeline.commands[-1].spec.model == "amused-256"
        with pytest.raises(openai.BadRequestError) as caught:
            await under_test.client.images.edit(
                image=[], prompt="at night", model="darkroom-mini", extra_body={"image_id": image_id}
            )
        assert caught.value.body["param"] == "model"  # type: ignore[index]
        assert "drawn by amused-256" in caught.value.body["message"]  # type: ignore[index]


async def _publish_policy(under_test: GatewayUnderTest, *events: Event) -> None:
    """Model events as `darkroom models` publishes them, on the policy topic every gateway follows."""
    publisher = EventPublisher(under_test.pipeline.broker.producer())
    for event in events:
        key = event_key(event)
        await publisher.publish(topics.POLICIES, Envelope.wrap(event, aggregate_id=key), key=key)


async def test_a_rollout_routes_its_share_of_accounts_to_the_new_version_live(gateway: GatewayUnderTest) -> None:
    releases = gateway.app.state.gateway.limits.releases
    accounts = [f"acct_{i:03d}" for i in range(40)]
    expected = ModelReleases()
    for event in (
        ModelVersionAdded(model="darkroom-mini", version="v2", source="builtin"),
        ModelRolloutChanged(model="darkroom-mini", action="rollout", candidate="v2", percent=50),
    ):
        expected.apply(event)
    added = expected.version("darkroom-mini", "v2")
    assert added is not None
    await _publish_policy(gateway, added, expected.rollout("darkroom-mini"))
    await eventually(lambda: _true(releases.changes >= 2), 5, "the gateway folded the rollout")

    routed = {}
    for account in accounts:
        client = gateway.client.with_options(api_key=key_for(account))
        await client.images.generate(prompt="a red circle", quality="low")
        routed[account] = gateway.pipeline.commands[-1].spec.version
    assert routed == {a: expected.route("darkroom-mini", a) for a in accounts}
    assert set(routed.values()) == {"v2", "base"}

    operator = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}
    body = (await gateway.http.get("/v1/admin/models", headers=operator)).json()
    [mini] = body["data"]
    assert (mini["stable"], mini["candidate"], mini["percent"]) == ("base", "v2", 50)

    # A failed version leaves the routing at once: the rollback.
    await _publish_policy(
        gateway, ModelVersionFailed(model="darkroom-mini", version="v2", stage="load", reason="checksum mismatch")
    )
    await eventually(lambda: _true(releases.changes >= 3), 5, "the gateway folded the failure")
    await gateway.client.with_options(api_key=key_for(accounts[0])).images.generate(prompt="a circle", quality="low")
    assert gateway.pipeline.commands[-1].spec.version == "base"
    job = await gateway.http.get(
        f"/v1/images/jobs/{gateway.pipeline.commands[-1].job_id}",
        headers={"authorization": f"Bearer {key_for(accounts[0])}"},
    )
    assert job.json()["model_version"] == "base"


async def _true(value: bool) -> bool | None:
    return value or None
