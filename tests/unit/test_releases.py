"""Model versions and rollouts: the fold every gateway routes by, and the CLI's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.cli.models import (
    ModelsError,
    add_change,
    promote_change,
    rollback_change,
    rollout_change,
    validation_event,
)
from libs.events.schemas import (
    BASE_VERSION,
    ModelRolloutChanged,
    ModelVersionAdded,
    ModelVersionFailed,
    ModelVersionValidated,
)
from libs.modeltools.validation import ValidationResult
from libs.releases import ModelReleases, event_key, folder_sha256, source_sha256

MODEL = "darkroom-mini"
ACCOUNTS = [f"acct_{i:05d}" for i in range(4000)]


def releases(*events: object) -> ModelReleases:
    state = ModelReleases()
    for event in events:
        assert state.apply(event)  # type: ignore[arg-type]
    return state


def added(version: str) -> ModelVersionAdded:
    return ModelVersionAdded(model=MODEL, version=version, source="noop")


def validated(version: str, passed: bool = True) -> ModelVersionValidated:
    result = ValidationResult(1.0 if passed else 0.2, 0.0, 10, 10, 8)
    return validation_event(MODEL, version, result, 0.9, 0.05, "test")


def failed(version: str, stage: str = "load") -> ModelVersionFailed:
    return ModelVersionFailed(model=MODEL, version=version, stage=stage, reason="checksum mismatch", decoder="d-1")


def test_every_account_gets_the_base_version_until_an_operator_changes_it() -> None:
    assert {ModelReleases().route(MODEL, a) for a in ACCOUNTS[:50]} == {BASE_VERSION}


def test_a_rollout_sends_its_share_of_accounts_to_the_candidate_and_only_adds_accounts_as_it_grows() -> None:
    state = releases(added("v2"))
    shares = {}
    chosen: dict[float, set[str]] = {}
    for percent in (10.0, 50.0):
        state.apply(rollout_change(state, MODEL, "v2", percent, "ops"))
        chosen[percent] = {a for a in ACCOUNTS if state.route(MODEL, a) == "v2"}
        shares[percent] = len(chosen[percent]) / len(ACCOUNTS)
    assert 0.08 < shares[10.0] < 0.12 and 0.47 < shares[50.0] < 0.53
    assert chosen[10.0] < chosen[50.0]
    # Stable: the same account lands on the same side on every gateway, every time.
    assert all(ModelReleases(**state.__dict__).route(MODEL, a) == state.route(MODEL, a) for a in ACCOUNTS[:100])


def test_a_failed_candidate_leaves_the_rollout_at_once() -> None:
    state = releases(added("v2"))
    state.apply(rollout_change(state, MODEL, "v2", 100, "ops"))
    assert state.route(MODEL, "acct") == "v2"
    state.apply(failed("v2"))
    assert state.route(MODEL, "acct") == BASE_VERSION
    assert state.serving(MODEL, "v2") == BASE_VERSION  # a decoder renders its queued jobs with base
    assert state.snapshot(MODEL)["versions"][1]["failed"]["reason"] == "checksum mismatch"


def test_a_failed_stable_version_gives_way_to_the_one_it_replaced() -> None:
    state = releases(added("v2"), validated("v2"), added("v3"), validated("v3"))
    for version in ("v2", "v3"):
        state.apply(rollout_change(state, MODEL, version, 100, "ops"))
        state.apply(promote_change(state, MODEL, None, "ops"))
    assert (state.routing(MODEL).stable, state.rollout(MODEL).previous) == ("v3", "v2")
    state.apply(failed("v3", "render"))
    assert state.route(MODEL, "acct") == "v2"
    assert state.serving(MODEL, "v3") == "v2"


def test_promotion_needs_a_passed_safety_validation() -> None:
    state = releases(added("v2"))
    state.apply(rollout_change(state, MODEL, "v2", 20, "ops"))
    with pytest.raises(ModelsError, match="no safety validation"):
        promote_change(state, MODEL, None, "ops")
    state.apply(validated("v2", passed=False))
    with pytest.raises(ModelsError, match="failed its safety validation"):
        promote_change(state, MODEL, None, "ops")
    state.apply(validated("v2", passed=True))
    promoted = promote_change(state, MODEL, None, "ops")
    assert (promoted.stable, promoted.previous, promoted.candidate) == ("v2", BASE_VERSION, None)


def test_rollback_ends_a_rollout_then_returns_to_the_previous_stable_version() -> None:
    state = releases(added("v2"), validated("v2"), added("v3"))
    state.apply(rollout_change(state, MODEL, "v2", 100, "ops"))
    state.apply(promote_change(state, MODEL, "v2", "ops"))
    state.apply(rollout_change(state, MODEL, "v3", 30, "ops"))

    first = rollback_change(state, MODEL, "latency", "ops")
    state.apply(first)
    assert (first.stable, first.candidate, first.reason) == ("v2", None, "latency")
    second = rollback_change(state, MODEL, "", "ops")
    state.apply(second)
    assert state.route(MODEL, "acct") == BASE_VERSION
    with pytest.raises(ModelsError, match="nothing to roll back"):
        rollback_change(state, MODEL, "", "ops")


def test_the_cli_refuses_what_cannot_be_done_with_the_reason() -> None:
    state = releases(added("v2"), failed("v2"))
    with pytest.raises(ModelsError, match="unknown model"):
        rollout_change(state, "no-such-model", "v2", 10, "ops")
    with pytest.raises(ModelsError, match="has no version 'v7'"):
        rollout_change(state, MODEL, "v7", 10, "ops")
    with pytest.raises(ModelsError, match="rolled back after it failed to load"):
        rollout_change(state, MODEL, "v2", 10, "ops")
    with pytest.raises(ModelsError, match="percentage"):
        rollout_change(releases(added("v3")), MODEL, "v3", 0, "ops")
    with pytest.raises(ModelsError, match="already has a version"):
        add_change(state, MODEL, "v2", "builtin", "ops")
    with pytest.raises(ModelsError, match="letters, digits"):
        add_change(state, MODEL, "v 3", "builtin", "ops")
    with pytest.raises(ModelsError, match="names no folder"):
        add_change(state, MODEL, "v3", "mypackage.model:create", "ops")


def test_adding_a_version_records_the_sha256_of_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "amused"
    (folder / "vqvae").mkdir(parents=True)
    (folder / "vqvae" / "weights.bin").write_bytes(b"\x00" * 64)
    event = add_change(ModelReleases(), MODEL, "v2", f"amused:{folder}", "ops")
    assert event.sha256 == folder_sha256(folder) == source_sha256(f"amused:{folder}")

    (folder / "vqvae" / "weights.bin").write_bytes(b"\x00" * 63 + b"\x01")
    assert folder_sha256(folder) != event.sha256
    (folder / "vqvae" / "weights.bin").rename(folder / "vqvae" / "other.bin")
    assert folder_sha256(folder) != event.sha256


def test_each_model_event_has_its_own_key_on_the_compacted_topic() -> None:
    events = [
        added("v2"),
        validated("v2"),
        ModelRolloutChanged(model=MODEL, action="rollout", candidate="v2", percent=5),
        failed("v2"),
    ]
    assert [event_key(e) for e in events] == [
        "model-version:darkroom-mini:v2",
        "model-validation:darkroom-mini:v2",
        "model-rollout:darkroom-mini",
        "model-failure:darkroom-mini:v2",
    ]


def test_a_failure_of_the_base_version_rolls_nothing_back() -> None:
    state = releases(ModelVersionFailed(model=MODEL, version=BASE_VERSION, stage="render", reason="oom"))
    assert state.route(MODEL, "acct") == BASE_VERSION and not state.failures
