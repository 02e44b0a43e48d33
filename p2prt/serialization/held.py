"""Held arguments: references the owner pickles, values the executor looks up.

A task argument that another worker holds is pickled by its owner as a reference
(:class:`HeldRef`); the worker running the task fetches the value and hands it to the
executor with the task, and unpickling the arguments looks it up here.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["HeldRef", "held_value", "values"]

values: dict[bytes, tuple[Any, list[Any]]] = {}
"""object id -> (data, buffers) of the held arguments of the task being unpickled."""


def held_value(object_id: bytes) -> Any:
    try:
        data, buffers = values[object_id]
    except KeyError:
        raise pickle.UnpicklingError(f"held value {object_id.hex()} was not fetched for this task") from None
    return pickle.loads(data, buffers=buffers)


class HeldRef:
    """Pickles as "the held value with this id" (used by the owner)."""

    __slots__ = ("object_id",)

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (held_value, (self.object_id,))
