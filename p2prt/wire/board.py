"""Messages between peers and the message board, and signed lease tickets.

Requests carry a request id ``rid`` chosen by the sender; the board answers each with
:class:`Ok` (``value`` is plain CBOR data) or :class:`~p2prt.wire.control.ErrorReply`
with the same id. Pushes from the board (welcome, leases) carry no id. Heartbeats and
lease returns are fire-and-forget.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2

from ..identity.keys import SshKey, SshPublicKey
from .messages import Message, Record, message, record

__all__ = [
    "Welcome",
    "Ok",
    "Register",
    "Heartbeat",
    "ClusterCreate",
    "ClusterDelete",
    "ClusterAdd",
    "ClusterRemove",
    "ClusterList",
    "ClusterMembers",
    "WorkerRegister",
    "LeaseRequest",
    "LeaseCancel",
    "LeaseReturn",
    "StatusRequest",
    "LeaseTicket",
    "LeaseGranted",
    "LeaseReclaim",
    "LeaseRevoked",
    "LeaseUnsatisfiable",
    "Address",
    "Reachability",
]

_TICKET_DOMAIN = b"p2prt lease ticket v1\x00"


@record
class Address(Record):
    host: str
    port: int


# -- board -> peer pushes -------------------------------------------------------------


@message("board.welcome")
class Welcome(Message):
    """First message on every board session: who the board thinks you are, and where
    it sees you connecting from (the STUN-like observed address)."""

    user: str | None
    observed: Address | None
    registration: str
    heartbeat_interval: float
    dht: Address | None = None  # the board's DHT node: every peer's bootstrap
    relay: Address | None = None  # where relay connections go (see RelayAttach)


@message("board.ok")
class Ok(Message):
    rid: int
    value: Any = None


# -- requests ---------------------------------------------------------------------------


@message("board.register")
class Register(Message):
    """Open policy: create account ``user`` owned by the session's SSH key."""

    rid: int
    user: str


@message("board.heartbeat")
class Heartbeat(Message):
    """Keeps the session, its worker registration and its leases alive. A worker also
    says how many client connections it has by path (``direct``, ``punched``,
    ``relayed``), for ``p2prt status``, and counts of tasks finished and failed with its
    recent failures (task name, kind, its own message), for the dashboard."""

    busy: int = 0
    paths: dict[str, int] | None = None
    done: int = 0  # a worker's tasks finished since it started (for the dashboard)
    failed: int = 0  # ... and failed (error, crashed, timeout)
    failures: list[Any] | None = None  # failures since the last heartbeat: [time, task name, kind, message]


@message("board.cluster_create")
class ClusterCreate(Message):
    rid: int
    name: str


@message("board.cluster_delete")
class ClusterDelete(Message):
    rid: int
    cluster: str


@message("board.cluster_add")
class ClusterAdd(Message):
    rid: int
    cluster: str
    users: list[str]


@message("board.cluster_remove")
class ClusterRemove(Message):
    rid: int
    cluster: str
    users: list[str]


@message("board.cluster_list")
class ClusterList(Message):
    rid: int


@message("board.cluster_members")
class ClusterMembers(Message):
    rid: int
    cluster: str


@message("board.worker_register")
class WorkerRegister(Message):
    """Offer this process's slots to ``cluster``; the peer id is the session's."""

    rid: int
    cluster: str
    slots: int
    resources: dict[str, float]
    python: str
    host: str
    listen: list[Address]


@message("board.lease_request")
class LeaseRequest(Message):
    """Ask for ``count`` more leases of this shape; grants arrive as :class:`LeaseGranted`."""

    rid: int
    cluster: str
    count: int
    num_cpus: int = 1
    resources: dict[str, float] | None = None
    python: str = ""


@message("board.lease_cancel")
class LeaseCancel(Message):
    """Drop this session's waiting demand in ``cluster``."""

    cluster: str


@message("board.lease_return")
class LeaseReturn(Message):
    lease_ids: list[str]


@message("board.status")
class StatusRequest(Message):
    rid: int
    cluster: str | None = None


# -- leases -----------------------------------------------------------------------------


@record
class LeaseTicket(Record):
    """The board's signed statement that ``client`` may use ``worker``'s slots."""

    lease_id: str
    cluster: str
    client_peer_id: bytes
    client_user: str
    worker_peer_id: bytes
    num_cpus: int
    resources: dict[str, float]
    expires: float
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        fields = self.to_wire()[:-1]
        return _TICKET_DOMAIN + cbor2.dumps(fields)

    def signed(self, board_key: SshKey) -> LeaseTicket:
        return dataclasses.replace(self, signature=board_key.sign(self.signed_bytes()))

    def verify(self, board_key: SshPublicKey) -> bool:
        return board_key.verify(self.signature, self.signed_bytes())


@message("board.lease_granted")
class LeaseGranted(Message):
    """To the client (with the worker's addresses) and to the worker (addresses empty)."""

    ticket: LeaseTicket
    worker_addrs: list[Address]


@message("board.lease_reclaim")
class LeaseReclaim(Message):
    """Fair share: please return this lease at the next task boundary."""

    lease_id: str


@message("board.lease_revoked")
class LeaseRevoked(Message):
    """The lease is void now (member removed, worker lost, client lost)."""

    lease_id: str
    reason: str


@message("board.lease_unsatisfiable")
class LeaseUnsatisfiable(Message):
    """No worker of the cluster could ever hold leases of this shape."""

    cluster: str
    reason: str
    num_cpus: int | None = None
    resources: dict[str, float] | None = None


# -- relay ------------------------------------------------------------------------------


@message("board.relay_open")
class RelayOpen(Message):
    """A script that cannot dial worker ``worker_peer_id`` asks for a relay; the Ok value
    is a one-time token (bytes) to present on the relay port."""

    rid: int
    worker_peer_id: bytes


@message("board.relay_incoming")
class RelayIncoming(Message):
    """Push to a worker: ``client_peer_id`` waits on the relay port with ``token``."""

    token: bytes
    client_peer_id: bytes


@message("board.relay_attach")
class RelayAttach(Message):
    """First message on a relay connection (the board's relay port)."""

    token: bytes


@message("board.relay_ready")
class RelayReady(Message):
    """Both ends are attached: from now on every byte is the other end's (an end-to-end
    Noise session the board cannot read)."""


# -- hole punching ---------------------------------------------------------------------


@message("board.punch_request")
class PunchRequest(Message):
    """A script asks to punch through to worker ``worker_peer_id``, in two steps. First
    (``ready=False``) the Ok value is ``{"host", "port", "delay"}``: the worker's observed
    address. The script starts connecting to it, then asks again with ``ready=True``: the
    worker gets ``board.punch_start`` and connects back. (The script's SYN is out first,
    so the worker's cannot meet a closed port on the script's host, whose RST would
    leave the script's NAT unable to translate that connection.)"""

    rid: int
    worker_peer_id: bytes
    ready: bool = False


@message("board.punch_start")
class PunchStart(Message):
    """To a worker: connect from your listening port to ``address`` (the script
    ``client_peer_id``'s observed address) in ``delay`` seconds; it will do the same."""

    client_peer_id: bytes
    address: Address
    delay: float


@message("board.reachability")
class Reachability(Message):
    """To a worker, after it registered: could the board dial it back at ``observed``
    (the address it sees the worker at)? ``public=False`` means the worker sits behind a
    NAT or firewall: scripts reach it by hole punching or the relay, and its DHT node
    runs in client mode (nobody could reach it to ask)."""

    public: bool
    observed: Address | None = None
