"""The bounded map services keep their latest writes in."""

from __future__ import annotations

from libs.recent import RecentMap


def test_the_least_recently_written_entry_is_forgotten_first() -> None:
    recent: RecentMap[str, int] = RecentMap(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # rewriting makes "a" the newest
    recent.put("c", 4)
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (3, None, 4)
    assert len(recent) == 2 and "b" not in recent
    recent.pop("a")
    recent.pop("missing")
    assert recent.get("a") is None and len(recent) == 1
