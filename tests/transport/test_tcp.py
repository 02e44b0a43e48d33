"""Authenticated TCP over real loopback sockets: identities, refusals, hostile input.

Every refusal must raise its own specific error, and the listener must go on serving a
well-behaved client afterwards (``assert_still_serving``).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2prt.errors import (
    BadCertificateSignatureError,
    CertificateExpiredError,
    CertificateKeyMismatchError,
    ConnectError,
    ConnectionClosedError,
    ConnectionLostError,
    ConnectionRejectedError,
    DecryptionError,
    FrameTooLargeError,
    PeerIdMismatchError,
    ProtocolError,
    TransportError,
    TruncatedFrameError,
)
from p2prt.identity import NodeIdentity
from p2prt.transport import MessageChannel, open_secure_channel, open_secure_stream, serve_secure
from p2prt.wire import Ping, encode_frame

from .conftest import (
    EchoServer,
    expired_identity,
    flip_bit_at,
    forged_signature_identity,
    make_identity,
    mismatched_identity,
    ping,
    start_proxy,
)

pytestmark = pytest.mark.timeout(60)

CLIENT = make_identity("carol")


async def assert_still_serving(server: EchoServer) -> None:
    with trio.fail_after(10):
        ch = await open_secure_channel("127.0.0.1", server.port, CLIENT)
        await ping(ch)
        await ch.aclose()


async def settle() -> None:
    """Wait until every task (server handlers included) is blocked: the event we want
    (a log line, a recorded error) has happened by then."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_handshake_over_tcp_identifies_both_sides(echo_server: EchoServer) -> None:
    with trio.fail_after(10):
        ch = await open_secure_channel("127.0.0.1", echo_server.port, CLIENT)
        await ping(ch)
    assert ch.peer.user == "server"
    assert ch.peer.peer_id == echo_server.identity.peer_id
    assert ch.peer.fingerprint == echo_server.identity.certificate.fingerprint
    assert ch.peer.fingerprint.startswith("SHA256:")
    (seen,) = echo_server.peers
    assert seen.user == "carol"  # type: ignore[attr-defined]
    assert seen.peer_id == CLIENT.peer_id  # type: ignore[attr-defined]
    assert seen.fingerprint == CLIENT.certificate.fingerprint  # type: ignore[attr-defined]
    await ch.aclose()


@pytest.mark.parametrize(
    ("make_bad", "error", "text"),
    [
        (forged_signature_identity, BadCertificateSignatureError, "not signed by the key it names"),
        (expired_identity, CertificateExpiredError, "expired"),
        (mismatched_identity, CertificateKeyMismatchError, "another Noise static key"),
    ],
)
async def test_bad_client_certificate_is_refused(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture, make_bad: object, error: type, text: str
) -> None:
    caplog.set_level(logging.INFO, logger="p2prt")
    bad: NodeIdentity = make_bad("mallory")  # type: ignore[operator]
    with trio.fail_after(10), pytest.raises(ConnectionRejectedError) as info:
        await open_secure_stream("127.0.0.1", echo_server.port, bad)
    # The client is told why; the server logged the specific error.
    assert text in str(info.value)
    assert info.value.code == "certificate"
    await settle()
    assert logged(caplog, error.__name__)
    assert echo_server.peers == []
    await assert_still_serving(echo_server)


@pytest.mark.parametrize(
    ("make_bad", "error"),
    [
        (forged_signature_identity, BadCertificateSignatureError),
        (expired_identity, CertificateExpiredError),
        (mismatched_identity, CertificateKeyMismatchError),
    ],
)
async def test_bad_server_certificate_is_refused(nursery: trio.Nursery, make_bad: object, error: type) -> None:
    server = EchoServer(make_bad("mallory"))  # type: ignore[operator]
    listeners = await nursery.start(serve_secure, server.handler, server.identity)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10), pytest.raises(error):
        await open_secure_stream("127.0.0.1", port, CLIENT)


