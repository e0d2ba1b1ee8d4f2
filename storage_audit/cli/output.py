"""Results to stdout or to `-o FILE`, opened only once the work succeeded; a reader that leaves ends the command.

A reader that closes the pipe before the output ends (`| head -1`) ends the
command quietly with EXIT_CLOSED_PIPE, as a shell reports a process killed by
SIGPIPE, whatever the format: no message, and no traceback from the last flush.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from storage_audit.analysis.options import Format
from storage_audit.cli.options import fail
from storage_audit.core.errors import EXIT_CLOSED_PIPE

if TYPE_CHECKING:
    from storage_audit.core.view import View


def emit(view: View, fmt: Format, output: Path | None, wide: bool = False) -> None:
    """Write a result to `output`, or to stdout when None; a table for people says on stderr which of its columns
    it left out to fit the terminal, and how to see them."""
    from storage_audit.output.formats import write

    with _writing(output):
        if fmt is not Format.TABLE:
            write(view, fmt, output)
            return
        from storage_audit.output.table import show

        shown = show(view, output, wide)
    if shown.left_out:
        from storage_audit.cli.render import say

        say(
            f"storage-audit: the table leaves out {', '.join(shown.left_out)} to fit {shown.given} columns; "
            "--wide (-w) keeps every column"
        )


def emit_tables(views: list[View], output: Path | None, wide: bool = False) -> None:
    """Write tables one after another, to stdout or to one file."""
    from rich.console import Console

    from storage_audit.output.table import columns_wanted
    from storage_audit.output.table import render as render_table

    if output is None:
        for view in views:
            emit(view, Format.TABLE, None, wide)
        return
    with _writing(output), open(output, "w", encoding="utf-8") as fh:
        console = Console(file=fh, width=1 << 16, no_color=True)
        for view in views:
            render_table(view, console, columns_wanted(), fit=not wide)


def emit_text(text: str, output: Path | None) -> None:
    """Write text as it is, to `output` or to stdout."""
    with _writing(output):
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")


@contextmanager
def _writing(output: Path | None) -> Iterator[None]:
    """Refuse, in one line, a file that cannot be written; a reader of stdout that left is `closed_pipe`'s."""
    try:
        yield
    except OSError as exc:
        if closed_pipe(exc):
            raise
        fail(f"{output or 'stdout'}: cannot write: {exc.strerror or exc}")


def closed_pipe(exc: BaseException) -> bool:
    """Whether `exc` says that the reader of stdout went away."""
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


def end_on_closed_pipe() -> NoReturn:
    """End the command as a reader that went away leaves it: quietly, with EXIT_CLOSED_PIPE.

    What stdout still buffers goes to /dev/null, where the flush at exit cannot fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # a stdout that is no file (a test's), which no flush at exit writes
    raise typer.Exit(EXIT_CLOSED_PIPE)


def buffered_stdout() -> None:
    """Give stdout a buffer when PYTHONUNBUFFERED took it away.

    Unbuffered, a large write to a pipe whose reader left writes part of its
    text and loses the rest without an error: the closed pipe goes unnoticed.
    A buffered writer writes on until all is written, or the pipe says EPIPE.
    """
    stdout = sys.stdout
    if not isinstance(stdout, io.TextIOWrapper) or not isinstance(stdout.buffer, io.RawIOBase):
        return
    raw = io.FileIO(stdout.fileno(), "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw), encoding=stdout.encoding, errors=stdout.errors, line_buffering=stdout.line_buffering
    )
