"""Results to stdout or to `-o FILE`, opened only once the work succeeded."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from storage_audit.analysis.options import Format
from storage_audit.cli.options import fail

if TYPE_CHECKING:
    from storage_audit.output.formats import View


def emit(view: View, fmt: Format, output: Path | None) -> None:
    """Write a result to `output`, or to stdout when None."""
    from storage_audit.output.formats import write

    with _writing(output):
        write(view, fmt, output)


def emit_tables(views: list[View], output: Path | None) -> None:
    """Write tables one after another, to stdout or to one file."""
    from rich.console import Console

    from storage_audit.output.table import MIN_WIDTH
    from storage_audit.output.table import render as render_table

    if output is None:
        for view in views:
            emit(view, Format.TABLE, None)
        return
    with _writing(output), open(output, "w", encoding="utf-8") as fh:
        console = Console(file=fh, width=MIN_WIDTH, no_color=True)
        for view in views:
            render_table(view, console)


def emit_text(text: str, output: Path | None) -> None:
    """Write text as it is, to `output` or to stdout."""
    with _writing(output):
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")


@contextmanager
def _writing(output: Path | None) -> Iterator[None]:
    """Refuse, in one line, a file that cannot be written."""
    try:
        yield
    except OSError as exc:
        fail(f"{output}: cannot write: {exc.strerror or exc}")
