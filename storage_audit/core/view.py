"""A View: rows to output, and the hints only a table for people needs; what every answer is before it is written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


class Rows(Protocol):
    """Every row of an answer kept out of memory (an engine's, computed as it is read), read a batch at a time."""

    def __len__(self) -> int: ...

    def batches(self, rows: int) -> Iterator[pd.DataFrame]:
        """The rows in order, `rows` at a time; one empty frame for none."""
        ...

    def arrow(self, rows: int) -> Iterator[pa.Table]:
        """The rows in order as Arrow tables (text as large strings, times in UTC), `rows` at a time; one empty
        table for none."""
        ...

    def total(self, column: str) -> int:
        """The sum of an integer column over every row."""
        ...


@dataclass(frozen=True)
class View:
    """Rows to output, and the hints only a table for people needs.

    size_columns are shown humanized; optional_columns are dropped, in order,
    until a table fits the terminal; total_columns are summed in a totals row;
    duration_columns hold seconds, shown as a humanized duration; single marks
    a one-row result written as one JSON object; table_rows caps the rows a
    table shows (None: the table format's own limit). With `rows`, the frame
    holds only the first rows (at least those a table shows) and `rows` every
    row, for the formats that write them all.
    """

    frame: pd.DataFrame
    title: str = ""
    size_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()
    total_columns: tuple[str, ...] = ()
    single: bool = False
    duration_columns: tuple[str, ...] = ()
    table_rows: int | None = None
    rows: Rows | None = None

    def count(self) -> int:
        """How many rows the view has."""
        return len(self.frame) if self.rows is None else len(self.rows)

    def total(self, column: str) -> int:
        """The sum of an integer column over every row."""
        return int(self.frame[column].sum()) if self.rows is None else self.rows.total(column)
