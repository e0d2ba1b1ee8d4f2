"""A View's rows a batch at a time, with coded text made strings only for the batch being written.

The analysis hands views whose digest and name columns may hold integer codes
(`inventory/codes.py`); a format that writes every row takes them here, ROWS
at a time, so that millions of rows never become one frame of strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.inventory.codes import CodedDtype

if TYPE_CHECKING:
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


def rows_tables(rows: Rows, iso_times: bool = False) -> Iterator[pa.Table]:
    """Every row kept out of memory as Arrow tables, ROWS at a time, UTC times as ISO text with `iso_times` (as
    `batches` makes them); one empty table for none."""
    for part in rows.arrow(ROWS):
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
