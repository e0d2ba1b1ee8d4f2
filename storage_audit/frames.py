"""Small DataFrame helpers that the analysis modules share."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def _arrow(values: pd.Series | pd.Index | Iterable[str]) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pd.Series, pd.Index)):
        return pa.array(values.astype("string"))
    return pa.array(list(values), type=pa.string())


def isin(values: pd.Series, among: pd.Series | pd.Index | Iterable[str]) -> pd.Series:
    """`values.isin(among)` for string columns, computed by pyarrow.

    pandas' own isin on Arrow-backed strings converts through Python objects
    and takes about a second per call on a registry of 60,000 blobs.
    """
    left = _arrow(values)
    right = _arrow(among)
    if isinstance(right, pa.ChunkedArray):
        right = right.combine_chunks()
    found = pc.fill_null(pc.is_in(left, value_set=right, skip_nulls=True), False)
    return pd.Series(found.to_numpy(zero_copy_only=False), index=values.index, dtype=bool)


def join_groups(frame: pd.DataFrame, key: str, value: str, sep: str = ",") -> pd.Series:
    """Per distinct `key`, its `value`s joined by `sep` in frame order (pyarrow: no Python per group)."""
    table = pa.table({key: _arrow(frame[key]), value: _arrow(frame[value]).cast(pa.string())})
    grouped = table.group_by(key, use_threads=False).aggregate([(value, "list")])
    joined = pc.binary_join(grouped[f"{value}_list"], sep)
    index = pd.Index(grouped[key].to_pandas(), name=key)
    return pd.Series(joined.to_pandas().to_numpy(), index=index, dtype="string")
