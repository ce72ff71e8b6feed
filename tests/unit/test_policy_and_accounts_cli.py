"""`darkroom policy` and `darkroom accounts` input checks (no broker needed: they fail first)."""

from __future__ import annotations

import pytest

from libs.access import AccessState
from libs.cli.__main__ import main
from libs.cli.policy import PolicyError, rollout_change, tier_change
from libs.events.schemas import RolloutChanged


def test_a_tier_change_records_who_and_the_old_and_new_values() -> None:
    state = AccessState()
    change = tier_change(state, "free", {"requests_per_minute": "12", "lane": "plus"}, "ops@host")
    assert change.previous == state.policy("free")
    assert (change.policy.requests_per_minute, change.policy.lane, change.changed_by) == (12, "plus", "ops@host")
    assert change.policy.images_per_day == state.policy("free").images_per_day


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_n": "9"}, "max_n"),
        ({"max_quality": "ultra"}, "max_quality"),
        ({"requests_per_minute": "-1"}, "requests_per_minute"),
        ({"lane": "nowhere"}, "unknown lane"),
        ({}, "nothing to change"),
    ],
)
def test_invalid_tier_changes_are_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        tier_change(AccessState(), "free", changes, "ops")


def test_a_rollout_change_keeps_the_previous_percentage() -> None:
    state = AccessState()
    state.apply(RolloutChanged(feature="image_generation", tier="free", percent=10))
    change = rollout_change(state, "image_generation", "free", 25, "ops")
    assert (change.previous, change.percent) == (10, 25)
    with pytest.raises(PolicyError, match="unknown feature"):
        rollout_change(state, "teleport", "free", 5, "ops")
    with pytest.raises(PolicyError, match="between 0 and 100"):
        rollout_change(state, "image_generation", "free", 150, "ops")


def test_the_cli_answers_bad_input_with_a_plain_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "set", "--tier", "free", "--max-n", "9", "--bootstrap", "127.0.0.1:1"]) == 1
    assert "max_n" in capsys.readouterr().err
    assert main(["policy", "set", "--tier", "free", "--rollout", "image_generation", "--bootstrap", "x:1"]) == 1
    assert "needs --percent" in capsys.readouterr().err
    assert main(["accounts", "revoke", "--key", "sk-dr-forged.sig", "--bootstrap", "127.0.0.1:1"]) == 1
    assert "not a valid key" in capsys.readouterr().err
    assert main(["accounts", "revoke", "--bootstrap", "127.0.0.1:1"]) == 2
