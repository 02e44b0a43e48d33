"""The asyncio loop thread, awaited from trio: results, errors, cancellation, closing."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
import trio.testing

from p2prt.dht._bridge import LoopThread
from p2prt.errors import DhtError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def loop_thread() -> object:
    thread = LoopThread("test-dht-loop")
    thread.start()
    yield thread
    await thread.aclose()


async def test_result_comes_back_from_the_loop_thread(loop_thread: LoopThread) -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    with trio.fail_after(5):
        assert await loop_thread.run(where()) == "test-dht-loop"


async def test_exception_is_raised_in_trio(loop_thread: LoopThread) -> None:
    async def fail() -> None:
        raise KeyError("boom")

    with trio.fail_after(5), pytest.raises(KeyError, match="boom"):
        await loop_thread.run(fail())


async def test_many_concurrent_calls(loop_thread: LoopThread) -> None:
    results: list[int] = []

    async def double(i: int) -> int:
        await asyncio.sleep(0)
        return 2 * i

    async def one(i: int) -> None:
        results.append(await loop_thread.run(double(i)))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert sorted(results) == [2 * i for i in range(200)]


async def test_cancellation_reaches_the_asyncio_task(loop_thread: LoopThread) -> None:
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    cancelled = threading.Event()

    async def forever() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(3600)  # sleep-ok: the work being cancelled
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                await loop_thread.run(forever())

            nursery.start_soon(call)
            await started.wait()
            nursery.cancel_scope.cancel()

        async def was_cancelled() -> bool:
            return cancelled.is_set()

        # The loop ran the cancellation before this later call: the loop is FIFO.
        assert await loop_thread.run(was_cancelled())
        assert await loop_thread.run(asyncio.sleep(0, result=7)) == 7  # still healthy


async def test_calls_after_close_raise(loop_thread: LoopThread) -> None:
    await loop_thread.aclose()
    await loop_thread.aclose()  # idempotent
    with pytest.raises(DhtError, match="closed"):
        await loop_thread.run(asyncio.sleep(0))


async def test_close_cancels_what_still_runs() -> None:
    thread = LoopThread("test-dht-close")
    thread.start()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await thread.run(asyncio.sleep(3600))  # sleep-ok: work the close ends
                except DhtError as exc:
                    outcome.append(exc)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await thread.aclose()
    assert len(outcome) == 1
