"""Small DataFrame helpers that the analysis modules share."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

HASHED = 1 << 17
"""How many values `positions` hashes at a time: Arrow's hash table of 600,000 digests takes some 160 MB."""


_STRINGS = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}


def _arrow(values: pd.Series | pd.Index | Iterable[str]) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pd.Series, pd.Index)):
        return pa.array(values.astype("string"))
    return pa.array(list(values), type=pa.string())


def positions(values: pd.Series | pd.Index | Iterable[str], among: pd.Series | pd.Index | Iterable[str]) -> np.ndarray:
    """For each of `values`, the position of its first occurrence in `among`; -1 when absent (or null).

    Computed by pyarrow, which hashes `among`: only the part that `values` hold
    when they are few, and HASHED values at a time.
    """
    left = _arrow(values)
    right = _arrow(among)
    rows = None
    if len(left) < len(right) and len(left) <= HASHED:
        held = pc.is_in(right, value_set=pc.unique(left))
        rows = np.append(np.flatnonzero(np.asarray(held)), -1)
        right = right.filter(held)
    found = np.full(len(left), -1, dtype=np.int64)
    for start in range(0, len(right), HASHED):
        part = right.slice(start, HASHED)
        if isinstance(part, pa.ChunkedArray):
            part = part.combine_chunks()
        at = pc.fill_null(pc.index_in(left, value_set=part, skip_nulls=True), -1).to_numpy()
        new = (found < 0) & (at >= 0)
        found[new] = at[new] + start
    return rows[found] if rows is not None else found


def pick(column: pd.Series, rows: np.ndarray, index: pd.Index | None = None) -> pd.Series:
    """The values of a string `column` at positions `rows` (-1: null), as a Series of its dtype."""
    taken = pc.take(pa.array(column), pa.array(rows, mask=rows < 0))
    return pd.Series(taken, dtype=column.dtype, index=index)


def isin(values: pd.Series, among: pd.Series | pd.Index | Iterable[str]) -> pd.Series:
    """`values.isin(among)` for string columns, computed by pyarrow.

    pandas' own isin on Arrow-backed strings converts through Python objects
    and takes about a second per call on a registry of 60,000 blobs.
    """
    return pd.Series(positions(values, among) >= 0, index=values.index, dtype=bool)


def sorted_rows(frame: pd.DataFrame, keys: list[tuple[str, str]]) -> pd.DataFrame:
    """`frame` sorted by (column, "ascending" or "descending") keys, stably, nulls last, by pyarrow, on a new index.

    pandas sorts strings by factorizing them first: a copy of every distinct value, over 100 MB of digests.
    """
    columns = {name: pa.array(frame[name]) for name, _ in keys}
    order = pc.sort_indices(pa.table(columns), sort_keys=keys)
    return frame.take(order.to_numpy()).reset_index(drop=True)


def join_groups(frame: pd.DataFrame, key: str, value: str, sep: str = ",") -> pd.Series:
    """Per distinct `key` (text or integer), its `value`s joined by `sep` in frame order, by pyarrow."""
    keys = frame[key]
    by = pa.array(keys) if pd.api.types.is_integer_dtype(keys) else _arrow(keys)
    table = pa.table({key: by, value: _arrow(frame[value]).cast(pa.string())})
    grouped = table.group_by(key, use_threads=False).aggregate([(value, "list")])
    joined = pc.binary_join(grouped[f"{value}_list"], sep)
    index = pd.Index(grouped[key].to_pandas(types_mapper=_STRINGS.get), name=key)
    return pd.Series(joined, index=index, dtype="string")
