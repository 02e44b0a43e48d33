"""The one place where trio and OS errors become p2prt errors."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import trio

from ..errors import ConnectError, ConnectionClosedError, ConnectionLostError

__all__ = ["map_exceptions", "map_connect_exceptions", "unwrap_single_group"]


@contextlib.contextmanager
def map_exceptions(what: str = "connection") -> Iterator[None]:
    """Translate trio/OS errors raised inside the block into :class:`TransportError`s."""
    try:
        yield
    except trio.ClosedResourceError as exc:
        raise ConnectionClosedError(f"{what} is closed") from exc
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = f": {cause}" if cause else ""
        raise ConnectionLostError(f"{what} broke{detail}") from exc
    except trio.BusyResourceError:
        raise  # a programming error, not a network condition
    except OSError as exc:
        raise ConnectionLostError(f"{what} failed: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def map_connect_exceptions(host: str, port: int) -> Iterator[None]:
    """Translate errors while opening a connection into :class:`ConnectError`."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        # trio reports "all attempts failed" with the per-address errors as the cause.
        causes = [exc, exc.__cause__, *getattr(exc.__cause__, "exceptions", ())]
        if any(isinstance(c, OSError) and c.errno == errno.ECONNREFUSED for c in causes):
            reason = "connection refused (is it running, and on that port?)"
        raise ConnectError(f"cannot connect to {host}:{port}: {reason}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectError(f"connection to {host}:{port} closed during set-up") from exc


@contextlib.contextmanager
def unwrap_single_group() -> Iterator[None]:
    """Re-raise a lone exception out of the ExceptionGroup a trio nursery wraps it in,
    so callers of our context managers can ``except NotMemberError`` as usual."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from None
