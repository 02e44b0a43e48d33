"""Messages between a client (the owner of tasks) and a worker, peer to peer.

A client opens one Noise connection per worker and first presents a lease ticket
(:class:`Attach`); the worker checks the board's signature, that the ticket names this
worker and the connecting peer, and that it has not expired or been revoked. Functions
travel once per connection (:class:`DefineFunction`) and are then named by their hash.
Tasks are pushed in batches (:class:`SubmitTasks`); results come back in batches
(:class:`TaskResults`). Payloads are cloudpickle bytes plus out-of-band buffers
(:data:`~p2prt.wire.messages.Buffer` fields: large ones travel as attachments, outside
the CBOR); the worker never unpickles them itself — its executor subprocesses do.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .board import Address, LeaseTicket
from .messages import Buffer, Message, Record, message, record

__all__ = [
    "Attach",
    "Attached",
    "Detach",
    "DefineFunction",
    "TaskSpec",
    "SubmitTasks",
    "CancelTask",
    "TaskResult",
    "TaskResults",
    "TaskOutput",
    "NestedSubmit",
    "NestedSubmitted",
    "NestedGet",
    "NestedValues",
    "ObjectValue",
    "HeldArg",
    "FetchObjects",
    "FetchedObjects",
    "ReleaseObjects",
    "StatsRequest",
    "Stats",
]


@message("peer.attach")
class Attach(Message):
    rid: int
    ticket: LeaseTicket


@message("peer.attached")
class Attached(Message):
    rid: int
    lease_id: str
    worker_user: str
    worker_host: str
    python: str


@message("peer.detach")
class Detach(Message):
    """The client is done with this lease (it returns it to the board next)."""

    lease_id: str


@message("peer.define_function")
class DefineFunction(Message):
    fn_id: bytes
    payload: bytes


@record
class HeldArg(Record):
    """A task argument held by the worker that produced it (``holder``, a peer id, at
    ``addresses``): the worker running the task fetches it from there."""

    object_id: bytes
    holder: bytes
    addresses: list[Address]


@record
class TaskSpec(Record):
    """``hold_over`` > 0: if the value is at least that many bytes, the worker keeps it
    under ``object_id`` and answers ``held`` (the owner fetches it when needed);
    ``fetch``: arguments to fetch from other workers before the task runs."""

    task_id: int
    lease_id: str
    fn_id: bytes
    args: Buffer
    buffers: list[Buffer]
    name: str
    timeout: float | None = None
    object_id: bytes = b""
    hold_over: int = 0
    fetch: list[HeldArg] = field(default_factory=list)


@message("peer.submit")
class SubmitTasks(Message):
    tasks: list[TaskSpec]


@message("peer.cancel")
class CancelTask(Message):
    task_id: int
    force: bool = False


@record
class TaskResult(Record):
    """``status``: ``ok`` (data = pickled value), ``held`` (the worker keeps the value of
    ``size`` bytes), ``lost`` (an argument could not be fetched: data = its object id),
    ``error`` (data = pickled exception info), ``crashed`` (the executor died),
    ``timeout``, ``cancelled``, ``rejected``."""

    task_id: int
    status: str
    data: Buffer
    buffers: list[Buffer]
    message: str = ""
    size: int = 0


@message("peer.results")
class TaskResults(Message):
    results: list[TaskResult]


@message("peer.output")
class TaskOutput(Message):
    """Lines a task printed, forwarded to the owner's terminal."""

    task_id: int
    stream: str
    text: str


@record
class ObjectValue(Record):
    object_id: bytes
    status: str
    data: Buffer
    buffers: list[Buffer]
    message: str = ""


@message("peer.nested_submit")
class NestedSubmit(Message):
    """A running task submits tasks; the owner schedules them like its own."""

    rid: int
    parent_task_id: int
    fn_payload: bytes
    calls: list[bytes]
    options: bytes


@message("peer.nested_submitted")
class NestedSubmitted(Message):
    rid: int
    object_ids: list[bytes]


@message("peer.nested_get")
class NestedGet(Message):
    """A running task waits for values; its slot is lent out while it waits."""

    rid: int
    parent_task_id: int
    object_ids: list[bytes]
    timeout: float | None = None


@message("peer.nested_values")
class NestedValues(Message):
    rid: int
    values: list[ObjectValue]


@message("peer.fetch")
class FetchObjects(Message):
    """Ask a worker for values it holds (the owner, or a worker of the same cluster)."""

    rid: int
    object_ids: list[bytes]


@message("peer.fetched")
class FetchedObjects(Message):
    """``status`` per value: ``ok``, or ``lost`` (not held here)."""

    rid: int
    values: list[ObjectValue]


@message("peer.release")
class ReleaseObjects(Message):
    """The owner no longer needs these held values."""

    object_ids: list[bytes]


@message("peer.stats_request")
class StatsRequest(Message):
    rid: int


@message("peer.stats")
class Stats(Message):
    """A worker's counters: ``{"peers": {peer id: {"user", "sent": {path: n}, "received":
    {path: n}}}, "held": {"objects": n, "bytes": n}}``."""

    rid: int
    report: dict[str, Any]
