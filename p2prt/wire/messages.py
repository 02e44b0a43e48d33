"""Typed, validated messages and their CBOR encoding.

A message type is a frozen dataclass declared with :func:`message`; nested structures
are dataclasses declared with :func:`record`. Fields are typed with a small vocabulary —
``int``, ``float``, ``str``, ``bytes``, ``bool``, :data:`Buffer`, ``Any`` (plain CBOR
data), ``X | None``, ``list[X]``, ``dict[str, X]`` and records — and every instance is
checked in ``__post_init__``, whether built locally or decoded from the wire.

A :data:`Buffer` field holds bytes, a ``bytearray`` or a ``memoryview`` as is (no copy).
:func:`encode_message_parts` takes large buffers out of the CBOR as *attachments*: the
field holds CBOR tag :data:`ATTACHMENT_TAG` with the attachment's index, and the bytes
travel raw after the message (:mod:`p2prt.wire.attachments`), so a 64 MiB payload is
never copied into or out of a CBOR document. Only buffer fields may carry attachments.

On the wire a message is the CBOR array ``[tag, field1, field2, ...]``; a record is the
array of its fields. Trailing fields with defaults may be omitted, so a field added
later with a default stays compatible. Anything else — unknown tag, wrong arity, wrong
type, invalid CBOR — raises a :class:`~p2prt.errors.ProtocolError` subclass naming the
message and field.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias, TypeVar, dataclass_transform

import cbor2

from ..errors import InvalidMessageError, MalformedFrameError, UnknownMessageTypeError

__all__ = [
    "Record",
    "Message",
    "message",
    "record",
    "encode_message",
    "encode_message_parts",
    "decode_message",
    "Buffer",
    "ExternalBuffer",
    "readable",
    "ATTACHMENT_TAG",
    "message_types",
    "MAX_NESTING",
]

MAX_NESTING = 32
"""Deepest nesting accepted inside an ``Any`` field."""

class ExternalBuffer(abc.ABC):
    """Payload bytes kept outside this process's heap (e.g. a file in shared memory that
    a worker hands on to an executor without reading it). A :data:`Buffer` field may hold
    one; it is sent as an attachment, read through :meth:`view`."""

    __slots__ = ()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def view(self) -> memoryview:
        """The bytes, readable (e.g. mapped into memory)."""


Buffer: TypeAlias = bytes | bytearray | memoryview | ExternalBuffer
"""Field type for payloads: kept as given, and sent as an attachment when large."""


def readable(buf: Buffer) -> bytes | bytearray | memoryview:
    """``buf`` as something the buffer protocol can read."""
    return buf.view() if isinstance(buf, ExternalBuffer) else buf

ATTACHMENT_TAG = 20530
"""CBOR tag of a reference to an attachment (its index) in a buffer field."""

# What a field needs on encode: nothing, conversion of nested records, buffer handling.
_PLAIN_FIELD, _NESTED_FIELD, _BUFFER_FIELD = 0, 1, 2

_REGISTRY: dict[str, type[Message]] = {}

_Check = Callable[[Any, str], Any]  # (value, path) -> converted value; raises InvalidMessageError


@dataclass_transform(frozen_default=True)
class Record:
    """Base of wire structures: frozen dataclasses encoded as CBOR arrays.

    (``dataclass_transform`` tells type checkers that subclasses are dataclasses; the
    :func:`record` / :func:`message` decorators make them so at run time.)"""

    _fields: ClassVar[tuple[str, ...]]
    _checks: ClassVar[tuple[_Check, ...]]
    _required: ClassVar[int]
    _nested: ClassVar[tuple[int, ...]]

    def __post_init__(self) -> None:
        name = type(self).__name__
        for fname, check in zip(self._fields, self._checks, strict=False):
            value = getattr(self, fname)
            converted = check(value, f"{name}.{fname}")
            if converted is not value:
                object.__setattr__(self, fname, converted)

    def to_wire(self, attach: _Attach | None = None) -> list[Any]:
        return [
            _to_wire(getattr(self, f), attach) if n else getattr(self, f)
            for f, n in zip(self._fields, self._nested, strict=False)
        ]

    @classmethod
    def from_wire(cls, items: Any, path: str | None = None) -> Any:
        where = path or cls.__name__
        if not isinstance(items, list):
            raise InvalidMessageError(f"{where}: expected an array, got {_tname(items)}")
        if not cls._required <= len(items) <= len(cls._fields):
            raise InvalidMessageError(f"{where}: expected {cls._required}..{len(cls._fields)} fields, got {len(items)}")
        return cls(*items)


class Message(Record):
    """Base of top-level messages: a record with a type tag."""

    TAG: ClassVar[str]

    def to_wire(self, attach: _Attach | None = None) -> list[Any]:
        return [self.TAG, *super().to_wire(attach)]


class _Attach:
    """Collects the attachments of one message while it is converted for the wire."""

    __slots__ = ("buffers", "min_size")

    def __init__(self, min_size: int) -> None:
        self.min_size = min_size
        self.buffers: list[bytes | bytearray | memoryview] = []

    def take(self, value: Buffer) -> Any:
        if isinstance(value, ExternalBuffer):
            value = value.view()
        if len(value) < self.min_size:
            return value if type(value) is not memoryview else value.tobytes()
        self.buffers.append(value)
        return cbor2.CBORTag(ATTACHMENT_TAG, len(self.buffers) - 1)


def _to_wire(value: Any, attach: _Attach | None) -> Any:
    if isinstance(value, Record):
        return value.to_wire(attach)
    if isinstance(value, list):
        return [_to_wire(v, attach) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v, attach) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview, ExternalBuffer)):
        if attach is not None:
            return attach.take(value)
        if isinstance(value, ExternalBuffer):
            value = value.view()
        return value if type(value) is not memoryview else value.tobytes()
    return value


def _tname(value: Any) -> str:
    return type(value).__name__


def _plain(value: Any, path: str, depth: int = 0) -> Any:
    if depth > MAX_NESTING:
        raise InvalidMessageError(f"{path}: nested deeper than {MAX_NESTING}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        raise InvalidMessageError(f"{path}: integer out of the 64-bit range")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, list):
        for v in value:
            _plain(v, path, depth + 1)
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise InvalidMessageError(f"{path}: map keys must be str or int, got {_tname(k)}")
            if isinstance(k, int) and not isinstance(k, bool) and not INT_MIN <= k <= INT_MAX:
                raise InvalidMessageError(f"{path}: map key out of the 64-bit range")
            _plain(v, path, depth + 1)
        return value
    raise InvalidMessageError(f"{path}: {_tname(value)} is not plain CBOR data")


INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1


def _scalar(kind: type) -> _Check:
    def check(value: Any, path: str) -> Any:
        if kind is int and type(value) is int and not INT_MIN <= value <= INT_MAX:
            raise InvalidMessageError(f"{path}: integer out of the 64-bit range")
        if type(value) is kind:
            return value
        if kind is float and type(value) is int:
            if not INT_MIN <= value <= INT_MAX:
                raise InvalidMessageError(f"{path}: number out of range")
            return float(value)
        if kind is bytes and isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)  # subclasses (PeerId) and buffers travel as plain bytes
        if kind is int and type(value) is not bool and isinstance(value, int):
            return int(value)
        if kind is str and isinstance(value, str):
            return str(value)
        raise InvalidMessageError(f"{path}: expected {kind.__name__}, got {_tname(value)}")

    return check


def _check_buffer(value: Any, path: str) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview, ExternalBuffer)):
        return value
    raise InvalidMessageError(f"{path}: expected bytes, got {_tname(value)}")


def _compile(tp: Any) -> tuple[_Check, int]:
    """A checker for type ``tp`` and what values need on encode (``_*_FIELD``)."""
    if tp in (int, float, str, bytes, bool):
        return _scalar(tp), _PLAIN_FIELD
    if tp == Buffer:
        return _check_buffer, _BUFFER_FIELD
    if tp is Any:
        return _plain, _PLAIN_FIELD
    if isinstance(tp, type) and issubclass(tp, Record) and not issubclass(tp, Message):
        rec = tp

        def check_record(value: Any, path: str) -> Any:
            if isinstance(value, rec):
                return value
            return rec.from_wire(value, path)

        return check_record, _NESTED_FIELD
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner, nested = _compile(next(a for a in args if a is not type(None)))

        def check_optional(value: Any, path: str) -> Any:
            return None if value is None else inner(value, path)

        return check_optional, nested
    if origin is list and len(args) == 1:
        item, nested = _compile(args[0])

        def check_list(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise InvalidMessageError(f"{path}: expected array, got {_tname(value)}")
            out = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return value if all(a is b for a, b in zip(out, value, strict=False)) else out

        return check_list, nested
    if origin is dict and len(args) == 2 and args[0] is str:
        val, nested = _compile(args[1])

        def check_dict(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise InvalidMessageError(f"{path}: expected map, got {_tname(value)}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InvalidMessageError(f"{path}: map keys must be str, got {_tname(k)}")
                out[k] = val(v, f"{path}[{k!r}]")
            return value if all(out[k] is value[k] for k in value) else out

        return check_dict, nested
    raise TypeError(f"unsupported field type {tp!r} in a wire message")


_R = TypeVar("_R", bound=type)


def record(cls: _R) -> _R:
    """Class decorator: make ``cls`` (a :class:`Record` subclass) a checked frozen dataclass."""
    dc: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
    hints = typing.get_type_hints(dc)
    fields = dataclasses.fields(dc)
    compiled = [_compile(hints[f.name]) for f in fields]
    dc._fields = tuple(f.name for f in fields)
    dc._checks = tuple(c for c, _ in compiled)
    dc._nested = tuple(n for _, n in compiled)
    dc._required = sum(
        1 for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    result: _R = dc
    return result


def message(tag: str) -> Callable[[_R], _R]:
    """Class decorator: register a :class:`Message` subclass under ``tag``."""

    def wrap(cls: _R) -> _R:
        if tag in _REGISTRY:
            raise ValueError(f"message tag {tag!r} is already used by {_REGISTRY[tag].__name__}")
        cls.TAG = tag  # type: ignore[attr-defined]
        dc = record(cls)
        _REGISTRY[tag] = dc  # type: ignore[assignment,unused-ignore]
        return dc

    return wrap


def message_types() -> dict[str, type[Message]]:
    """Every registered message type by tag (a copy)."""
    return dict(_REGISTRY)


def encode_message(msg: Message) -> bytes:
    """CBOR bytes of ``msg`` (no frame header); buffers stay inside the CBOR."""
    return cbor2.dumps(msg.to_wire())


def encode_message_parts(msg: Message, attach_min: int) -> tuple[bytes, list[bytes | bytearray | memoryview]]:
    """CBOR bytes of ``msg`` and its attachments: the buffer fields' values of at least
    ``attach_min`` bytes, in the order their tags' indices name."""
    attach = _Attach(attach_min)
    body = cbor2.dumps(msg.to_wire(attach))
    return body, attach.buffers


