"""An asyncio event loop in its own thread, called from trio.

Theory of operation
-------------------
The ``kademlia`` package is written for asyncio, and its objects (protocol, routing
table, storage) must only be touched on their loop's thread. :class:`LoopThread` owns
one such loop. :meth:`LoopThread.run` takes a coroutine (created anywhere: a coroutine
does nothing until its loop runs it), hands it to the loop with
:func:`asyncio.run_coroutine_threadsafe`, and parks the calling trio task with
:func:`trio.lowlevel.wait_task_rescheduled`. The future's done-callback (which runs on
the loop thread) wakes the task through the trio token's ``run_sync_soon``. So no trio
worker thread is blocked while the DHT works, and a call costs two thread wake-ups.

Cancellation passes on: when trio cancels the waiting task, the future is cancelled,
which cancels the asyncio task at its next ``await``; the trio task resumes with
``Cancelled`` once the future reports it is done (which happens at once, since a future
from ``run_coroutine_threadsafe`` never enters the RUNNING state).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import outcome
import trio

from ..errors import DhtError

__all__ = ["LoopThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _quiet_late_answers(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """rpcudp sets the result of a request that already timed out when its answer comes
    late, and the loop would print that error to stderr: it is expected, log it quietly."""
    if isinstance(context.get("exception"), asyncio.InvalidStateError):
        log.debug("late DHT answer ignored: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


class LoopThread:
    """A daemon thread running one asyncio event loop until :meth:`aclose`."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        self._thread.start()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_late_answers)
        try:
            loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        :class:`DhtError` when the loop is closed. Cancelling the calling trio task
        cancels the asyncio task.
        """
        if self._closed:
            coro.close()
            raise DhtError("the DHT node is closed")
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()
        try:
            fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed under us
            coro.close()
            raise DhtError("the DHT node is closed") from None
        raise_cancel: Callable[[], Any] | None = None

        def resume() -> None:
            if fut.cancelled():
                if raise_cancel is not None:
                    trio.lowlevel.reschedule(task, outcome.capture(raise_cancel))
                else:  # cancelled from the loop side: the loop is shutting down
                    trio.lowlevel.reschedule(task, outcome.Error(DhtError("the DHT node is closed")))
                return
            exc = fut.exception()
            trio.lowlevel.reschedule(task, outcome.Value(fut.result()) if exc is None else outcome.Error(exc))

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(resume)
            except trio.RunFinishedError:  # pragma: no cover - trio ended while we ran
                pass

        def abort(rc: Callable[[], Any]) -> trio.lowlevel.Abort:
            nonlocal raise_cancel
            raise_cancel = rc
            fut.cancel()
            return trio.lowlevel.Abort.FAILED  # resume() reschedules us, with rc

        fut.add_done_callback(wake)
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop thread, soon; nothing if the loop is closed."""
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass

    async def aclose(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for the thread."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            self._loop.close()
            return
        self.call_soon(self._loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
