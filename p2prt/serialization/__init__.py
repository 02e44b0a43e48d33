"""Serialization: task payloads (cloudpickle, protocol 5, out-of-band buffers).

Control messages use CBOR through :mod:`p2prt.wire.messages`.
"""

from .pickling import (
    SerializationError,
    dumps,
    is_user_module,
    loads,
    missing_package,
    ship_by_value,
    ship_user_modules,
)

__all__ = [
    "SerializationError",
    "dumps",
    "is_user_module",
    "loads",
    "missing_package",
    "ship_by_value",
    "ship_user_modules",
]
