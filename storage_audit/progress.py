"""Rich progress displays on stderr, implementing the scanner's and the digest check's progress protocols."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class _Display:
    """A rich Progress started and stopped as a context manager; None when disabled."""

    _progress: Progress | None

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


class RichProgress(_Display):
    """Counts items per phase on a transient stderr line; a no-op when disabled."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self._progress = (
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed:,} entries"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            if enabled
            else None
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        # The display starts with the first update: its refresh thread would
        # otherwise keep the scan from forking its workers.
        return self

    def update(self, phase: str, advance: int) -> None:
        if self._progress is None:
            return
        if not self._tasks:
            self._progress.start()
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(f"reading {phase}", total=None)
        self._progress.advance(task, advance)


class RichByteProgress(_Display):
    """Bytes read out of a total, with throughput, on a transient stderr line; a no-op when disabled."""

    def __init__(self, console: Console, enabled: bool, description: str = "hashing blobs") -> None:
        self._description = description
        self._progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if enabled
            else None
        )
        self._task: TaskID | None = None

    def start(self, total_bytes: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(self._description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, nbytes)
