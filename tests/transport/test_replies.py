"""Request/reply matching shared by board, client and worker connections."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2prt.errors import ConnectionLostError
from p2prt.transport.replies import Replies


async def test_replies_reach_their_own_waiters(nursery: trio.Nursery) -> None:
    replies = Replies()
    a, b = replies.register(), replies.register()
    got: dict[int, object] = {}

    async def waiter(rid: int) -> None:
        got[rid] = await replies.wait(rid)

    nursery.start_soon(waiter, a)
    nursery.start_soon(waiter, b)
    await trio.testing.wait_all_tasks_blocked()
    assert replies.resolve(b, "second") and replies.resolve(a, "first")
    assert not replies.resolve(a, "again") and not replies.resolve(None, "x") and not replies.resolve(99, "x")
    await trio.testing.wait_all_tasks_blocked()
    assert got == {a: "first", b: "second"}


async def test_close_fails_current_and_later_requests() -> None:
    replies = Replies()
    rid = replies.register()
    replies.close(ConnectionLostError("gone"))
    with pytest.raises(ConnectionLostError):
        await replies.wait(rid)
    with pytest.raises(ConnectionLostError):
        replies.register()


async def test_an_exception_reply_is_raised() -> None:
    replies = Replies()
    rid = replies.register()
    replies.resolve(rid, ValueError("refused"))
    with pytest.raises(ValueError, match="refused"):
        await replies.wait(rid)
