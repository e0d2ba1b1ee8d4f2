"""Rich progress displays on stderr, implementing the scanner's and the digest check's progress protocols."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from storage_audit.core.text import count, size


class EntriesColumn(ProgressColumn):
    """`1 entry`, `12,345 entries`."""

    def render(self, task: Task) -> Text:
        return Text(count(int(task.completed), "entry", "entries"))


class BytesColumn(ProgressColumn):
    """`1.2 GiB / 3.4 GiB`, in the binary units of every other size the tool shows."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else size(task.total)
        return Text(f"{size(task.completed)} / {total}", style="progress.download")


class SpeedColumn(ProgressColumn):
    """`85.3 MiB/s`: binary units, as the sizes beside it (rich's own speed column is decimal)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{size(speed)}/s", style="progress.data.speed")


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
                EntriesColumn(),
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
                BytesColumn(),
                SpeedColumn(),
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
