"""Tables for people: rich, humanized sizes, short digests, a totals row, fitted to the terminal."""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import humanize
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from storage_audit.core.text import printable, size
from storage_audit.core.view import View
from storage_audit.output.formats import time_columns

SHORT_DIGEST = len("sha256:") + 12
MIN_WIDTH = 80
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
            total = int(view.frame[col].sum())
            row.append(_size(total) if col in view.size_columns else f"{total:,}")
        else:
            row.append(f"total ({len(view.frame):,})" if i == 0 else "")
    return row


def _width(table_cells: pd.DataFrame, columns: list[str], totals: list[str]) -> int:
    widths = []
    for i, col in enumerate(columns):
        values = table_cells[col].str.len() if len(table_cells) else pd.Series([0])
        widths.append(max(len(col), int(values.max()), len(totals[i])))
    return sum(widths) + 3 * len(columns) + 1


def render(view: View, console: Console) -> None:
    # A table is for reading: past its row limit it shows the first rows (the views come
    # largest first), says how many it left out, and keeps totals over all rows.
    shown = view.frame.head(view.table_rows or MAX_ROWS)
    table_cells = cells(replace(view, frame=shown))
    columns = list(table_cells.columns)
    for drop in view.optional_columns:
        if _width(table_cells, columns, _totals(view, columns)) <= console.width:
            break
        if drop in columns:
            columns.remove(drop)
    hidden = len(view.frame) - len(shown)
    caption = f"first {len(shown):,} of {len(view.frame):,} rows; --format csv or json for all" if hidden else None
    table = Table(title=view.title or None, caption=caption, show_footer=bool(view.total_columns))
    totals = _totals(view, columns)
    for col, total in zip(columns, totals, strict=True):
        numeric = col in view.size_columns or pd.api.types.is_numeric_dtype(view.frame[col].dtype)
        table.add_column(col, footer=total, justify="right" if numeric else "left", overflow="fold")
    for row in table_cells[columns].itertuples(index=False):
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


class _Stdout(Console):
    """A console on stdout that leaves a reader that went away to its caller: rich's own exits the process."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def write(view: View, dest: Path | None) -> None:
    if dest is None:
        render(view, _Stdout(file=sys.stdout, width=None if sys.stdout.isatty() else MIN_WIDTH))
        return
    with open(dest, "w", encoding="utf-8") as fh:
        render(view, Console(file=fh, width=MIN_WIDTH, no_color=True))
