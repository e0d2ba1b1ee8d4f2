"""Small DataFrame helpers that the analysis modules share."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage_audit.inventory.codes import CODE, CodedArray

HASHED = 1 << 17
"""How many values `positions` hashes at a time: Arrow's hash table of 600,000 digests takes some 160 MB."""


_STRINGS = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}


def _arrow(values: pd.Series | pd.Index | Iterable[str]) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pd.Series, pd.Index)):
        return pa.array(values.astype("string"))
    return pa.array(list(values), type=pa.string())


def positions(values: pd.Series | pd.Index | Iterable[str], among: pd.Series | pd.Index | Iterable[str]) -> np.ndarray:
    """For each of `values`, the position of its first occurrence in `among`; -1 when absent (or null).

    Columns coded against one dictionary meet on their codes. Else pyarrow hashes `among`: only the
    part that `values` hold when they are few, else one part of it at a time, HASHED values or so.
    """
    coded = _coded(values, among)
    if coded is not None:
        left_codes, right_codes, size = coded
        first = np.full(size + 1, np.iinfo(np.int64).max, dtype=np.int64)
        valid = right_codes >= 0
        np.minimum.at(first, right_codes[valid], np.flatnonzero(valid))
        first[first == np.iinfo(np.int64).max] = -1
        return first[np.where(left_codes >= 0, left_codes, size)]
    left = _arrow(values)
    right = _arrow(among)
    rows = None
    if len(left) < len(right) and len(left) <= HASHED:
        held = pc.is_in(right, value_set=pc.unique(left))
        rows = np.append(np.flatnonzero(np.asarray(held)), -1)
        right = right.filter(held)
    found = _partitioned(left, right) if len(right) > HASHED else _index_in(left, right)
    return rows[found] if rows is not None else found


def _array(values: pd.Series | pd.Index | Iterable[str]) -> CodedArray | None:
    if isinstance(values, pd.Series | pd.Index) and isinstance(values.array, CodedArray):
        return values.array
    return None


