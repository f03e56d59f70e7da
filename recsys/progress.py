"""Progress bars for long work (rich), shared by every pipeline.

Library code calls `track(...)` or `bar(...)`; they draw on stderr and stay quiet when
`RECSYS_PROGRESS=0` (tests, logs to files).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("RECSYS_PROGRESS", "1") != "0"


def _progress(unit: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
        disable=not enabled(),
    )


class Bar:
    """A progress bar you advance by hand; shows throughput in `unit`/s and a status text."""

    def __init__(self, progress: Progress, task: int, unit: str):
        import time

        self._p, self._task, self._unit = progress, task, unit
        self._start = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1, status: str = "") -> None:
        import time

        self.done += n
        rate = self.done / max(time.perf_counter() - self._start, 1e-9)
        self._p.update(self._task, advance=n, rate=f"{rate:,.0f} {self._unit}/s", status=status)


@contextmanager
def bar(description: str, total: int | None, unit: str = "it") -> Iterator[Bar]:
    with _progress(unit) as p:
        task = p.add_task(description, total=total, rate="", status="")
        yield Bar(p, task, unit)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total, unit) as b:
        for item in items:
            yield item
            b.advance()
