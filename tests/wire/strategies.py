"""Hypothesis strategies for the wire vocabulary, derived from the message types themselves.

:func:`strategy_for` builds values of any field type (and so of any message or record);
:data:`MESSAGE_TYPES` lists every registered message type, with every module of
:mod:`p2prt.wire` imported first. A field type outside the vocabulary makes
:func:`strategy_for` fail loudly, naming it. Shared by the tests in this folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from typing import Any

from hypothesis import strategies as st

import p2prt.wire
from p2prt.wire.messages import INT_MAX, INT_MIN, Buffer, Record, message_types

__all__ = ["FLOATS", "MESSAGE_TYPES", "PLAIN", "WIRE_INT", "field_types", "is_optional", "optional_inner", "strategy_for"]

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