def _tag_of(args: tuple[Any, ...]) -> cbor2.CBORTag:
    # cbor2 5 calls tag_hook(decoder, tag); cbor2 6 calls tag_hook(tag, immutable).
    return next(a for a in args if isinstance(a, cbor2.CBORTag))


def _reject_tag(*args: Any) -> Any:
    raise MalformedFrameError(f"CBOR tag {_tag_of(args).tag} is not allowed in p2prt messages")


class _Resolve:
    """tag_hook resolving attachment references, each exactly once."""

    def __init__(self, attachments: list[Any]) -> None:
        self.attachments = attachments
        self.used = [False] * len(attachments)

    def __call__(self, *args: Any) -> Any:
        tag = _tag_of(args)
        index = tag.value
        if tag.tag != ATTACHMENT_TAG or type(index) is not int or not 0 <= index < len(self.attachments):
            raise MalformedFrameError(f"CBOR tag {tag.tag} with value {str(index)[:20]} is not a valid attachment")
        if self.used[index]:
            raise MalformedFrameError(f"attachment {index} is referenced twice")
        self.used[index] = True
        return self.attachments[index]


def decode_message(data: bytes | bytearray | memoryview, attachments: list[Any] | None = None) -> Message:
    """Decode and validate one message (with the attachments that came with its frame);
    only :class:`ProtocolError` subclasses escape."""
    fp = io.BytesIO(data)
    resolve = _Resolve(attachments) if attachments else None
    try:
        obj = cbor2.CBORDecoder(fp, tag_hook=resolve or _reject_tag).decode()
    except MalformedFrameError:
        raise
    except Exception as exc:  # cbor2 raises many types on hostile input
        if isinstance(exc.__cause__, MalformedFrameError):  # ours, from a tag hook
            raise exc.__cause__ from None
        raise MalformedFrameError(f"frame is not valid CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise MalformedFrameError(f"{len(data) - fp.tell()} stray bytes after the message")
    if resolve is not None and not all(resolve.used):
        raise MalformedFrameError(f"{resolve.used.count(False)} attachments are not referenced by the message")
    if not isinstance(obj, list) or not obj:
        raise MalformedFrameError(f"a message is a non-empty CBOR array, got {_tname(obj)}")
    tag = obj[0]
    cls = _REGISTRY.get(tag) if isinstance(tag, str) else None
    if cls is None:
        shown = repr(tag)[:40]
        raise UnknownMessageTypeError(f"unknown message type {shown}")
    try:
        result: Message = cls.from_wire(obj[1:])
    except (InvalidMessageError, MalformedFrameError):
        raise
    except RecursionError:
        raise InvalidMessageError(f"{cls.__name__}: nested too deeply") from None
    return result