async def test_expected_peer_id_mismatch(echo_server: EchoServer) -> None:
    with trio.fail_after(10), pytest.raises(PeerIdMismatchError):
        await open_secure_stream("127.0.0.1", echo_server.port, CLIENT, expected_peer_id=CLIENT.peer_id)
    await assert_still_serving(echo_server)


async def test_authorizer_rejects_with_reason(nursery: trio.Nursery) -> None:
    server = EchoServer(make_identity("board"))

    def authorize(peer: object) -> str | None:
        return None if peer.user == "carol" else f"unknown key for {peer.user}; ask the operator"  # type: ignore[attr-defined]

    listeners = await nursery.start(
        lambda task_status: serve_secure(server.handler, server.identity, authorize=authorize, task_status=task_status)
    )
    server.port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10), pytest.raises(ConnectionRejectedError, match="unknown key for eve; ask the operator"):
        await open_secure_stream("127.0.0.1", server.port, make_identity("eve"))
    await assert_still_serving(server)


# Offsets into the byte streams: message 1 is 2 + 32 bytes; message 2 follows on the
# way down; message 3 and then transport data on the way up.
MSG1_LEN = 2 + 32


@pytest.mark.parametrize("offset", [MSG1_LEN + 2, MSG1_LEN + 40, MSG1_LEN + 100])
async def test_flipped_bit_in_handshake_message_3(
    nursery: trio.Nursery, echo_server: EchoServer, caplog: pytest.LogCaptureFixture, offset: int
) -> None:
    caplog.set_level(logging.INFO, logger="p2prt")
    port = await start_proxy(nursery, echo_server.port, up=flip_bit_at(offset))
    with trio.fail_after(10), pytest.raises(ProtocolError):
        await open_secure_stream("127.0.0.1", port, CLIENT)
    await settle()
    assert logged(caplog, "DecryptionError")
    await assert_still_serving(echo_server)


@pytest.mark.parametrize("offset", [2, 40, 120])
async def test_flipped_bit_in_handshake_message_2(nursery: trio.Nursery, echo_server: EchoServer, offset: int) -> None:
    port = await start_proxy(nursery, echo_server.port, down=flip_bit_at(offset))
    with trio.fail_after(10), pytest.raises(DecryptionError, match="message 2"):
        await open_secure_stream("127.0.0.1", port, CLIENT)
    await assert_still_serving(echo_server)


