"""Strings held once per inventory: each digest and name an integer code into one sorted dictionary.

A code is the rank of its string in the dictionary, so codes sort as their strings do. Digests of the
canonical form `sha256:<64 lowercase hex>` are held as 32 bytes (four 64-bit words); any other string
(another algorithm, a malformed reference) is held as text beside them, in the same order.
"""

from __future__ import annotations

import bisect
import builtins
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.extensions import ExtensionArray, ExtensionDtype, take
from pandas.api.indexers import check_array_indexer
from pandas.api.types import is_integer, is_list_like, pandas_dtype

CODE = np.int32
"""The dtype of codes; NULL marks a missing value."""
NULL = -1

_PREFIX = b"sha256:"
_LENGTH = len(_PREFIX) + 64
_PREFIX_BYTES = np.frombuffer(_PREFIX, dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NOT_HEX = 0xFFFF
_PAIR_VALUE = np.full(1 << 16, _NOT_HEX, dtype=np.uint16)
"""The byte that two hex digits write, indexed by the two digits read as one 16-bit number."""
_PAIR_VALUE[np.stack([np.repeat(_HEX, 16), np.tile(_HEX, 16)], axis=1).copy().view(np.uint16).ravel()] = np.arange(256)
_BYTE_HEX = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1)
_WORDS = 4


# --------------------------------------------------------------------------
# Dictionaries


class Dictionary:
    """Distinct strings in sorted order; a string's code is its rank."""

    def __len__(self) -> int:
        raise NotImplementedError

    def strings(self, codes: np.ndarray) -> pa.Array:
        """The string of each code, null where the code is NULL."""
        raise NotImplementedError

    def find(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The code of each string, NULL where it is null or not in the dictionary."""
        raise NotImplementedError

    def same(self, other: Dictionary) -> bool:
        """Whether `other` holds the same strings, so that codes of either mean the same in both."""
        return other is self or (type(other) is type(self) and len(other) == len(self) and self._equal(other))

    def _equal(self, other: Any) -> bool:
        raise NotImplementedError

    def key(self) -> tuple[Any, ...]:
        """A hash key that dictionaries holding the same strings share."""
        return (
            type(self).__name__,
            len(self),
            tuple(self.strings(np.array([0, len(self) - 1])).to_pylist()) if len(self) else (),
        )

    def string(self, code: int) -> str:
        value = self.strings(np.array([code], dtype=np.int64))[0].as_py()
        assert isinstance(value, str)
        return value

    @cached_property
    def dtype(self) -> CodedDtype:
        """The one dtype of the columns coded against this dictionary."""
        return CodedDtype(self)

    def column(self, codes: np.ndarray) -> pd.Series:
        return pd.Series(CodedArray(codes, self))


def _string_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], type=pa.string())
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.type in (pa.string(), pa.large_string()):
        return values
    return values.cast(pa.string())


def _small(values: pa.Array) -> pa.Array:
    """A few strings, as `string` (not `large_string`), so that they concatenate with others."""
    values = _string_array(values)
    return values.cast(pa.string()) if values.type != pa.string() else values


class TextDictionary(Dictionary):
    """A dictionary of a few distinct strings (names, media types) held as Arrow text."""

    def __init__(self, values: pa.Array) -> None:
        self.values = values

    @classmethod
    def of(cls, arrays: Iterable[pa.Array]) -> TextDictionary:
        distinct = [_small(pc.unique(_string_array(a))) for a in arrays]
        values = pc.unique(pa.concat_arrays(distinct)) if distinct else pa.array([], type=pa.string())
        values = values.drop_null()
        return cls(values.take(pc.sort_indices(values)))

    def __len__(self) -> int:
        return len(self.values)

    def _equal(self, other: Any) -> bool:
        return bool(self.values.equals(other.values))

    def strings(self, codes: np.ndarray) -> pa.Array:
        codes = np.asarray(codes, dtype=np.int64)
        return self.values.take(pa.array(codes, mask=codes < 0))

    def find(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        found = pc.index_in(_string_array(values), value_set=self.values)
        return np.asarray(pc.fill_null(found, NULL).to_numpy(zero_copy_only=False), dtype=CODE)


def _parse(chunk: pa.Array, skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one string array: which rows are canonical sha256 digests, their words (k, 4), and which other
    rows are not null; rows to `skip` count as null."""
    n = len(chunk)
    if chunk.null_count:
        valid = ~np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    else:
        valid = np.ones(n, dtype=bool)
    if skip is not None:
        valid &= ~skip
    canonical = np.zeros(n, dtype=bool)
    if n == 0 or not valid.any():
        return canonical, np.zeros((0, _WORDS), dtype=np.uint64), valid
    _, offsets_buffer, data_buffer = chunk.buffers()
    offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, dtype=np.uint8)
    length = np.diff(offsets)
    long = np.flatnonzero(length == _LENGTH)
    if len(long) and np.all((length == _LENGTH) | (length == 0)):
        # Every string of the digest's length sits end to end: read them in place.
        text = data[offsets[0] : offsets[-1]].reshape(-1, _LENGTH)
        keep = valid[long]
        rows = long[keep]
        text = text if keep.all() else text[keep]
    else:
        rows = long[valid[long]]
        text = data[offsets[rows][:, None] + np.arange(_LENGTH)] if len(rows) else np.zeros((0, _LENGTH), np.uint8)
    ok = np.ones(len(text), dtype=bool)
    for at, byte in enumerate(_PREFIX):
        ok &= text[:, at] == byte
    raw, digits = _bytes_of_hex(text[:, len(_PREFIX) :])
    ok &= digits
    words = np.ascontiguousarray(raw[ok]).view(">u8").astype(np.uint64)
    canonical[rows[ok]] = True
    return canonical, words.reshape(-1, _WORDS), valid & ~canonical