def _coded(
    values: pd.Series | pd.Index | Iterable[str], among: pd.Series | pd.Index | Iterable[str]
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Both sides as codes of one dictionary, and its size, when one of them is coded; None when neither is.

    Strings not in the dictionary get no code: they are nowhere in the coded side.
    """
    left, right = _array(values), _array(among)
    if left is not None and right is not None and not left.dictionary.same(right.dictionary):
        return None
    coded = left if left is not None else right
    if coded is None:
        return None
    size = len(coded.dictionary)
    return coded.codes_of(values), coded.codes_of(among), size


def _index_in(left: pa.Array | pa.ChunkedArray, right: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(right, pa.ChunkedArray):
        right = right.combine_chunks()
    found = pc.fill_null(pc.index_in(left, value_set=right, skip_nulls=True), -1).to_numpy()
    return np.asarray(found, dtype=np.int64)


def _partitioned(left: pa.Array | pa.ChunkedArray, right: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`_index_in` one part at a time: equal strings fall in the same part (by their last two bytes), so each
    value is looked up once, in a hash table of about HASHED values, however long `right` is."""
    parts = -(-len(right) // HASHED)
    left_parts, right_parts = _parts(left, parts), _parts(right, parts)
    left_order, right_order = np.argsort(left_parts, kind="stable"), np.argsort(right_parts, kind="stable")
    left_ends = np.searchsorted(left_parts[left_order], np.arange(parts), "right")
    right_ends = np.searchsorted(right_parts[right_order], np.arange(parts), "right")
    found = np.full(len(left), -1, dtype=np.int64)
    left_start = right_start = 0
    for part in range(parts):
        mine = left_order[left_start : left_ends[part]]
        theirs = right_order[right_start : right_ends[part]]
        left_start, right_start = left_ends[part], right_ends[part]
        if not len(mine) or not len(theirs):
            continue
        # A stable order keeps `theirs` ascending, so the first match in the part is the first in `right`.
        at = _index_in(left.take(pa.array(mine)), right.take(pa.array(theirs)))
        hit = at >= 0
        found[mine[hit]] = theirs[at[hit]]
    return found


def _parts(values: pa.Array | pa.ChunkedArray, parts: int) -> np.ndarray:
    """A part number below `parts` for each string, from its last two bytes (digests end in random hex)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    out = [np.zeros(0, dtype=np.int64)]
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string())
        n = len(chunk)
        buffers = chunk.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64)[chunk.offset : chunk.offset + n + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, dtype=np.uint8)
        length = offsets[1:] - offsets[:-1]
        # Only a string's own bytes may count: equal strings must fall in the same part.
        last = np.where(length >= 1, data[np.clip(offsets[1:] - 1, 0, max(len(data) - 1, 0))] if len(data) else 0, 0)
        second = np.where(length >= 2, data[np.clip(offsets[1:] - 2, 0, max(len(data) - 1, 0))] if len(data) else 0, 0)
        out.append((last.astype(np.int64) * 256 + second) % parts)
    return np.concatenate(out)


def pick(column: pd.Series, rows: np.ndarray, index: pd.Index | None = None) -> pd.Series:
    """The values of a string `column` at positions `rows` (-1: null), as a Series of its dtype."""
    coded = _array(column)
    if coded is not None:
        codes = np.where(rows >= 0, coded.codes[np.maximum(rows, 0)] if len(coded) else -1, -1).astype(CODE)
        return pd.Series(CodedArray(codes, coded.dictionary), index=index)
    taken = pc.take(pa.array(column), pa.array(rows, mask=rows < 0))
    return pd.Series(taken, dtype=column.dtype, index=index)


def isin(values: pd.Series, among: pd.Series | pd.Index | Iterable[str]) -> pd.Series:
    """`values.isin(among)` for string columns, computed by pyarrow.

    pandas' own isin on Arrow-backed strings converts through Python objects
    and takes about a second per call on a registry of 60,000 blobs.
    """
    coded = _coded(values, among)
    if coded is not None:
        left_codes, right_codes, size = coded
        held = np.zeros(size + 1, dtype=bool)
        held[right_codes[right_codes >= 0]] = True
        return pd.Series(held[np.where(left_codes >= 0, left_codes, size)], index=values.index, dtype=bool)
    return pd.Series(positions(values, among) >= 0, index=values.index, dtype=bool)


def sorted_rows(frame: pd.DataFrame, keys: list[tuple[str, str]]) -> pd.DataFrame:
    """`frame` sorted by (column, "ascending" or "descending") keys, stably, nulls last, by pyarrow, on a new index.

    pandas sorts strings by factorizing them first: a copy of every distinct value, over 100 MB of digests.
    """
    columns = {name: _sort_key(frame[name]) for name, _ in keys}
    order = pc.sort_indices(pa.table(columns), sort_keys=keys)
    return frame.take(order.to_numpy()).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pa.Array:
    """What sorts as the column does: codes sort as their strings."""
    coded = _array(column)
    if coded is not None:
        return pa.array(coded.codes, mask=coded.codes < 0)
    return pa.array(column)


def join_groups(frame: pd.DataFrame, key: str, value: str, sep: str = ",") -> pd.Series:
    """Per distinct `key` (text or integer), its `value`s joined by `sep` in frame order, by pyarrow."""
    keys = frame[key]
    coded = _array(keys)
    if coded is not None:
        by = pa.array(coded.codes.astype(np.int64), mask=coded.codes < 0)
    else:
        by = pa.array(keys) if pd.api.types.is_integer_dtype(keys) else _arrow(keys)
    table = pa.table({key: by, value: _arrow(frame[value]).cast(pa.string())})
    grouped = table.group_by(key, use_threads=False).aggregate([(value, "list")])
    joined = pc.binary_join(grouped[f"{value}_list"], sep)
    if coded is not None:
        codes = pc.fill_null(grouped[key], -1).to_numpy().astype(CODE)
        index = pd.Index(CodedArray(codes, coded.dictionary), name=key)
    else:
        index = pd.Index(grouped[key].to_pandas(types_mapper=_STRINGS.get), name=key)
    return pd.Series(joined, index=index, dtype="string")


def distinct_joined(groups: np.ndarray, column: pd.Series, count: int, sep: str = ",") -> pd.Series:
    """For each group id below `count`, the distinct non-null values of `column` in its rows (`groups`, a
    group id per row), sorted and joined by `sep`; empty for a group without any."""
    coded = _array(column)
    if coded is None:
        coded = CodedArray._from_sequence(_arrow(column))
    size = len(coded.dictionary) + 1
    valid = coded.codes >= 0
    pairs = np.unique(groups[valid].astype(np.int64) * size + coded.codes[valid])
    group, code = np.divmod(pairs, size)
    offsets = np.searchsorted(group, np.arange(count + 1)).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), coded.dictionary.strings(code))
    return pd.Series(pc.binary_join(lists, sep), dtype="string")
