"""A View's rows a batch at a time, with coded text made strings only for the batch being written.

The analysis hands views whose digest and name columns may hold integer codes
(`inventory/codes.py`); a format that writes every row takes them here, ROWS
at a time, so that millions of rows never become one frame of strings.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.inventory.codes import CodedDtype

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection, DuckDBPyRelation

    from storage_audit.core.view import Rows, View

ROWS = 1 << 18
"""Rows decoded and written at a time: some 50 MB of text for rows of a digest and a few numbers."""


def coded_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that hold codes rather than strings."""
    return [col for col in frame.columns if isinstance(frame[col].dtype, CodedDtype)]


def batches(frame: pd.DataFrame, rows: int | None = None, iso_times: bool = False) -> Iterator[pd.DataFrame]:
    """`frame` in slices of at most `rows` (ROWS) rows, coded columns as pandas strings; one empty slice for none.

    With `iso_times`, UTC time columns come as ISO 8601 text to the microsecond (`2026-12-01T00:00:00.000000Z`,
    as pandas writes them with `date_unit="us"`, floored), made by pyarrow: about ten times faster.
    """
    rows = rows or ROWS
    for start in range(0, max(len(frame), 1), rows):
        yield _as_text(frame.iloc[start : start + rows], iso_times)


def view_batches(view: View, rows: int | None = None, iso_times: bool = False) -> Iterator[pd.DataFrame]:
    """Every row of `view` as `batches` gives them: from its frame, or from its rows kept out of memory."""
    if view.rows is None:
        yield from batches(view.frame, rows, iso_times=iso_times)
    else:
        for part in view.rows.batches(rows or ROWS):
            yield _as_text(part, iso_times)


WRITTEN_ROWS = 1 << 14
"""Rows of an engine's answer handed to a writer at a time (DuckDB's, or Parquet's as a row group): each is written
as it comes, so fewer are held on the way (at 600,000 blobs, every orphan as CSV within 285 to 287 MiB, against
295 to 305 MiB with 65,536)."""


def rows_tables(rows: Rows, iso_times: bool = False) -> Iterator[pa.Table]:
    """Every row kept out of memory as Arrow tables, WRITTEN_ROWS at a time, UTC times as ISO text with `iso_times`
    (as `batches` makes them); one empty table for none."""
    for part in rows.arrow(WRITTEN_ROWS):
        if iso_times:
            for number, field in enumerate(part.schema):
                if pa.types.is_timestamp(field.type) and field.type.tz == "UTC":
                    part = part.set_column(number, field.name, iso_text(part.column(number)))
        yield part


def _as_text(part: pd.DataFrame, iso_times: bool) -> pd.DataFrame:
    coded = coded_columns(part)
    times = [col for col in part.columns if iso_times and _utc(part[col].dtype)]
    if not (coded or times):
        return part
    text = {col: part[col].astype(pd.StringDtype()) for col in coded}
    text |= {col: _iso(part[col]) for col in times}
    return part.assign(**text)


def _utc(dtype: object) -> bool:
    return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"


def _iso(column: pd.Series) -> pd.Series:
    nanoseconds = column.dt.as_unit("ns").array.asi8
    times = pa.array(nanoseconds, type=pa.timestamp("ns"), mask=column.isna().to_numpy())
    return pd.Series(iso_text(times), index=column.index, dtype=pd.StringDtype())


def iso_text(times: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Times (UTC, or without a zone) as ISO 8601 text to the microsecond, floored: `2026-12-01T00:00:00.000000Z`."""
    nanoseconds = times.cast(pa.int64())
    micro = pc.divide(pc.subtract(nanoseconds, pc.if_else(pc.less(nanoseconds, 0), 999, 0)), 1000)
    # Arrow's text of a time without a zone is `2026-12-01 00:00:00.000000`: a `T` for the space, and the zone.
    text = pc.replace_substring(micro.cast(pa.timestamp("us")).cast(pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")


def duckdb_present() -> bool:
    """Whether DuckDB, which writes an engine's every row, is installed."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


RowsWriter = Callable[["DuckDBPyConnection", "DuckDBPyRelation", str], None]
"""Writes the rows (a DuckDB relation, in order) to the file at the path, on the connection it is read through."""


def write_by_duckdb(rows: Rows, dest: Path | None, write: RowsWriter) -> None:
    """Every row of `rows`, times as ISO text, written by `write` through DuckDB to `dest`, or to stdout when None
    (through a temporary file). `dest` is opened first, as pandas opens a path: one that cannot be written, and
    DuckDB's own IO errors (a full disk, say), are what the command says of any file it cannot write (OSError)."""
    import duckdb

    if dest is None:
        with tempfile.TemporaryDirectory(prefix="storage-audit-rows-") as directory:
            written = Path(directory) / "rows"
            write_by_duckdb(rows, written, write)
            with open(written, encoding="utf-8", newline="") as text:
                shutil.copyfileobj(text, sys.stdout)
        return
    open(dest, "w", encoding="utf-8").close()
    tables = rows_tables(rows, iso_times=True)
    first = next(tables)
    batches = pa.RecordBatchReader.from_batches(
        first.schema, chain(first.to_batches(), (batch for table in tables for batch in table.to_batches()))
    )
    # One thread: the rows come in order from one stream, and a second thread only waits on the first.
    with duckdb.connect(config={"memory_limit": "200MB", "threads": 1}) as con:
        try:
            write(con, con.from_arrow(batches), str(dest))
        except duckdb.IOException as exc:
            raise OSError(str(exc).splitlines()[0]) from exc
