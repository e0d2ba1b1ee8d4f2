"""A View's rows a batch at a time, with coded text made strings only for the batch being written.

The analysis hands views whose digest and name columns may hold integer codes
(`inventory/codes.py`); a format that writes every row takes them here, ROWS
at a time, so that millions of rows never become one frame of strings.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.inventory.codes import CodedDtype

ROWS = 1 << 18
"""Rows decoded and written at a time: some 50 MB of text for rows of a digest and a few numbers."""


def coded_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that hold codes rather than strings."""
    return [col for col in frame.columns if isinstance(frame[col].dtype, CodedDtype)]


ISO_TIME = "%Y-%m-%dT%H:%M:%SZ"
"""A UTC time as text to the microsecond (pyarrow's %S of microseconds holds them): what the text formats write."""


def batches(frame: pd.DataFrame, rows: int | None = None, iso_times: bool = False) -> Iterator[pd.DataFrame]:
    """`frame` in slices of at most `rows` (ROWS) rows, coded columns as pandas strings; one empty slice for none.

    With `iso_times`, UTC time columns come as their ISO 8601 text to the microsecond (ISO_TIME, as pandas
    writes them with `date_unit="us"`, earlier ones floored), made by pyarrow: some thirty times faster.
    """
    rows = rows or ROWS
    coded = coded_columns(frame)
    times = [col for col in frame.columns if iso_times and _utc(frame[col].dtype)]
    for start in range(0, max(len(frame), 1), rows):
        part = frame.iloc[start : start + rows]
        if coded or times:
            text = {col: part[col].astype(pd.StringDtype()) for col in coded}
            text |= {col: _iso(part[col]) for col in times}
            part = part.assign(**text)
        yield part


def _utc(dtype: object) -> bool:
    return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"


def _iso(column: pd.Series) -> pd.Series:
    nanoseconds = column.array.asi8 if hasattr(column.array, "asi8") else column.to_numpy("int64")
    micro = pa.array(
        np.floor_divide(nanoseconds, 1000), type=pa.timestamp("us", tz="UTC"), mask=column.isna().to_numpy()
    )
    return pd.Series(pc.strftime(micro, format=ISO_TIME), index=column.index, dtype=pd.StringDtype())
