"""Hypothesis strategies for the wire vocabulary, derived from the message types themselves.

:func:`strategy_for` builds values of any field type (and so of any message or record);
:data:`MESSAGE_TYPES` lists every registered message type, with every module of
:mod:`p2prt.wire` imported first. A field type outside the vocabulary makes
:func:`strategy_for` fail loudly, naming it. Shared by the tests in this folder.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Any

import cbor2
from hypothesis import strategies as st

import p2prt.wire
from p2prt.wire.messages import ATTACHMENT_TAG, INT_MAX, INT_MIN, Buffer, Record, message_types

__all__ = [
    "ANY_CBOR",
    "FLOATS",
    "MESSAGE_TYPES",
    "PLAIN",
    "WIRE_INT",
    "chunked",
    "field_types",
    "is_optional",
    "mutated",
    "optional_inner",
    "reshaped",
    "strategy_for",
]

# Register every message type the wire package defines, wherever it lives.
for _info in pkgutil.iter_modules(p2prt.wire.__path__):
    importlib.import_module(f"p2prt.wire.{_info.name}")

MESSAGE_TYPES = sorted(message_types().values(), key=lambda cls: cls.TAG)

WIRE_INT = st.integers(min_value=INT_MIN, max_value=INT_MAX)  # the integers a field accepts
FLOATS = st.floats(allow_nan=False)  # NaN != NaN would break equality, not the codec


# -- strategies from field types ------------------------------------------------------

PLAIN: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | WIRE_INT | FLOATS | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8) | WIRE_INT, children, max_size=4)
    ),
    max_leaves=12,
)
"""Values for ``Any`` fields: plain CBOR data."""


def is_optional(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args


def optional_inner(tp: Any) -> Any:
    return next(a for a in typing.get_args(tp) if a is not type(None))


def field_types(cls: type[Record]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the wire vocabulary type ``tp``."""
    if tp is bool:
        return st.booleans()
    if tp is int:
        return WIRE_INT
    if tp is float:
        return FLOATS
    if tp is str:
        return st.text(max_size=40)
    if tp is bytes:
        return st.binary(max_size=40)
    if tp == Buffer:
        return st.binary(max_size=40) | st.binary(max_size=40).map(bytearray) | st.binary(max_size=40).map(memoryview)
    if tp is Any:
        return PLAIN
    if isinstance(tp, type) and issubclass(tp, Record):
        return st.builds(tp, **{f.name: strategy_for(t) for f, t in field_types(tp)})
    if is_optional(tp):
        return st.none() | strategy_for(optional_inner(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and len(args) == 1:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict and len(args) == 2 and args[0] is str:
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=4)
    raise TypeError(f"strategy_for has no strategy for field type {tp!r}; extend it with the wire vocabulary")


# -- hostile input -------------------------------------------------------------------

_TAGS = st.sampled_from([0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 36, 37, 256, 258, 260, 261, 55799, ATTACHMENT_TAG])

ANY_CBOR: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.just(cbor2.undefined)
    | st.integers(min_value=0, max_value=19).map(cbor2.CBORSimpleValue),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers() | st.binary(max_size=4), children, max_size=3)
        | st.builds(cbor2.CBORTag, _TAGS | st.integers(min_value=6, max_value=2**64 - 1), children)
    ),
    max_leaves=12,
)
"""Any CBOR data item, including tags (semantic ones too), ``undefined`` and simple values."""


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], max_edits: int = 4) -> bytes:
    """Bytes from ``base`` with 1..``max_edits`` edits: bit flips, overwritten, inserted,
    deleted or repeated bytes, truncation, extension."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(min_value=1, max_value=max_edits))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend", "repeat"]))
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x1B, 0x5B, 0x9B, 0xBB, 0xC0, 0xD8, 0xF7, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            end = draw(st.integers(min_value=pos, max_value=len(data)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    elif isinstance(value, dict):
        for k, item in value.items():
            out += _paths(item, (*path, k))
    return out


@st.composite
def reshaped(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A CBOR structure from ``base`` (lists and maps, as ``cbor2.loads`` gives them) with
    one node replaced by arbitrary CBOR, removed from its container, wrapped in a list,
    or given a sibling."""
    value = copy.deepcopy(draw(base))
    path = draw(st.sampled_from(_paths(value)))
    op = draw(st.sampled_from(["replace", "remove", "wrap", "append"]))
    if not path:
        return draw(ANY_CBOR) if op == "replace" else [value] if op == "wrap" else value
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if op == "replace":
        parent[key] = draw(ANY_CBOR)
    elif op == "remove":
        del parent[key]
    elif op == "wrap":
        parent[key] = [parent[key]]
    elif isinstance(parent, list):
        parent.insert(key, draw(ANY_CBOR))
    else:
        parent[draw(st.text(max_size=5))] = draw(ANY_CBOR)
    return value


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (any order, out of range clamped; empty chunks kept)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    out, pos = [], 0
    for cut in [*points, len(data)]:
        out.append(data[pos:cut])
        pos = cut
    return out
