"""The one exception tree of p2prt.

Every error p2prt raises on purpose is a :class:`P2prtError`. Errors from trio and the
operating system are mapped to this tree once, at the transport boundary
(:mod:`p2prt.transport._errors`), so users never see a bare ``trio`` or ``OSError``::

    P2prtError
    ├── ConfigError                     a setting or file is wrong
    ├── SerializationError              an object cannot be pickled or unpickled
    ├── TaskError                       a task failed; ``get`` raises it (see below)
    │   ├── WorkerCrashedError          the process running the task died
    │   ├── TaskTimeoutError            the attempt ran past its ``timeout`` (also a TimeoutError)
    │   ├── TaskCancelledError          cancelled with ``p2prt.cancel``
    │   └── MissingPackageError         the worker lacks a package the task needs
    ├── GetTimeoutError                 ``get``/``wait`` timed out (also a TimeoutError)
    ├── ObjectLostError                 no copy of an object is left and it cannot be rebuilt
    ├── NoCompatibleWorkerError         no worker can ever run the task (Python, resources)
    ├── RuntimeUsageError               the API was used in a way it cannot work (e.g. sync get in trio)
    ├── IdentityError                   SSH keys and certificates on this machine
    │   ├── KeyNotFoundError            no key where we looked (says where)
    │   ├── KeyLoadError                unreadable key, unsupported type, wrong passphrase
    │   └── KeyExistsError              keygen refuses to overwrite
    ├── ProtocolError                   the peer sent something that breaks the protocol
    │   ├── FrameTooLargeError          a frame header announces more than the limit
    │   ├── TruncatedFrameError         the stream ended in the middle of a frame
    │   ├── MalformedFrameError         a frame that is not valid CBOR
    │   ├── UnknownMessageTypeError     a message type this side does not know
    │   ├── InvalidMessageError         a known type with a missing or ill-typed field
    │   ├── DecryptionError             a Noise message failed authentication (tampered)
    │   ├── InvalidRecordError          a DHT record fails its checks (too large, wrong key, ill-formed)
    │   │   ├── BadRecordSignatureError     not signed by the node signing key its certificate names
    │   │   ├── RecordExpiredError          past its ``expires``
    │   │   ├── StaleRecordError            an older ``seq`` than a record already held
    │   │   └── RecordOwnerError            the certificate is not the named peer's, or its user is not allowed
    │   └── HandshakeError              the Noise handshake failed
    │       ├── CertificateError        the peer's node certificate is not acceptable
    │       │   ├── BadCertificateSignatureError
    │       │   ├── CertificateExpiredError
    │       │   └── CertificateKeyMismatchError   names another static key
    │       ├── PeerIdMismatchError     not the peer we meant to reach
    │       └── VersionMismatchError    incompatible wire protocol version
    ├── AuthenticationError             the other side refused who we are
    │   ├── ConnectionRejectedError     the responder refused us, with its reason
    │   └── BoardKeyChangedError        a known board presents another key
    ├── TransportError                  the connection itself
    │   ├── ConnectError                could not connect (refused, unreachable, timeout)
    │   ├── ConnectionLostError         the connection broke (reset, EOF while expected)
    │   ├── ConnectionClosedError       used after close, or closed cleanly by the peer
    │   └── DhtError                    the DHT node cannot serve the call (cannot bind, closed)
    └── BoardError                      the board's accounts and clusters refuse a request
        ├── InvalidNameError            a user or cluster name breaks the rule (says it)
        ├── UnknownUserError            no such user (names every unknown one)
        ├── UserExistsError             the user name is taken
        ├── KeyInUseError               the SSH key belongs to another user (names them)
        ├── UnknownKeyError             the user has no key with that fingerprint
        ├── UnknownClusterError         no such cluster
        ├── ClusterExistsError          the cluster exists (``owner/personal`` always does)
        ├── NotClusterOwnerError        only the cluster's owner may change it
        ├── ClusterRuleError            personal clusters cannot be shared or deleted;
        │                               an owner cannot be removed from their cluster
        ├── BoardStoreError             the board's database cannot be used
        │                               (busy too long, corrupt, newer schema, closed)
        ├── NotMemberError              not a member of that cluster (or not its owner's key)
        ├── NotRegisteredError          the key has no account yet (open policy: register)
        ├── RegistrationClosedError     this board does not take self-registration
        ├── SchedulerError              a lease operation with invalid arguments
        │   └── UnknownWorkerError      a heartbeat from a worker the board does not know
        └── BoardRequestError           the board refused a request for another reason

Protocol errors carry what was wrong in their message, for example
``InvalidMessageError("Ping.nonce: expected int, got str")``.
"""

