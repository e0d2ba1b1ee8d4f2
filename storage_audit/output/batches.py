"""A View's rows a batch at a time, with coded text made strings only for the batch being written.

The analysis hands views whose digest and name columns may hold integer codes
(`inventory/codes.py`); a format that writes every row takes them here, ROWS
at a time, so that millions of rows never become one frame of strings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from storage_audit.inventory.codes import CodedDtype

ROWS = 1 << 18
"""Rows decoded and written at a time: some 50 MB of text for rows of a digest and a few numbers."""


def coded_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that hold codes rather than strings."""
    return [col for col in frame.columns if isinstance(frame[col].dtype, CodedDtype)]


def batches(frame: pd.DataFrame, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """`frame` in slices of at most `rows` (ROWS) rows, coded columns as pandas strings; one empty slice for none."""
    rows = rows or ROWS
    coded = coded_columns(frame)
    for start in range(0, max(len(frame), 1), rows):
        part = frame.iloc[start : start + rows]
        if coded:
            part = part.assign(**{col: part[col].astype(pd.StringDtype()) for col in coded})
        yield part
