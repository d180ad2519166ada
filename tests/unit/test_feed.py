"""The event feed behind GET /jobs/events: order, owner scoping, resumption, resets."""

from __future__ import annotations

import asyncio

from astro_otf.domain.job import computation_key
from astro_otf.service.feed import FeedEvent, JobFeed


async def take(feed: JobFeed, n: int, **kwargs: object) -> list[FeedEvent]:
    out: list[FeedEvent] = []
    stream = feed.follow(**kwargs)  # type: ignore[arg-type]
    async for event in stream:
        if event is not None:
            out.append(event)
        if len(out) == n:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return out


def test_a_subscriber_gets_new_events_of_its_owner_only() -> None:
    async def main() -> None:
        feed = JobFeed()
        follower = asyncio.create_task(take(feed, 2, owner="ann", check_owner=True))
        await asyncio.sleep(0)
        feed.publish("phase", "a", "ann", {"phase": "QUEUED"})
        feed.publish("phase", "b", "bob", {"phase": "QUEUED"})
        feed.publish("progress", "a", "ann", {"fraction": 0.5})
        got = await asyncio.wait_for(follower, 2)
        assert [(e.kind, e.job_id) for e in got] == [("phase", "a"), ("progress", "a")]
        # without owner checks (anonymous service) every job is seen
        everyone = await take(
            feed, 3, owner=None, check_owner=False, last_event_id=f"{feed.boot}-0"
        )
        assert [e.job_id for e in everyone] == ["a", "b", "a"]

    asyncio.run(main())


def test_resuming_replays_what_was_missed_and_filters_jobs() -> None:
    async def main() -> None:
        feed = JobFeed()
        for i in range(5):
            feed.publish("phase", f"j{i % 2}", None, {"n": i})
        first = await take(feed, 1, owner=None, check_owner=False, last_event_id=f"{feed.boot}-0")
        rest = await take(
            feed,
            2,
            owner=None,
            check_owner=False,
            last_event_id=feed.event_id(first[0]),
            jobs=["j1"],
        )
        assert [e.data["n"] for e in rest] == [1, 3]

    asyncio.run(main())


def test_a_stream_starts_from_the_cursor_taken_when_its_request_was_answered() -> None:
    """GET /jobs/events takes the feed's cursor before its headers go out: an event published
    after that, but before the stream's body is first read, still reaches the client (a
    client that reads the job when its stream opens then misses no change)."""

    async def main() -> None:
        feed = JobFeed()
        assert feed.cursor() == f"{feed.boot}-0"  # before any event
        feed.publish("phase", "a", None, {"phase": "EXECUTING"})
        cursor = feed.cursor()  # the request is answered here ...
        feed.publish("phase", "a", None, {"phase": "COMPLETED"})  # ... the job ends ...
        # ... and only then does the stream's body start
        got = await asyncio.wait_for(
            take(feed, 1, owner=None, check_owner=False, last_event_id=cursor), 2
        )
        assert [e.data["phase"] for e in got] == ["COMPLETED"]

    asyncio.run(main())


def test_an_id_whose_events_are_gone_gets_a_reset() -> None:
    async def main() -> None:
        feed = JobFeed(keep=3)
        for i in range(10):
            feed.publish("phase", "j", None, {"n": i})
        for stale in ("other-3", f"{feed.boot}-1", f"{feed.boot}-999", "garbage"):
            (event,) = await take(feed, 1, owner=None, check_owner=False, last_event_id=stale)
            assert event.kind == "reset", stale
        kept = await take(feed, 2, owner=None, check_owner=False, last_event_id=f"{feed.boot}-7")
        assert [e.data["n"] for e in kept] == [7, 8]

    asyncio.run(main())


def test_a_quiet_stream_yields_keep_alives() -> None:
    async def main() -> None:
        feed = JobFeed()
        stream = feed.follow(None, check_owner=False, keep_alive=0.05)
        assert await asyncio.wait_for(stream.__anext__(), 1) is None
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_the_computation_key_ignores_how_a_job_is_run_not_what_it_computes() -> None:
    base = {"model": "m", "model_version": "2.0", "threshold": "0.5", "precision": "fp32"}
    key = computation_key({"image": "aa"}, base)
    assert key == computation_key({"image": "aa"}, {**base, "priority": "5", "nocache": "False"})
    assert key != computation_key({"image": "ab"}, base)
    assert key != computation_key({"image": "aa"}, {**base, "threshold": "0.6"})
    assert key != computation_key({"image": "aa"}, {**base, "precision": "int8"})
    assert key != computation_key({"image": "aa"}, {**base, "model_version": "1.0"})