from __future__ import annotations

__all__ = [
    "P2prtError",
    "ConfigError",
    "SerializationError",
    "TaskError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "TaskCancelledError",
    "MissingPackageError",
    "GetTimeoutError",
    "ObjectLostError",
    "NoCompatibleWorkerError",
    "RuntimeUsageError",
    "IdentityError",
    "KeyNotFoundError",
    "KeyLoadError",
    "KeyExistsError",
    "ProtocolError",
    "FrameTooLargeError",
    "TruncatedFrameError",
    "MalformedFrameError",
    "UnknownMessageTypeError",
    "InvalidMessageError",
    "DecryptionError",
    "InvalidRecordError",
    "BadRecordSignatureError",
    "RecordExpiredError",
    "StaleRecordError",
    "RecordOwnerError",
    "HandshakeError",
    "CertificateError",
    "BadCertificateSignatureError",
    "CertificateExpiredError",
    "CertificateKeyMismatchError",
    "PeerIdMismatchError",
    "VersionMismatchError",
    "AuthenticationError",
    "ConnectionRejectedError",
    "BoardKeyChangedError",
    "TransportError",
    "ConnectError",
    "ConnectionLostError",
    "ConnectionClosedError",
    "DhtError",
    "BoardError",
    "InvalidNameError",
    "UnknownUserError",
    "UserExistsError",
    "KeyInUseError",
    "UnknownKeyError",
    "UnknownClusterError",
    "ClusterExistsError",
    "NotClusterOwnerError",
    "ClusterRuleError",
    "BoardStoreError",
    "NotMemberError",
    "NotRegisteredError",
    "RegistrationClosedError",
    "BoardRequestError",
    "SchedulerError",
    "UnknownWorkerError",
]


class P2prtError(Exception):
    """Base class of every error p2prt raises on purpose."""


class ConfigError(P2prtError):
    """A setting, flag or configuration file is invalid."""


class SerializationError(P2prtError):
    """An object cannot be pickled, or a pickle cannot be loaded (e.g. a missing package)."""


class TaskError(P2prtError):
    """A task failed. When the task raised, ``get`` raises an instance of both
    ``TaskError`` and the task's own exception type, so ``except ValueError`` works;
    the message holds the remote traceback and the worker's user and host."""

    def __init__(self, message: str = "", *, cause_type: str = "", worker: str = "") -> None:
        super().__init__(message)
        self.cause_type = cause_type
        self.worker = worker


class WorkerCrashedError(TaskError):
    """The process running the task died (killed, segfault, ``os._exit``) or its worker vanished."""


class TaskTimeoutError(TaskError, TimeoutError):
    """A task attempt ran longer than its ``timeout``; its slot was freed."""


class TaskCancelledError(TaskError):
    """The task was cancelled with ``p2prt.cancel``."""


class MissingPackageError(TaskError):
    """The worker cannot import a package the task needs; the message names both."""


class GetTimeoutError(P2prtError, TimeoutError):
    """``p2prt.get`` or ``p2prt.wait`` reached its timeout."""


class ObjectLostError(P2prtError):
    """An object's value is gone and cannot be rebuilt."""


class NoCompatibleWorkerError(P2prtError):
    """No worker of the cluster can run the task (Python version, CPUs, resources)."""


class RuntimeUsageError(P2prtError):
    """The API was called in a way that cannot work; the message says what to do instead."""


class IdentityError(P2prtError):
    """A problem with this machine's keys or certificates."""


class KeyNotFoundError(IdentityError):
    """No SSH private key was found; the message lists the places searched."""


class KeyLoadError(IdentityError):
    """A key file exists but cannot be used (format, type, passphrase)."""


class KeyExistsError(IdentityError):
    """``p2prt keygen`` refuses to overwrite an existing key."""


class ProtocolError(P2prtError):
    """The peer sent bytes or messages that violate the p2prt protocol."""


class FrameTooLargeError(ProtocolError):
    """A frame announces a size above the configured maximum."""


class TruncatedFrameError(ProtocolError):
    """The stream ended in the middle of a frame or Noise message."""


class MalformedFrameError(ProtocolError):
    """A frame's body is not a well-formed CBOR message."""


class UnknownMessageTypeError(ProtocolError):
    """A message's type tag is not one this side knows."""


