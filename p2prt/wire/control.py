"""Connection-level messages shared by every p2prt protocol."""

from __future__ import annotations

from typing import Any

from .messages import Message, Record, message, record

__all__ = ["Hello", "Accept", "Reject", "Ping", "Pong", "Goodbye", "ErrorReply", "Versions"]


@record
class Versions(Record):
    """What a peer runs; compared by the runtime before leasing (cloudpickle needs equal Pythons)."""

    p2prt: str
    python: str
    cloudpickle: str


@message("hello")
class Hello(Message):
    """Handshake payload (messages 2 and 3 of Noise XX, encrypted)."""

    proto: int
    certificate: list[Any]
    versions: Versions


@message("accept")
class Accept(Message):
    """The responder's first transport message when it accepts the initiator."""


@message("reject")
class Reject(Message):
    """The responder's first transport message when it refuses the initiator."""

    code: str
    reason: str


@message("ping")
class Ping(Message):
    nonce: int


@message("pong")
class Pong(Message):
    nonce: int


@message("goodbye")
class Goodbye(Message):
    """Sent before a deliberate close, so the other side can tell it from a crash."""

    reason: str = ""


@message("error")
class ErrorReply(Message):
    """A request could not be served; ``code`` is machine-readable, ``message`` for people."""

    code: str
    message: str
    request_id: int | None = None
