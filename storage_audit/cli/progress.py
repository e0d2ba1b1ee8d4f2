"""A rich progress display on stderr, implementing the scanner's and the digest check's progress protocols."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self

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

if TYPE_CHECKING:
    from storage_audit.scan.run import ScanOptions


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


class Reporter:
    """A command's progress on a transient stderr line; a no-op when disabled.

    It takes a scan's progress (entries read per phase) and then, for
    `check --verify-digests`, the bytes hashed out of a total, with throughput:
    one display at a time, the scan's ending where the hashing starts.
    """

    def __init__(self, console: Console, enabled: bool) -> None:
        self._console = console
        self._enabled = enabled
        self._live: Progress | None = None
        self._phases: dict[str, TaskID] = {}
        self._hashing: TaskID | None = None

    def __enter__(self) -> Self:
        # The display starts with the first update: its refresh thread would
        # otherwise keep the scan from forking its workers.
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _show(self, *columns: ProgressColumn) -> Progress:
        self._stop()
        self._live = Progress(*columns, console=self._console, transient=True)
        self._live.start()
        return self._live

    # The scan's protocol.

    def update(self, phase: str, advance: int) -> None:
        if not self._enabled:
            return
        if self._live is None or self._hashing is not None:
            self._phases, self._hashing = {}, None
            self._show(SpinnerColumn(), TextColumn("{task.description}"), EntriesColumn(), TimeElapsedColumn())
        assert self._live is not None
        task = self._phases.get(phase)
        if task is None:
            task = self._phases[phase] = self._live.add_task(f"reading {phase}", total=None)
        self._live.advance(task, advance)

    # The digest check's protocol.

    def start(self, total_bytes: int) -> None:
        if not self._enabled:
            return
        live = self._show(
            TextColumn("{task.description}"), BarColumn(), BytesColumn(), SpeedColumn(), TimeRemainingColumn()
        )
        self._hashing = live.add_task("hashing blobs", total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._live is not None and self._hashing is not None:
            self._live.advance(self._hashing, nbytes)


@contextmanager
def reading(quiet: bool, workers: int | None = None) -> Iterator[ScanOptions]:
    """A scan's options: `workers` processes (None: chosen), and the progress shown on stderr when it is a terminal."""
    from storage_audit.cli.render import err
    from storage_audit.scan.run import ScanOptions

    with Reporter(err, enabled=not quiet and err.is_terminal) as reporter:
        yield ScanOptions(progress=reporter, workers=workers or 0)
