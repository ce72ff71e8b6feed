"""Append-only revisions: latest by probing upwards, insert as compare-and-set."""

from __future__ import annotations

from libs.stores.memory import InMemoryDocumentStore
from libs.stores.revisions import RevisionLog, revision_id


async def test_the_latest_revision_is_found_from_any_process() -> None:
    docs = InMemoryDocumentStore()
    writer = RevisionLog(docs, "c")
    assert await writer.latest("job") == (0, None)
    for rev in (0, 1, 2, 3):
        assert await writer.append("job", rev, {"n": rev})
    assert await writer.latest("job") == (3, {"n": 3})
    # A process that never saw the document probes from revision 0.
    assert await RevisionLog(docs, "c").latest("job") == (3, {"n": 3})


async def test_a_taken_revision_is_refused_and_unchanged() -> None:
    docs = InMemoryDocumentStore()
    log = RevisionLog(docs, "c")
    assert await log.append("job", 1, {"by": "first"})
    assert not await RevisionLog(docs, "c").append("job", 1, {"by": "second"})
    assert (await docs.get("c", revision_id("job", 1)) or {})["by"] == "first"


async def test_a_revision_written_elsewhere_is_seen_by_a_process_that_cached_an_older_one() -> None:
    docs = InMemoryDocumentStore()
    mine, theirs = RevisionLog(docs, "c"), RevisionLog(docs, "c")
    await mine.append("job", 1, {"n": 1})
    await theirs.append("job", 2, {"n": 2})
    assert await mine.latest("job") == (2, {"n": 2})