def _bytes_of_hex(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 32 bytes that (n, 64) bytes of lowercase hex digits write, and whether each row is such digits.

    Two digits at a time, through a table of every pair of bytes: half the lookups of one digit at a time.
    """
    pairs = _PAIR_VALUE[np.ascontiguousarray(text).view(np.uint16)]
    return pairs.astype(np.uint8), ~(pairs == _NOT_HEX).any(axis=1)


def _hex(words: np.ndarray) -> pa.Array:
    """The canonical digest string of each row of words."""
    n = len(words)
    raw = np.ascontiguousarray(words.astype(">u8")).view(np.uint8).reshape(n, 32)
    text = np.empty((n, _LENGTH), dtype=np.uint8)
    text[:, : len(_PREFIX)] = _PREFIX_BYTES
    text[:, len(_PREFIX) :] = _BYTE_HEX[raw].reshape(n, 64)
    offsets = np.arange(n + 1, dtype=np.int64) * _LENGTH
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text)).cast(pa.string())


def _sorted_distinct(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of (n, 4) words, in lexicographic order, and the row of each of `words` among them."""
    if len(words) == 0:
        return np.zeros((0, _WORDS), dtype=np.uint64), np.zeros(0, dtype=np.int64)
    first = words[:, 0]
    if (first[1:] > first[:-1]).all():
        # Already in order and distinct (blobs are listed so): nothing to sort.
        return words, np.arange(len(words), dtype=np.int64)
    order = np.argsort(first, kind="stable")
    ordered = words[order]
    same = ordered[1:] == ordered[:-1]
    repeat = same.all(axis=1)
    if (same[:, 0] & ~repeat).any():
        # Digests that share their first 64 bits: order them by all of their bits.
        order = np.lexsort(words.T[::-1])
        ordered = words[order]
        repeat = (ordered[1:] == ordered[:-1]).all(axis=1)
    keep = np.concatenate([[True], ~repeat])
    inverse = np.empty(len(words), dtype=np.int64)
    inverse[order] = np.cumsum(keep) - 1
    return ordered[keep], inverse


def _void(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words.astype(">u8")).view(f"V{8 * _WORDS}").ravel()


def _places(table: np.ndarray, first: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each row of `new` (sorted, none of them in `table`), how many rows of `table` sort before it."""
    place = np.searchsorted(first, new[:, 0], "left")
    ties = np.flatnonzero(np.searchsorted(first, new[:, 0], "right") > place)
    for row in ties:
        # Rows of the table that share its first 64 bits: placed among them by all of its bits.
        end = np.searchsorted(first, new[row, 0], "right")
        group = _void(table[place[row] : end])
        place[row] += int(np.searchsorted(group, _void(new[row : row + 1]))[0])
    return place


def _lookup(table: np.ndarray, first: np.ndarray, words: np.ndarray) -> np.ndarray:
    """The row of each of `words` in `table` (distinct, sorted rows; `first` its first column); -1 when absent.

    The words are searched in sorted order: each search then starts where the last one ended, which
    is many times faster than searching a large table at random.
    """
    found = np.full(len(words), -1, dtype=np.int64)
    if len(words) == 0 or len(table) == 0:
        return found
    keys = words[:, 0]
    if (keys[1:] >= keys[:-1]).all():
        at = np.searchsorted(first, keys, "left")
    else:
        order = np.argsort(keys)
        at = np.empty(len(keys), dtype=np.int64)
        at[order] = np.searchsorted(first, keys[order], "left")
        del order
    inside = np.minimum(at, len(first) - 1)
    starts = (at < len(first)) & (first[inside] == keys)
    following = np.minimum(at + 1, len(first) - 1)
    shared = starts & (at + 1 < len(first)) & (first[following] == keys)
    one = np.flatnonzero(starts & ~shared)
    hit = (table[at[one]] == words[one]).all(axis=1)
    found[one[hit]] = at[one[hit]]
    shared = np.flatnonzero(shared)
    if len(shared):
        # First words that several digests share: search those rows by all their bits.
        table_keys = _void(table)
        wanted = _void(words[shared])
        near = np.minimum(np.searchsorted(table_keys, wanted), len(table_keys) - 1)
        hit = table_keys[near] == wanted
        found[shared[hit]] = near[hit]
    return found


class DigestDictionary(Dictionary):
    """The digests of one inventory: canonical ones as words, the rest as text, all in string order."""

    def __init__(self, words: np.ndarray, others: pa.Array | None = None) -> None:
        self.words = words
        self.first = np.ascontiguousarray(words[:, 0])
        self.others = others if others is not None else pa.array([], type=pa.string())
        # Where each other string falls among the canonical ones, and its code.
        places = [bisect.bisect_left(_Canonical(self), value) for value in self.others.to_pylist()]
        self.other_codes = np.asarray(places, dtype=np.int64) + np.arange(len(places), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.words) + len(self.others)

    def _equal(self, other: Any) -> bool:
        return bool(np.array_equal(self.words, other.words) and self.others.equals(other.others))

    def code_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The codes of canonical entries given by their rows in `words`."""
        if not len(self.other_codes):
            return rows
        return rows + np.searchsorted(self.other_codes - np.arange(len(self.other_codes)), rows, "right")

    def strings(self, codes: np.ndarray) -> pa.Array:
        codes = np.asarray(codes, dtype=np.int64)
        valid = codes >= 0
        if not len(self.other_codes):
            text = _hex(self.words[codes[valid]])
            if valid.all():
                return text
            place = np.cumsum(valid) - 1
            return text.take(pa.array(place, mask=~valid))
        before = np.searchsorted(self.other_codes, codes, "left")
        is_other = valid & (before < len(self.other_codes))
        is_other[is_other] = self.other_codes[before[is_other]] == codes[is_other]
        canonical = valid & ~is_other
        text = pa.concat_arrays([_hex(self.words[(codes - before)[canonical]]), self.others])
        place = np.full(len(codes), -1, dtype=np.int64)
        place[canonical] = np.arange(canonical.sum())
        place[is_other] = canonical.sum() + before[is_other]
        return text.take(pa.array(place, mask=place < 0))

    def find(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        out = [np.zeros(0, dtype=CODE)]
        for chunk in chunks:
            chunk = _string_array(chunk)
            canonical, words, other = _parse(chunk)
            codes = np.full(len(chunk), NULL, dtype=np.int64)
            rows = _lookup(self.words, self.first, words)
            codes[np.flatnonzero(canonical)] = np.where(rows >= 0, self.code_of_rows(np.maximum(rows, 0)), NULL)
            if other.any() and len(self.others):
                at = pc.fill_null(pc.index_in(chunk.filter(pa.array(other)), value_set=self.others), -1)
                at = np.asarray(at.to_numpy(zero_copy_only=False), dtype=np.int64)
                codes[np.flatnonzero(other)] = np.where(at >= 0, self.other_codes[np.maximum(at, 0)], NULL)
            out.append(codes.astype(CODE))
        return np.concatenate(out)


class _Canonical(Sequence[str]):
    """The canonical entries of a dictionary as a sequence of strings, made one at a time (for bisect)."""

    def __init__(self, dictionary: DigestDictionary) -> None:
        self.words = dictionary.words

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, index: Any) -> Any:
        value = _hex(self.words[index : index + 1])[0].as_py()
        return value


# --------------------------------------------------------------------------
# Building codes for whole columns


def _repeats(chunk: pa.Array, skip: np.ndarray | None) -> np.ndarray | None:
    """Rows equal to the row before them (which is not skipped); None when there are none.

    A manifest's references come one after another: their manifest digest is read once for all.
    """
    if len(chunk) < 2:
        return None
    same = pc.fill_null(pc.equal(chunk.slice(1), chunk.slice(0, len(chunk) - 1)), False)
    repeats = np.concatenate([[False], np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)])
    if skip is not None:
        repeats[1:] &= ~skip[:-1]
    return repeats if repeats.any() else None


class _Column:
    """The codes of one column so far: final rows, and rows waiting for the dictionary to grow."""

    def __init__(self, length: int = 0) -> None:
        self.codes = np.full(length, NULL, dtype=CODE)
        self.repeats: np.ndarray | None = None
        """Rows that hold the same string as the row before them, and get its code."""
        self.filled = 0
        self.pending_rows: list[np.ndarray] = []
        self.pending_words: list[np.ndarray] = []
        self.waiting_rows: list[np.ndarray] = []
        self.waiting_words: list[np.ndarray] = []
        self.other_rows: list[np.ndarray] = []
        self.other_values: list[pa.Array] = []

    def room(self, rows: int) -> None:
        """Make room for `rows` more rows (doubling, when the length was not known)."""
        if self.filled + rows > len(self.codes):
            grown = np.full(max(2 * len(self.codes), self.filled + rows), NULL, dtype=CODE)
            grown[: self.filled] = self.codes[: self.filled]
            self.codes = grown
            if self.repeats is not None:
                self.repeats = np.concatenate([self.repeats, np.zeros(len(grown) - len(self.repeats), dtype=bool)])

    @property
    def pending(self) -> int:
        return sum(len(r) for r in self.pending_rows)


LOOKUP_ROWS = 1 << 16
"""The fewest digests looked up in the dictionary at a time, and the fewest new ones merged into it.

A column's digests are looked up an eighth of the dictionary at a time (searched in sorted order,
many of them pay), and new ones merged in once they are half as many as it holds (it grows by half
at least, so merges stay few), both from LOOKUP_ROWS up: a tree scanned part by part holds little."""


class DigestCoder:
    """Codes digest columns, chunk by chunk, against one dictionary that grows as new digests come.

    Rows found in the dictionary get their code at once; new digests wait until enough have come to
    merge them in (the dictionary at least doubling, so merges stay few). `finish` gives the dictionary
    and every column's codes.
    """

    def __init__(self) -> None:
        self.words = np.zeros((0, _WORDS), dtype=np.uint64)
        self.first = np.zeros(0, dtype=np.uint64)
        self.columns: dict[Any, _Column] = {}
        self.waiting = 0

    def add(self, key: Any, length: int, chunks: Iterable[pa.Array | tuple[pa.Array, np.ndarray]]) -> None:
        """Code a whole column of `length` rows, given in chunks (see `extend`)."""
        self.columns[key] = _Column(length)
        for item in chunks:
            chunk, skip = item if isinstance(item, tuple) else (item, None)
            self.extend(key, chunk, skip)
        self.settle(key)
        if self.columns[key].filled != length:
            raise ValueError(f"column of {self.columns[key].filled} rows, {length} expected")

    def settle(self, key: Any) -> None:
        """The column `key` is whole: look its pending rows up, and merge if it brought many new digests."""
        if key not in self.columns:
            return
        self._flush(self.columns[key])
        if self.waiting > len(self.words) // 4:
            # Many new digests (the blobs, first): in the dictionary before the next column meets them.
            self._merge()

    def extend(self, key: Any, chunk: pa.Array, skip: np.ndarray | None = None) -> None:
        """Append a chunk to the column `key`; rows to `skip` stay NULL (the caller knows their codes)."""
        column = self.columns.setdefault(key, _Column())
        chunk = _string_array(chunk)
        column.room(len(chunk))
        start = column.filled
        repeats = _repeats(chunk, skip)
        if repeats is not None:
            if column.repeats is None:
                column.repeats = np.zeros(len(column.codes), dtype=bool)
            column.repeats[start : start + len(chunk)] = repeats
            skip = repeats if skip is None else skip | repeats
        canonical, parsed, other = _parse(chunk, skip)
        column.pending_rows.append(np.flatnonzero(canonical) + start)
        column.pending_words.append(parsed)
        if other.any():
            column.other_rows.append(np.flatnonzero(other) + start)
            column.other_values.append(_small(chunk.filter(pa.array(other))))
        column.filled += len(chunk)
        if column.pending >= max(LOOKUP_ROWS, len(self.words) // 8):
            self._flush(column)

    def _flush(self, column: _Column) -> None:
        """Give the pending rows whose digests the dictionary holds their codes; the others wait for a merge."""
        if not column.pending_rows:
            return
        rows, words = np.concatenate(column.pending_rows), np.concatenate(column.pending_words)
        column.pending_rows, column.pending_words = [], []
        found = _lookup(self.words, self.first, words)
        column.codes[rows[found >= 0]] = found[found >= 0]
        new = found < 0
        if new.any():
            column.waiting_rows.append(rows[new])
            column.waiting_words.append(words[new])
            self.waiting += int(new.sum())
        if self.waiting >= max(LOOKUP_ROWS, len(self.words) // 2):
            self._merge()

    def _merge(self) -> None:
        """Add the waiting digests to the dictionary and renumber every code given so far.

        The waiting digests are none of the dictionary's (they were looked up in it): they are sorted
        among themselves and slotted in, without sorting the dictionary again.
        """
        waiting = [w for c in self.columns.values() for w in c.waiting_words]
        if not waiting:
            return
        new, new_rows = _sorted_distinct(np.concatenate(waiting))
        place = _places(self.words, self.first, new)
        merged = np.insert(self.words, place, new, axis=0)
        # An entry moves down by the number of new ones slotted in before it.
        renumber = np.arange(len(self.words)) + np.searchsorted(place, np.arange(len(self.words)), "right")
        codes_of_new = place + np.arange(len(new))
        at = 0
        for column in self.columns.values():
            given = column.codes[: column.filled] >= 0
            column.codes[: column.filled][given] = renumber[column.codes[: column.filled][given]]
            for rows, words in zip(column.waiting_rows, column.waiting_words, strict=True):
                column.codes[rows] = codes_of_new[new_rows[at : at + len(words)]]
                at += len(words)
            column.waiting_rows, column.waiting_words = [], []
        self.words, self.first, self.waiting = merged, np.ascontiguousarray(merged[:, 0]), 0

    def finish(self) -> tuple[DigestDictionary, dict[Any, np.ndarray]]:
        for column in self.columns.values():
            self._flush(column)
        self._merge()
        others = [v for c in self.columns.values() for v in c.other_values]
        distinct = pc.unique(pa.concat_arrays(others)) if others else pa.array([], type=pa.string())
        dictionary = DigestDictionary(self.words, distinct.take(pc.sort_indices(distinct)))
        out = {}
        for key, column in self.columns.items():
            codes = column.codes[: column.filled]
            given = codes >= 0
            codes[given] = dictionary.code_of_rows(codes[given])
            for rows, values in zip(column.other_rows, column.other_values, strict=True):
                at = np.asarray(pc.index_in(values, value_set=dictionary.others).to_numpy(), dtype=np.int64)
                codes[rows] = dictionary.other_codes[at]
            if column.repeats is not None:
                # Each repeated row takes the code of the last row before it that is no repeat.
                heads = np.where(column.repeats[: column.filled], 0, np.arange(len(codes)))
                codes = codes[np.maximum.accumulate(heads)]
            out[key] = codes if len(codes) == len(column.codes) else codes.copy()
        self.columns = {}
        return dictionary, out


class TextCoder:
    """Codes columns of a few distinct strings, chunk by chunk, against one dictionary made at the end."""

    def __init__(self) -> None:
        self.parts: dict[Any, list[tuple[np.ndarray, pa.Array]]] = {}

    def add(self, key: Any, length: int, chunks: Iterable[pa.Array]) -> None:
        """Code a whole column of `length` rows, given in chunks."""
        self.parts[key] = []
        for chunk in chunks:
            self.extend(key, chunk)
        if sum(len(i) for i, _ in self.parts[key]) != length:
            raise ValueError(f"column of {sum(len(i) for i, _ in self.parts[key])} rows, {length} expected")

    def extend(self, key: Any, chunk: pa.Array) -> None:
        """Append a chunk to the column `key`."""
        encoded = pc.dictionary_encode(_string_array(chunk))
        indices = np.asarray(pc.fill_null(encoded.indices, NULL).to_numpy(zero_copy_only=False), dtype=CODE)
        self.parts.setdefault(key, []).append((indices, encoded.dictionary))

    def finish(self) -> tuple[TextDictionary, dict[Any, np.ndarray]]:
        dictionary = TextDictionary.of(d for parts in self.parts.values() for _, d in parts)
        out = {}
        for key, parts in self.parts.items():
            coded = [np.zeros(0, dtype=CODE)]
            for indices, values in parts:
                mapping = np.append(dictionary.find(values), NULL).astype(CODE)
                coded.append(mapping[indices])
            out[key] = np.concatenate(coded)
        self.parts = {}
        return dictionary, out


# --------------------------------------------------------------------------
# The pandas column type


class CodedDtype(ExtensionDtype):
    """Strings held as codes into a dictionary; two columns share the dtype when they share the dictionary."""

    type = str
    kind = "O"
    na_value = pd.NA
    _metadata: ClassVar[tuple[str, ...]] = ("dictionary",)

    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary

    @property
    def name(self) -> str:
        return "coded"

    @classmethod
    def construct_array_type(cls) -> builtins.type[CodedArray]:
        return CodedArray

    @classmethod
    def construct_from_string(cls, string: str) -> CodedDtype:
        raise TypeError(f"cannot construct a coded dtype from {string!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CodedDtype) and other.dictionary.same(self.dictionary)

    def __hash__(self) -> int:
        return hash(self.dictionary.key())

    def _get_common_dtype(self, dtypes: list[Any]) -> Any:
        if all(d == self for d in dtypes):
            return self
        if all(isinstance(d, CodedDtype | pd.StringDtype) or d == np.dtype(object) for d in dtypes):
            return pd.StringDtype()
        return None


def _as_strings(values: Any) -> pa.Array:
    if isinstance(values, CodedArray):
        return values.arrow()
    if isinstance(values, pd.Series | pd.Index):
        values = values.array
    if isinstance(values, CodedArray):
        return values.arrow()
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return _string_array(values)
    if hasattr(values, "__arrow_array__"):
        return _string_array(pa.array(values))
    if isinstance(values, str):
        values = [values]
    listed = [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in values]
    return pa.array(listed, type=pa.string())


class CodedArray(ExtensionArray):
    """A column of strings as codes into a shared dictionary (see CodedDtype)."""

    def __init__(self, codes: np.ndarray, dictionary: Dictionary) -> None:
        self._codes = np.asarray(codes, dtype=CODE)
        self._dictionary = dictionary

    # -- what the analyses use --------------------------------------------------------

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    @property
    def dictionary(self) -> Dictionary:
        return self._dictionary

    def arrow(self) -> pa.Array:
        """The strings, as Arrow text: made here, for this column only."""
        return self._dictionary.strings(self._codes)

    def codes_of(self, values: Any) -> np.ndarray:
        """The codes of other strings (a column or a list) in this dictionary; NULL for those not in it."""
        if isinstance(values, pd.Series | pd.Index):
            values = values.array
        if isinstance(values, CodedArray) and values._dictionary.same(self._dictionary):
            return values._codes
        return self._dictionary.find(_as_strings(values))

    # -- the ExtensionArray interface --------------------------------------------------

    @property
    def dtype(self) -> CodedDtype:
        return self._dictionary.dtype

    @classmethod
    def _from_sequence(cls, scalars: Any, *, dtype: Any = None, copy: bool = False) -> CodedArray:
        if isinstance(scalars, CodedArray) and (dtype is None or dtype == scalars.dtype):
            return scalars.copy() if copy else scalars
        strings = _as_strings(scalars)
        if isinstance(dtype, CodedDtype):
            codes = dtype.dictionary.find(strings)
            if (codes[np.asarray(strings.is_valid().to_numpy(zero_copy_only=False), dtype=bool)] < 0).any():
                raise ValueError("a value is not in the column's dictionary")
            return cls(codes, dtype.dictionary)
        dictionary = TextDictionary.of([strings])
        return cls(dictionary.find(strings), dictionary)

    @classmethod
    def _from_factorized(cls, values: np.ndarray, original: CodedArray) -> CodedArray:
        return cls(values, original._dictionary)

    def __getitem__(self, item: Any) -> Any:
        if is_integer(item):
            code = int(self._codes[item])
            return pd.NA if code < 0 else self._dictionary.string(code)
        if not isinstance(item, slice):
            item = check_array_indexer(self, item)
        return CodedArray(self._codes[item], self._dictionary)

    def __len__(self) -> int:
        return len(self._codes)

    def __setitem__(self, key: Any, value: Any) -> None:
        # pandas sets values in place to fill an outer merge's keys, and for `where` and `mask`.
        if not isinstance(key, slice) and not is_integer(key):
            key = check_array_indexer(self, key)
        if isinstance(value, pd.Series | pd.Index):
            value = value.array
        if isinstance(value, CodedArray) and value._dictionary.same(self._dictionary):
            self._codes[key] = value._codes
        elif is_list_like(value) and not isinstance(value, str):
            self._codes[key] = self._from_sequence(value, dtype=self.dtype)._codes
        else:
            self._codes[key] = self._from_sequence([value], dtype=self.dtype)._codes[0]

    def __iter__(self) -> Any:
        step = 1 << 16
        for start in range(0, len(self), step):
            for value in self._dictionary.strings(self._codes[start : start + step]).to_pylist():
                yield pd.NA if value is None else value

    @property
    def nbytes(self) -> int:
        return int(self._codes.nbytes)

    def isna(self) -> np.ndarray:
        return self._codes < 0

    def take(self, indices: Any, *, allow_fill: bool = False, fill_value: Any = None) -> CodedArray:
        if allow_fill and fill_value is not None and not pd.isna(fill_value):
            raise ValueError("a coded column is filled with nulls only")
        taken = take(self._codes, indices, allow_fill=allow_fill, fill_value=NULL)
        return CodedArray(taken, self._dictionary)

    def copy(self) -> CodedArray:
        return CodedArray(self._codes.copy(), self._dictionary)

    @classmethod
    def _concat_same_type(cls, to_concat: Sequence[CodedArray]) -> CodedArray:
        dictionary = to_concat[0]._dictionary
        if all(a._dictionary.same(dictionary) for a in to_concat):
            return cls(np.concatenate([a._codes for a in to_concat]), dictionary)
        strings = pa.concat_arrays([a.arrow() for a in to_concat])
        return cls._from_sequence(strings)

    def _values_for_factorize(self) -> tuple[np.ndarray, Any]:
        return self._codes.astype(np.int64), NULL

    def _values_for_argsort(self) -> np.ndarray:
        return self._codes

    def unique(self) -> CodedArray:
        return CodedArray(pd.unique(self._codes), self._dictionary)

    def isin(self, values: Any) -> np.ndarray:
        wanted = self.codes_of(values)
        out = np.isin(self._codes, wanted[wanted >= 0])
        if (wanted < 0).any() and _has_null(values):
            out |= self._codes < 0
        return out

    def value_counts(self, dropna: bool = True) -> pd.Series:
        codes = self._codes[self._codes >= 0] if dropna else self._codes
        distinct, first, counts = np.unique(codes, return_index=True, return_counts=True)
        # As pandas orders them: most frequent first, ties by first occurrence.
        order = np.lexsort((first, -counts))
        index = pd.Index(CodedArray(distinct[order], self._dictionary))
        return pd.Series(counts[order], index=index, name="count")

    def fillna(self, value: Any = None, limit: int | None = None, copy: bool = True) -> Any:
        if isinstance(value, pd.Series | pd.Index):
            value = value.array
        if isinstance(value, CodedArray) and value._dictionary.same(self._dictionary):
            return CodedArray(np.where(self._codes >= 0, self._codes, value._codes), self._dictionary)
        if isinstance(value, str):
            code = self._dictionary.find(pa.array([value]))[0]
            if code >= 0:
                return CodedArray(np.where(self._codes >= 0, self._codes, code), self._dictionary)
        return self.astype(pd.StringDtype()).fillna(value)

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(other, equal=True)

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        return self._compare(other, equal=False)

    def _compare(self, other: Any, equal: bool) -> Any:
        """As pandas' `string` columns compare: null (NA) where either side is null."""
        if isinstance(other, pd.Series | pd.Index | pd.DataFrame):
            return NotImplemented
        null = self._codes < 0
        if other is None or other is pd.NA:
            return pd.arrays.BooleanArray(np.zeros(len(self), dtype=bool), np.ones(len(self), dtype=bool))
        if isinstance(other, str):
            codes = np.full(len(self), self._dictionary.find(pa.array([other]))[0])
        elif is_list_like(other):
            if len(other) != len(self):
                raise ValueError("lengths must match to compare")
            codes = self.codes_of(other)
            if isinstance(other, CodedArray) and other._dictionary.same(self._dictionary):
                null = null | (codes < 0)
            else:
                # A string not in the dictionary equals no row: marked apart from a null.
                strings = _as_strings(other)
                known = np.asarray(strings.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
                codes = np.where((codes < 0) & known, -2, codes)
                null = null | ~known
        else:
            codes = np.full(len(self), -2)
        same = self._codes == codes
        return pd.arrays.BooleanArray((same if equal else ~same) & ~null, null)

    def astype(self, dtype: Any, copy: bool = True) -> Any:
        dtype = pandas_dtype(dtype)
        if dtype == self.dtype:
            return self.copy() if copy else self
        if isinstance(dtype, pd.StringDtype):
            return dtype.construct_array_type()._from_sequence(self.arrow(), dtype=dtype)
        if dtype == np.dtype(object):
            return np.array(list(self), dtype=object)
        return (
            np.array(list(self), dtype=object).astype(dtype)
            if not isinstance(dtype, ExtensionDtype)
            else (dtype.construct_array_type()._from_sequence(list(self), dtype=dtype))
        )

    def __arrow_array__(self, type: Any = None) -> pa.Array:
        strings = self.arrow()
        return strings.cast(type) if type is not None and type != strings.type else strings

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = np.array(list(self), dtype=object)
        return values if dtype is None else values.astype(dtype)

    def __getattr__(self, name: str) -> Any:
        # pandas' `.str` methods, on the strings made for this column.
        if name.startswith("_str_"):
            return getattr(self.astype(pd.StringDtype()), name)
        raise AttributeError(name)

    def _reduce(self, name: str, *, skipna: bool = True, keepdims: bool = False, **kwargs: Any) -> Any:
        if name in ("min", "max"):
            valid = self._codes[self._codes >= 0]
            if not len(valid) or (not skipna and (self._codes < 0).any()):
                return pd.NA
            code = valid.min() if name == "min" else valid.max()
            return self._dictionary.string(int(code))
        return self.astype(pd.StringDtype())._reduce(name, skipna=skipna, keepdims=keepdims, **kwargs)


def _has_null(values: Any) -> bool:
    return bool(_as_strings(values).null_count)


def codes_of(column: pd.Series | pd.Index) -> tuple[np.ndarray, Dictionary] | None:
    """A coded column's codes and dictionary; None for a column of plain strings."""
    array = column.array
    if isinstance(array, CodedArray):
        return array.codes, array.dictionary
    return None
