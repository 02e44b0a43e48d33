"""Progress bars (tqdm) for ``get(..., progress=True)`` and ``Executor.map(..., progress=True)``.

tqdm is imported only when a bar is shown. ``progress`` is ``True`` (a bar without a
label), a string (the bar's label), or false (no bar).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["ProgressBar", "track"]


class ProgressBar:
    """A tqdm bar that any thread may advance (done-callbacks run in other threads)."""

    def __init__(self, total: int, progress: bool | str, file: IO[str] | None = None) -> None:
        from tqdm import tqdm

        desc = progress if isinstance(progress, str) else None
        self._bar: Any = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True, file=file)
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(futures: Iterable[concurrent.futures.Future[Any]], progress: bool | str, timeout: float | None) -> None:
    """Show a bar that advances as ``futures`` complete; returns when all are done.
    ``concurrent.futures.TimeoutError`` after ``timeout`` seconds."""
    pending = set(futures)
    with ProgressBar(len(pending), progress) as bar:
        for _ in concurrent.futures.as_completed(pending, timeout=timeout):
            bar.advance()
