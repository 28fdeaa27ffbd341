"""SingleFlight: concurrent identical reads share one store call, and nothing more than that."""

from __future__ import annotations

import asyncio

import pytest

from backends.base import SingleFlight, StoreUnavailableError


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.gate = asyncio.Event()

    async def read(self, value: str = "job") -> str:
        self.count += 1
        await self.gate.wait()
        return f"{value}-{self.count}"


@pytest.mark.gen_test
async def test_concurrent_reads_of_one_key_share_one_call():
    flight, calls = SingleFlight(), Calls()
    readers = [asyncio.ensure_future(flight.run("k", calls.read)) for _ in range(32)]
    await asyncio.sleep(0)
    calls.gate.set()
    assert await asyncio.gather(*readers) == ["job-1"] * 32
    assert calls.count == 1


@pytest.mark.gen_test
async def test_other_keys_and_later_reads_make_their_own_calls():
    flight, calls = SingleFlight(), Calls()
    calls.gate.set()
    a, b = await asyncio.gather(
        flight.run("a", lambda: calls.read("a")), flight.run("b", lambda: calls.read("b"))
    )
    assert (a, b) == ("a-1", "b-2")
    assert await flight.run("a", lambda: calls.read("a")) == "a-3"  # not cached once done


@pytest.mark.gen_test
async def test_an_error_reaches_every_waiter_and_is_not_kept():
    flight = SingleFlight()

    async def broken() -> str:
        await asyncio.sleep(0)
        raise StoreUnavailableError("down")

    results = await asyncio.gather(*(flight.run("k", broken) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    calls = Calls()
    calls.gate.set()
    assert await flight.run("k", calls.read) == "job-1"


@pytest.mark.gen_test
async def test_a_cancelled_waiter_does_not_cancel_the_others():
    flight, calls = SingleFlight(), Calls()
    first = asyncio.ensure_future(flight.run("k", calls.read))
    second = asyncio.ensure_future(flight.run("k", calls.read))
    await asyncio.sleep(0)
    first.cancel()
    calls.gate.set()
    assert await second == "job-1"
    assert first.cancelled()
