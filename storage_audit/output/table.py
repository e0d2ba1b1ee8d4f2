"""Tables for people: rich, humanized sizes, short digests, a totals row, fitted to the terminal."""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import humanize
import pandas as pd
from rich.console import Console
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from storage_audit.core.text import printable, size
from storage_audit.core.view import View
from storage_audit.output.formats import time_columns

SHORT_DIGEST = len("sha256:") + 12
MAX_ROWS = 100
"""Rows a table shows unless asked for more: a few screens, largest first. Rendering costs ~1 ms a row."""


def _size(value: object) -> str:
    return "" if pd.isna(value) else size(int(value))  # type: ignore[call-overload]


def _duration(value: object) -> str:
    return "" if pd.isna(value) else humanize.naturaldelta(timedelta(seconds=int(value)))  # type: ignore[call-overload]


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or (not isinstance(value, list | tuple) and pd.isna(value)):
        return ""
    if isinstance(value, str) and value.startswith("sha") and ":" in value and len(value) > SHORT_DIGEST:
        return value[:SHORT_DIGEST]
    return printable(str(value), keep="\n")


def cells(view: View) -> pd.DataFrame:
    """The frame as strings for people: sizes and durations humanized, digests shortened, times to the minute.

    Names come from the storage: control characters are escaped here, and the
    cells reach rich as Text, never as markup.
    """
    frame = view.frame
    out = pd.DataFrame(index=frame.index)
    times = set(time_columns(frame))
    for col in frame.columns:
        if col in view.size_columns:
            out[col] = frame[col].map(_size)
        elif col in view.duration_columns:
            out[col] = frame[col].map(_duration)
        elif col in times:
            out[col] = frame[col].dt.strftime("%Y-%m-%d %H:%M").fillna("")
        else:
            out[col] = frame[col].map(_cell)
    return out


def _totals(view: View, columns: list[str]) -> list[str]:
    row = []
    for i, col in enumerate(columns):
        if col in view.total_columns:
            total = view.total(col)
            row.append(_size(total) if col in view.size_columns else f"{total:,}")
        else:
            row.append(f"total ({view.count():,})" if i == 0 else "")
    return row


def _natural(table_cells: pd.DataFrame, col: str, total: str) -> int:
    """The width column `col` takes with each cell on its lines as they are."""
    lines = table_cells[col].str.split("\n").explode().str.len() if len(table_cells) else pd.Series([0])
    return max(len(col), int(lines.max()), len(total))


def _width(table_cells: pd.DataFrame, columns: list[str], totals: list[str]) -> int:
    """The width the table takes with every cell on its lines as they are."""
    return _framed([_natural(table_cells, col, total) for col, total in zip(columns, totals, strict=True)])


def _framed(widths: list[int]) -> int:
    # A space either side of each cell, a rule between cells and at either edge.
    return sum(widths) + 3 * len(widths) + 1


def _allot(least: list[int], natural: list[int], width: int) -> list[int]:
    """Column widths for a table `width` wide: each column its least, then the room left shared out in
    proportion to how much more each would take, none past its natural width."""
    room = max(0, width - _framed(least))
    lacking = [n - m for m, n in zip(least, natural, strict=True)]
    wanted = sum(lacking)
    if wanted <= room:
        return natural
    return [m + room * lack // wanted for m, lack in zip(least, lacking, strict=True)]


@dataclass(frozen=True)
class Shown:
    """How a table came out: its width, and the columns it left out to fit the width it was given."""

    width: int
    left_out: tuple[str, ...] = ()
    given: int | None = None


def render(view: View, console: Console, width: int | None = None, fit: bool = False) -> Shown:
    """Print `view` as a table on `console`, `width` columns wide (None: as wide as its longest cells).

    Cells too wide wrap; a header never does, and the table grows past `width` before one would. With `fit`,
    the view's optional columns are left out first, least needed first, until the table fits `width`.
    """
    # A table is for reading: past its row limit it shows the first rows (the views come
    # largest first), says how many it left out, and keeps totals over all rows.
    shown = view.frame.head(view.table_rows or MAX_ROWS)
    table_cells = cells(replace(view, frame=shown))
    columns = list(table_cells.columns)
    left_out = []
    if fit and width is not None:
        for drop in view.optional_columns:
            if _width(table_cells, columns, _totals(view, columns)) <= width:
                break
            if drop in columns:
                columns.remove(drop)
                left_out.append(drop)
    totals = _totals(view, columns)
    natural = [_natural(table_cells, col, total) for col, total in zip(columns, totals, strict=True)]
    # The least a column takes: its header and its total whole, its cells wrapped to that.
    least = [max(len(col), len(total)) for col, total in zip(columns, totals, strict=True)]
    widths = natural if width is None else _allot(least, natural, width)
    hidden = view.count() - len(shown)
    caption = f"first {len(shown):,} of {view.count():,} rows; --format csv or json for all" if hidden else None
    table = Table(title=view.title or None, caption=caption, show_footer=bool(view.total_columns))
    for col, total, column_width in zip(columns, totals, widths, strict=True):
        numeric = col in view.size_columns or pd.api.types.is_numeric_dtype(view.frame[col].dtype)
        table.add_column(col, footer=total, justify="right" if numeric else "left", overflow="fold", width=column_width)
    for row in table_cells[columns].itertuples(index=False):
        table.add_row(*(Text(cell) for cell in row))
    # Laid out at its own width, not the console's, and not cropped: a table wider than a terminal (whose
    # headers would not fit it) wraps there, whole, rather than lose its headers' ends.
    console.print(Segments(console.render(table, console.options.update_width(_framed(widths)))), crop=False)
    return Shown(_framed(widths), tuple(left_out), width)


def columns_wanted() -> int | None:
    """The width COLUMNS asks for, when it holds a positive number."""
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


class _Stdout(Console):
    """A console on stdout that leaves a reader that went away to its caller: rich's own exits the process."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def show(view: View, dest: Path | None, wide: bool = False) -> Shown:
    """Write `view` as a table to `dest`, or to stdout, and say how it came out.

    The table takes COLUMNS when it is set, else on a terminal the terminal's width: to fit it, cells wrap and,
    unless `wide`, the view's optional columns are left out (`Shown.left_out`). Piped or written to a file with
    COLUMNS unset, it keeps every column, each as wide as its longest cell.
    """
    if dest is not None:
        with open(dest, "w", encoding="utf-8") as fh:
            return render(view, Console(file=fh, no_color=True, width=1 << 16), columns_wanted(), fit=not wide)
    terminal = sys.stdout.isatty()
    console = _Stdout(file=sys.stdout, width=None if terminal else 1 << 16)
    width = console.width if terminal else columns_wanted()
    return render(view, console, width, fit=not wide)


def write(view: View, dest: Path | None) -> None:
    """Write `view` as a table to `dest`, or to stdout (`show`, as the format writer every format has)."""
    show(view, dest)
