"""The node's cache of released feasibility answers: one count per definition in flight, answers kept
for the configured time, failures never kept."""

from __future__ import annotations

import asyncio

import pytest

from mercia.federation.node.count_cache import ReleasedCountCache


def _counter(delay: float = 0.05, fail: bool = False):
    calls = {"n": 0}

    async def compute() -> dict:
        calls["n"] += 1
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("count failed")
        return {"persons": 40 + calls["n"]}

    return calls, compute


def test_concurrent_requests_share_one_count() -> None:
    async def main() -> list[dict]:
        cache = ReleasedCountCache(ttl_seconds=60)
        calls, compute = _counter()
        answers = await asyncio.gather(*(cache.answer("a", compute) for _ in range(20)))
        assert calls["n"] == 1 and cache.computed == 1
        again = await cache.answer("a", compute)  # kept: no new count
        assert calls["n"] == 1 and again == answers[0]
        other = await cache.answer("b", compute)
        assert calls["n"] == 2 and other != answers[0]
        return answers

    answers = asyncio.run(main())
    assert all(a == {"persons": 41} for a in answers)


def test_expired_answers_are_counted_again_and_zero_ttl_never_keeps() -> None:
    async def main() -> None:
        calls, compute = _counter(delay=0)
        cache = ReleasedCountCache(ttl_seconds=0.05)
        await cache.answer("a", compute)
        await asyncio.sleep(0.08)
        await cache.answer("a", compute)
        assert calls["n"] == 2
        never = ReleasedCountCache(ttl_seconds=0)
        await never.answer("a", compute)
        await never.answer("a", compute)
        assert calls["n"] == 4

    asyncio.run(main())


def test_a_failed_count_reaches_every_waiter_and_is_not_kept() -> None:
    async def main() -> None:
        calls, compute = _counter(fail=True)
        cache = ReleasedCountCache(ttl_seconds=60)
        results = await asyncio.gather(*(cache.answer("a", compute) for _ in range(5)), return_exceptions=True)
        assert calls["n"] == 1 and all(isinstance(r, RuntimeError) for r in results)
        with pytest.raises(RuntimeError):
            await cache.answer("a", compute)
        assert calls["n"] == 2

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_cancel_the_count() -> None:
    async def main() -> None:
        calls, compute = _counter(delay=0.1)
        cache = ReleasedCountCache(ttl_seconds=60)
        first = asyncio.ensure_future(cache.answer("a", compute))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(cache.answer("a", compute))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == {"persons": 41}
        assert calls["n"] == 1

    asyncio.run(main())


def test_oldest_answers_leave_first_when_full() -> None:
    async def main() -> None:
        calls, compute = _counter(delay=0)
        cache = ReleasedCountCache(ttl_seconds=60, max_entries=2)
        for key in ("a", "b", "c"):
            await cache.answer(key, compute)
        await cache.answer("c", compute)
        assert calls["n"] == 3
        await cache.answer("a", compute)  # evicted: counted again
        assert calls["n"] == 4

    asyncio.run(main())
