"""Sans-IO protocol layer: frames, messages, the Noise handshake. No trio, no sockets.

- :mod:`.frames` — incremental length-prefixed frame decoder with a size limit.
- :mod:`.messages` — typed, validated message classes and their CBOR encoding.
- :mod:`.control` — connection-level messages (hello, accept/reject, ping, goodbye, error).
- :mod:`.cipher` — Noise transport ciphers.
- :mod:`.handshake` — the Noise XX handshake state machine and :class:`PeerInfo`.
"""

from .cipher import MAX_NOISE_MESSAGE, MAX_PLAINTEXT, CipherState
from .control import Accept, ErrorReply, Goodbye, Hello, Ping, Pong, Reject, Versions
from .frames import DEFAULT_MAX_FRAME_SIZE, FRAME_HEADER, NOISE_HEADER, FrameDecoder, encode_frame, encode_frames
from .handshake import PROTO_VERSION, HandshakeState, NoiseHandshake, PeerInfo, local_versions
from .messages import Message, Record, decode_message, encode_message, message, message_types, record

__all__ = [
    "MAX_NOISE_MESSAGE",
    "MAX_PLAINTEXT",
    "CipherState",
    "Accept",
    "ErrorReply",
    "Goodbye",
    "Hello",
    "Ping",
    "Pong",
    "Reject",
    "Versions",
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER",
    "NOISE_HEADER",
    "FrameDecoder",
    "encode_frame",
    "encode_frames",
    "PROTO_VERSION",
    "HandshakeState",
    "NoiseHandshake",
    "PeerInfo",
    "local_versions",
    "Message",
    "Record",
    "decode_message",
    "encode_message",
    "message",
    "message_types",
    "record",
]
