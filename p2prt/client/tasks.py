"""Task records and options: plain data shared by the client runtime's parts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..wire.messages import Buffer

__all__ = ["TaskOptions", "Task", "Shape", "Inline"]

Shape = tuple[int, tuple[tuple[str, float], ...]]


@dataclass(frozen=True)
class TaskOptions:
    """Options of ``@p2prt.remote`` / ``.options()`` (Ray's names and defaults)."""

    num_cpus: int = 1
    resources: Mapping[str, float] | None = None
    max_retries: int = 3
    retry_exceptions: bool = False
    timeout: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_cpus, int) or self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be a positive integer, got {self.num_cpus!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < -1:
            raise ConfigError(f"max_retries must be an integer >= -1 (-1: retry forever), got {self.max_retries!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        for key, value in (self.resources or {}).items():
            if not isinstance(key, str) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"resources must map names to non-negative numbers, got {key!r}: {value!r}")

    @property
    def shape(self) -> Shape:
        return (self.num_cpus, tuple(sorted((k, float(v)) for k, v in (self.resources or {}).items())))

    def retries_left(self, attempts: int) -> bool:
        return self.max_retries < 0 or attempts <= self.max_retries


@dataclass(eq=False)
class Task:
    task_id: int
    object_id: bytes
    fn_id: bytes
    fn_payload: bytes
    name: str
    options: TaskOptions
    args: Buffer | None
    buffers: list[Buffer]
    raw: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    deps: list[bytes] = field(default_factory=list)
    attempts: int = 0
    lease_id: str | None = None
    cancelled: bool = False
    crashes_in_a_row: int = 0
    nested_waits: int = 0  # nested gets it is waiting on (its slot is lent out meanwhile)
    fetch: list[Any] = field(default_factory=list)  # pm.HeldArg of held arguments


class Inline:
    """A resolved top-level argument: unpickles as the value itself on the worker."""

    __slots__ = ("buffers", "data")

    def __init__(self, data: Buffer, buffers: list[Buffer]) -> None:
        self.data = data
        self.buffers = buffers

    def __reduce__(self) -> tuple[Any, ...]:
        import pickle

        from ..serialization import loads
        from .objects import readable as _readable

        # Buffers stay out of band in the enclosing pickle (protocol 5).
        data = self.data if type(self.data) is bytes else pickle.PickleBuffer(_readable(self.data))
        return (loads, (data, [pickle.PickleBuffer(_readable(b)) for b in self.buffers]))

