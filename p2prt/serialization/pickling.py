"""Payload codec: cloudpickle with pickle protocol 5 and out-of-band buffers.

``dumps(obj)`` returns the pickle stream plus the large buffers (numpy arrays,
``pickle.PickleBuffer``-aware objects, and ``bytes`` of at least :data:`BIG_BYTES` at the
top of the value or one container down — e.g. a task's arguments) separately, so they
can be sent without being copied into the pickle. Functions and classes from the user's own modules — anything not
installed in site-packages or the standard library — are pickled *by value*
(``cloudpickle.register_pickle_by_value``), so a worker on another machine needs only
the third-party packages.
"""

from __future__ import annotations

import importlib.util
import pickle
import site
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

import cloudpickle

from ..errors import SerializationError

__all__ = ["BIG_BYTES", "dumps", "loads", "ship_by_value", "ship_user_modules", "is_user_module", "SerializationError"]

_registered: set[str] = set()


def _installed_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages())
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        roots.add(user_site)
    return tuple(str(Path(r).resolve()) for r in roots if r)


_ROOTS: tuple[str, ...] | None = None


def is_user_module(name: str) -> bool:
    """True for modules that live outside site-packages and the standard library."""
    global _ROOTS
    if name == "__main__" or name.split(".")[0] in ("p2prt", "cloudpickle"):
        return False
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file is None:
        return False  # builtin, frozen or namespace package
    if _ROOTS is None:
        _ROOTS = _installed_roots()
    path = str(Path(file).resolve())
    return not any(path.startswith(root + "/") or path == root for root in _ROOTS)


def ship_by_value(obj: Any) -> None:
    """Register the top-level package of ``obj``'s module for pickling by value when it
    is the user's own code."""
    name = getattr(obj, "__module__", None)
    if not name or name == "__main__":
        return
    top = name.split(".")[0]
    if top in _registered or not is_user_module(name):
        return
    module = sys.modules.get(top)
    if isinstance(module, types.ModuleType):
        cloudpickle.register_pickle_by_value(module)
        _registered.add(top)


_PLAIN = (int, float, str, bool, type(None))

BIG_BYTES = 1 << 20
"""``bytes`` objects at least this large are pickled out of band (see :func:`dumps`)."""


class _OutOfBand:
    """Pickles a large ``bytes`` object as an out-of-band buffer; it loads as ``bytes``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (pickle.PickleBuffer(self.data),))


def _big(x: Any) -> bool:
    return type(x) is bytes and len(x) >= BIG_BYTES


def _lift(obj: Any, depth: int = 0) -> Any:
    """``obj`` with large bytes objects (here and up to two container levels down, e.g.
    the arguments in ``(args, kwargs)``) wrapped to travel out of band."""
    t = type(obj)
    if t is bytes:
        return _OutOfBand(obj) if len(obj) >= BIG_BYTES else obj
    if depth >= 2:
        return obj
    if t is tuple or t is list:
        if len(obj) <= 64 and any(_big(x) or type(x) in (tuple, list, dict) for x in obj):
            return t(_lift(x, depth + 1) for x in obj)
    elif t is dict and len(obj) <= 64 and any(_big(x) or type(x) in (tuple, list, dict) for x in obj.values()):
        return {k: _lift(v, depth + 1) for k, v in obj.items()}
    return obj


def _plain(obj: Any, depth: int = 0) -> bool:
    """Builtin scalars in tuples/lists/dicts: the standard pickler is exact and faster."""
    t = type(obj)
    if t in _PLAIN:
        return True
    if t is bytes:
        return len(obj) < BIG_BYTES
    if depth > 3:
        return False
    if t is tuple or t is list:
        return len(obj) <= 64 and all(_plain(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= 64 and all(type(k) is str and _plain(v, depth + 1) for k, v in obj.items())
    return False


_seen_modules = 0


def ship_user_modules() -> None:
    """Register every imported user module for pickling by value (cheap when nothing new
    was imported): a task's function may use, and its arguments may be instances from,
    modules next to the script that the worker cannot import."""
    global _seen_modules
    if len(sys.modules) == _seen_modules:
        return
    for name, module in list(sys.modules.items()):
        top = name.split(".")[0]
        if top not in _registered and isinstance(module, types.ModuleType) and "." not in name:
            if is_user_module(name):
                cloudpickle.register_pickle_by_value(module)
                _registered.add(top)
    _seen_modules = len(sys.modules)


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; large buffers come back separately (protocol 5, out of band).

    Plain data (builtin scalars in small containers) goes through the standard pickler,
    several times faster than cloudpickle for the tiny arguments of typical tasks;
    everything else through cloudpickle, which ships the user's own code by value.
    """
    if _plain(obj):
        return pickle.dumps(obj, protocol=5), []
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(_lift(obj), protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(f"cannot serialize {type(obj).__name__}: {exc}") from exc
    return data, buffers


def loads(data: bytes | bytearray | memoryview, buffers: list[Any] | tuple[Any, ...] = ()) -> Any:
    """Inverse of :func:`dumps`. A missing module raises ``ModuleNotFoundError`` as is,
    so the caller can name the package."""
    return pickle.loads(data, buffers=buffers)


def missing_package(exc: BaseException) -> str | None:
    """The top-level package a ``ModuleNotFoundError`` names, if any."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        return top if importlib.util.find_spec(top) is None else exc.name
    return None
