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


def batches(frame: pd.DataFrame, rows: int | None = None, iso_times: bool = False) -> Iterator[pd.DataFrame]:
    """`frame` in slices of at most `rows` (ROWS) rows, coded columns as pandas strings; one empty slice for none.

    With `iso_times`, UTC time columns come as ISO 8601 text to the microsecond (`2026-12-01T00:00:00.000000Z`,
    as pandas writes them with `date_unit="us"`, floored), made by pyarrow: about ten times faster.
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
    nanoseconds = column.dt.as_unit("ns").array.asi8
    # Arrow's text of a time without a zone is `2026-12-01 00:00:00.000000`: a `T` for the space, and the zone.
    micro = pa.array(np.floor_divide(nanoseconds, 1000), type=pa.timestamp("us"), mask=column.isna().to_numpy())
    text = pc.replace_substring(micro.cast(pa.string()), " ", "T", max_replacements=1)
    return pd.Series(pc.binary_join_element_wise(text, "Z", ""), index=column.index, dtype=pd.StringDtype())