class InvalidMessageError(ProtocolError):
    """A message of a known type has a missing, extra or ill-typed field."""


class DecryptionError(ProtocolError):
    """A Noise message failed authentication: it was tampered with or corrupted."""


class InvalidRecordError(ProtocolError):
    """A DHT record (:mod:`p2prt.wire.records`) is ill-formed, too large, or stored
    under a key it does not belong to. A record whose certificate fails raises the
    :class:`CertificateError` subclass instead."""


class BadRecordSignatureError(InvalidRecordError):
    """A DHT record's signature does not verify with the node signing key its
    certificate names (forged or tampered)."""


class RecordExpiredError(InvalidRecordError):
    """A DHT record is past its ``expires`` time."""


class StaleRecordError(InvalidRecordError):
    """A DHT record has a lower ``seq`` than one already held for the same key."""


class RecordOwnerError(InvalidRecordError):
    """A DHT record's certificate belongs to another peer than the record names, or to a
    user the caller does not accept (not a member of the cluster)."""


class HandshakeError(ProtocolError):
    """The Noise handshake could not be completed."""


class CertificateError(HandshakeError):
    """The peer's node certificate is not acceptable."""


class BadCertificateSignatureError(CertificateError):
    """The certificate's signature does not verify with the SSH key it names."""


class CertificateExpiredError(CertificateError):
    """The certificate's validity has ended (or has not begun)."""


class CertificateKeyMismatchError(CertificateError):
    """The certificate names another Noise static key than the one used in the handshake."""


class PeerIdMismatchError(HandshakeError):
    """The peer authenticated, but is not the peer the caller meant to reach."""


class VersionMismatchError(HandshakeError):
    """The peer speaks an incompatible version of the p2prt wire protocol."""


class AuthenticationError(P2prtError):
    """The other side does not accept who we are, or we do not accept who it is."""


class ConnectionRejectedError(AuthenticationError):
    """The responder completed the handshake and then refused us; ``reason`` says why."""

    def __init__(self, reason: str, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class BoardKeyChangedError(AuthenticationError):
    """A board we pinned earlier now presents a different identity key."""


class TransportError(P2prtError):
    """The connection itself failed."""


class ConnectError(TransportError):
    """A connection could not be opened."""


class ConnectionLostError(TransportError):
    """An open connection broke (reset by peer, or ended when more was expected)."""


class ConnectionClosedError(TransportError):
    """The connection was closed: by us (and then used), or cleanly by the peer."""


class DhtError(TransportError):
    """The DHT node cannot serve the call: it cannot bind its UDP address, or it is closed."""


class BoardError(P2prtError):
    """The board's accounts and clusters refuse a request; the message says why."""


class InvalidNameError(BoardError):
    """A user or cluster name does not follow the naming rule, which the message states."""


class UnknownUserError(BoardError):
    """No account has this name; the message names every unknown user."""


class UserExistsError(BoardError):
    """An account with this name exists already."""


class KeyInUseError(BoardError):
    """The SSH key already belongs to another user, whom the message names."""


class UnknownKeyError(BoardError):
    """The user has no key with this fingerprint."""


class UnknownClusterError(BoardError):
    """No cluster has this ``owner/name``."""


class ClusterExistsError(BoardError):
    """The cluster exists already (``owner/personal`` exists implicitly for every user)."""


class NotClusterOwnerError(BoardError):
    """Only the owner of a cluster may delete it or change its members."""


class ClusterRuleError(BoardError):
    """The change breaks a cluster rule: ``owner/personal`` cannot be deleted or shared,
    and an owner cannot be removed from their own cluster."""


class BoardStoreError(BoardError):
    """The board's database cannot be used: busy too long, corrupt, newer schema, closed."""


class NotMemberError(BoardError):
    """The user is not a member of the cluster (``X/personal`` admits only X)."""


class NotRegisteredError(BoardError):
    """The session's key has no account on this board; under the open policy, register."""


class RegistrationClosedError(BoardError):
    """The board's registration policy is ``closed``: only its operator adds users."""


class BoardRequestError(BoardError):
    """The board refused a request for a reason without a more specific error class."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class SchedulerError(BoardError):
    """A scheduler call with invalid arguments, or one that breaks an ownership rule
    (``count=0``, a negative resource, returning another client's lease)."""


class UnknownWorkerError(SchedulerError):
    """A heartbeat from a worker the scheduler does not know (timed out, or the board
    restarted): the worker must register again."""
