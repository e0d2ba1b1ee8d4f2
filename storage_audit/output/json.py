"""JSON: an array of row objects, one to a line (one object for a single-row view), raw integers, ISO 8601 UTC times.

The array is `[`, each row's object on a line of its own after a tab, the lines joined by commas, and `]` (`[]`
for none); text is UTF-8 as it is. Every row of an answer kept out of memory (an engine's) goes through DuckDB's
JSON writer when DuckDB is installed, which writes that layout, some twice as fast as pandas; the rest are written
by pandas a batch of rows at a time, each batch as JSON Lines made into lines of the array. One difference: a
control character without a short escape (not \\b \\f \\n \\r \\t) is `\\u001f` from pandas and `\\u001F` from
DuckDB; both read back as the same text.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pandas as pd

from storage_audit.core.view import View
from storage_audit.output.batches import ROWS, batches, duckdb_present, view_batches, write_by_duckdb

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection, DuckDBPyRelation

# pandas escapes every `/` as `\/`, and a backslash of the text as `\\`: the `\/` the text left to right holds
# are those escapes (the other backslashes come in pairs followed by anything but `/`), and read as `/`.
_ESCAPED_SLASH = "\\/"
_FIRST, _NEXT, _CLOSE = "[\n\t", ",\n\t", "\n]"
JSON_ROWS = ROWS // 4
"""Rows written at a time: a batch's text is copied three times on its way out (some 15 MB each)."""


def _object(row: pd.Series) -> str:
    """One row as an object, its fields on lines of their own."""
    text = row.to_json(date_format="iso", date_unit="us", indent=2)
    return text.replace(_ESCAPED_SLASH, "/")


def _lines(part: pd.DataFrame) -> str:
    """The rows of `part` as the array's lines, joined by its separator (no row's text holds a line break)."""
    text = part.to_json(orient="records", lines=True, force_ascii=False, date_format="iso", date_unit="us")
    return text.replace(_ESCAPED_SLASH, "/").rstrip("\n").replace("\n", _NEXT)


def _array(view: View) -> Iterator[str]:
    """The text of the array of `view`'s rows, in pieces."""
    first = True
    for part in view_batches(view, JSON_ROWS, iso_times=True):
        if part.empty:
            continue
        yield (_FIRST if first else _NEXT) + _lines(part)
        first = False
    yield "[]" if first else _CLOSE


def _write(view: View, out: TextIO) -> None:
    if view.single:
        (row,) = batches(view.frame.iloc[:1])
        # As objects, a row of ints and floats keeps its ints (a plain row Series upcasts them to float).
        out.write(_object(row.astype(object).iloc[0]))
    else:
        for piece in _array(view):
            out.write(piece)
    out.write("\n")


def _write_rows(con: DuckDBPyConnection, rows: DuckDBPyRelation, dest: str) -> None:
    """The rows to `dest` as `_write` writes them (DuckDB writes the same array but for no rows)."""
    from storage_audit.analysis.engine import sql_text

    rows.create_view("answer_rows")
    con.execute(f"COPY answer_rows TO {sql_text(dest)} (FORMAT json, ARRAY true)")


def write(view: View, dest: Path | None) -> None:
    # The frame holds an answer's first rows: when it has none, there are none.
    if view.rows is not None and not view.single and not view.frame.empty and duckdb_present():
        write_by_duckdb(view.rows, dest, _write_rows)
    elif dest is None:
        _write(view, sys.stdout)
    else:
        with open(dest, "w", encoding="utf-8") as out:
            _write(view, out)
