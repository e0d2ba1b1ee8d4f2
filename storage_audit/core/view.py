"""A View: rows to output, and the hints only a table for people needs; what every answer is before it is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class View:
    """Rows to output, and the hints only a table for people needs.

    size_columns are shown humanized; optional_columns are dropped, in order,
    until a table fits the terminal; total_columns are summed in a totals row;
    duration_columns hold seconds, shown as a humanized duration; single marks
    a one-row result written as one JSON object; table_rows caps the rows a
    table shows (None: the table format's own limit).
    """

    frame: pd.DataFrame
    title: str = ""
    size_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()
    total_columns: tuple[str, ...] = ()
    single: bool = False
    duration_columns: tuple[str, ...] = ()
    table_rows: int | None = None