async def test_flipped_bit_in_handshake_message_1(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    # The clear ephemeral key changes; the transcripts differ, so message 2 fails to decrypt.
    port = await start_proxy(nursery, echo_server.port, up=flip_bit_at(10))
    with trio.fail_after(10), pytest.raises(DecryptionError):
        await open_secure_stream("127.0.0.1", port, CLIENT)
    await assert_still_serving(echo_server)


async def test_flipped_bit_in_transport_message(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    # Find where the client's transport data starts: after message 1 and message 3.
    probe = make_identity("carol")
    sizes: list[int] = []

    def measure(pos: int, chunk: bytes) -> bytes:
        sizes.append(len(chunk))
        return chunk

    port = await start_proxy(nursery, echo_server.port, up=measure)
    ch = await open_secure_channel("127.0.0.1", port, probe)
    await ping(ch)
    await ch.aclose()
    handshake_bytes = sizes[0] + sizes[1] if sizes[0] == MSG1_LEN else sizes[0]
    assert sizes[0] == MSG1_LEN

    port = await start_proxy(nursery, echo_server.port, up=flip_bit_at(handshake_bytes + 10))
    with trio.fail_after(10):
        ch = await open_secure_channel("127.0.0.1", port, probe)
        await ch.send(Ping(1))
        with pytest.raises((ConnectionClosedError, ConnectionLostError)):
            await ch.receive()
    await settle()
    assert any(isinstance(e, DecryptionError) for e in echo_server.handler_errors)
    await assert_still_serving(echo_server)


async def test_stream_truncated_mid_frame(echo_server: EchoServer) -> None:
    with trio.fail_after(10):
        stream = await open_secure_stream("127.0.0.1", echo_server.port, CLIENT)
        frame = encode_frame(b"\x82dping\x01")
        await stream.send_all(frame[:5])
        await stream.aclose()
        await settle()
    assert any(isinstance(e, TruncatedFrameError) for e in echo_server.handler_errors)
    await assert_still_serving(echo_server)


async def test_frame_over_the_limit(echo_server: EchoServer) -> None:
    with trio.fail_after(10):
        stream = await open_secure_stream("127.0.0.1", echo_server.port, CLIENT)
        # Only the header: the server must refuse before any body arrives.
        await stream.send_all((echo_server.max_frame_size + 1).to_bytes(4, "big"))
        ch = MessageChannel(stream)
        with pytest.raises(TransportError):
            await ch.receive()
    await settle()
    assert any(isinstance(e, FrameTooLargeError) for e in echo_server.handler_errors)
    await assert_still_serving(echo_server)


async def test_garbage_instead_of_handshake(echo_server: EchoServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2prt")
    with trio.fail_after(10):
        raw = await trio.open_tcp_stream("127.0.0.1", echo_server.port)
        await raw.send_all(b"\x00\x20" + b"G" * 32 + b"\x00\x05hello")
        # The server answers message 1 with message 2, then drops us on the garbage frame.
        while await raw.receive_some():
            pass
        await raw.aclose()
    await settle()
    assert logged(caplog, "handshake with")
    await assert_still_serving(echo_server)


async def test_half_open_connection_times_out(echo_server: EchoServer) -> None:
    with trio.fail_after(10):  # the fixture's handshake_timeout is 2 s
        raw = await trio.open_tcp_stream("127.0.0.1", echo_server.port)
        await assert_still_serving(echo_server)  # served while the half-open one waits
        assert await raw.receive_some() == b""  # the server gave up on it
        await raw.aclose()


async def test_connect_refused_is_a_connect_error() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with trio.fail_after(10), pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await open_secure_stream("127.0.0.1", port, CLIENT)


@pytest.mark.parametrize(
    "first_bytes",
    [b"\x00\x00", b"\x00\x20" + b"\x00" * 32, b"\x00\x05hello", b"\xff\xff" + b"x" * 100],
    ids=["empty-message-1", "zero-key", "short-key", "huge-length"],
)
async def test_malformed_message_1_never_stops_the_listener(echo_server: EchoServer, first_bytes: bytes) -> None:
    with trio.fail_after(10):
        raw = await trio.open_tcp_stream("127.0.0.1", echo_server.port)
        await raw.send_all(first_bytes)
        await raw.send_eof()
        while await raw.receive_some():
            pass
        await raw.aclose()
    await assert_still_serving(echo_server)


async def test_connect_refused_says_so() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    with trio.fail_after(10), pytest.raises(ConnectError, match="connection refused"):
        await open_secure_stream("127.0.0.1", port, CLIENT)


async def test_a_connection_can_leave_from_the_listening_port(nursery: trio.Nursery) -> None:
    from p2prt.transport import NoiseStream, open_secure_stream, remote_address, serve_secure

    seen: list[tuple[str, int] | None] = []
    got = trio.Event()

    async def record(stream: NoiseStream) -> None:
        seen.append(remote_address(stream))
        got.set()
        await stream.receive_some()

    alice, bob = make_identity("alice"), make_identity("bob")
    mine = await nursery.start(lambda task_status: serve_secure(record, alice, reuse_port=True, task_status=task_status))
    other = await nursery.start(lambda task_status: serve_secure(record, bob, task_status=task_status))
    my_port = mine[0].socket.getsockname()[1]
    other_port = other[0].socket.getsockname()[1]
    with trio.fail_after(10):
        out = await open_secure_stream("127.0.0.1", other_port, alice, local_port=my_port)
        await got.wait()
        assert seen == [("127.0.0.1", my_port)]  # the peer sees our listening port
        # ... which still accepts connections.
        back = await open_secure_stream("127.0.0.1", my_port, bob)
        await back.aclose()
        await out.aclose()
