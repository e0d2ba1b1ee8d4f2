"""Coded string columns against plain Python and plain `string` columns: coders, pandas, frames, snapshots."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_audit.inventory import codes, frames, snapshot_writer
from storage_audit.inventory import tables as inventory
from storage_audit.inventory.codes import CodedArray, CodedDtype, Dictionary, DigestCoder, TextCoder
from storage_audit.inventory.schema import CODED, SCHEMA
from storage_audit.inventory.tables import Inventory, frame, read_snapshot, write_snapshot
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import FIXTURES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Value = str | None

# --------------------------------------------------------------------------
# What the columns hold


def _hex(raw: bytes) -> str:
    return raw.hex()


HEX64 = st.binary(min_size=32, max_size=32).map(_hex)


@st.composite
def pools(draw: st.DrawFn) -> list[str]:
    """Distinct-ish strings to draw column values from: canonical digests, digests that share their first
    16 (or more) hex digits with another, and near misses of every kind."""
    canonical = draw(st.lists(HEX64, min_size=1, max_size=8))
    pool = [f"sha256:{h}" for h in canonical]
    for h in draw(st.lists(st.sampled_from(canonical), max_size=6)):
        shared = draw(st.sampled_from([16, 16, 32, 48, 63]))
        tail = draw(st.text("0123456789abcdef", min_size=64 - shared, max_size=64 - shared))
        pool.append(f"sha256:{h[:shared]}{tail}")
    near = st.one_of(
        st.sampled_from(canonical).map(lambda h: f"sha256:{h.upper()}"),
        st.sampled_from(canonical).map(lambda h: f"sha256:{h[:63]}"),
        st.sampled_from(canonical).map(lambda h: f"sha256:{h}0"),
        st.sampled_from(canonical).map(lambda h: f"sha512:{h}{h}"),
        st.sampled_from(canonical).map(lambda h: f"sha257:{h}"),
        st.sampled_from(canonical).map(lambda h: f"sha256:{h[:63]}g"),
        st.sampled_from(canonical).map(lambda h: h + "sha256:"),  # 71 bytes, no prefix
        st.just("sha256:" + "é" * 32),  # 71 bytes of UTF-8
        st.just("sha256:"),
        st.just(""),
        st.just("library/busybox"),
        st.text(max_size=8),
    )
    pool += draw(st.lists(near, max_size=8))
    return pool


@st.composite
def columns(draw: st.DrawFn, pool: list[str], min_columns: int = 1) -> list[list[Value]]:
    value = st.one_of(st.none(), st.sampled_from(pool))
    return draw(st.lists(st.lists(value, max_size=30), min_size=min_columns, max_size=4))


@st.composite
def chunked(draw: st.DrawFn, values: list[Value]) -> list[pa.Array]:
    """The values as Arrow chunks of random sizes and types, some of them slices of a larger array."""
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=5)))
    bounds = [0, *cuts, len(values)]
    out = []
    for start, end in itertools.pairwise(bounds):
        kind = draw(st.sampled_from(["string", "large_string", "slice", "dictionary"]))
        if kind == "slice":
            padded = pa.array(["sha256:" + "f" * 64, *values, None], type=pa.large_string())
            out.append(padded.slice(start + 1, end - start))
        elif kind == "dictionary":
            out.append(pa.array(values[start:end], type=pa.string()).dictionary_encode())
        else:
            out.append(pa.array(values[start:end], type=getattr(pa, kind)()))
    return out


def strings_of(dictionary: Dictionary, codes_: np.ndarray) -> list[Value]:
    return dictionary.strings(np.asarray(codes_)).to_pylist()


def check_coded(dictionary: Dictionary, coded: dict[Any, np.ndarray], cols: list[list[Value]], absent: list[Value]):
    """The dictionary and codes against plain Python: sorted distinct strings, codes their ranks."""
    distinct = sorted({v for c in cols for v in c if v is not None})
    assert len(dictionary) == len(distinct)
    assert strings_of(dictionary, np.arange(len(distinct))) == distinct
    rank: dict[Value, int] = {v: i for i, v in enumerate(distinct)}
    for key, values in enumerate(cols):
        got = coded[key]
        assert got.dtype == codes.CODE and len(got) == len(values)
        assert got.tolist() == [-1 if v is None else rank[v] for v in values], key
        assert strings_of(dictionary, got) == values
    probe = [*distinct, *absent, None]
    assert dictionary.find(pa.array(probe, type=pa.string())).tolist() == [rank.get(v, -1) for v in probe]
    assert dictionary.find(pa.array(probe, type=pa.large_string())).tolist() == [rank.get(v, -1) for v in probe]
    halves = pa.chunked_array([pa.array(probe[:3], pa.string()), pa.array(probe[3:], pa.string())])
    assert dictionary.find(halves).tolist() == [rank.get(v, -1) for v in probe]


def absent_from(pool: list[str], cols: list[list[Value]]) -> list[Value]:
    present = {v for c in cols for v in c}
    near = [f"sha256:{'0' * 64}", f"sha256:{'f' * 64}", "sha256:", "", "zz", *pool]
    near += [v[:-1] + ("0" if v[-1] != "0" else "1") for v in pool if v]
    return [v for v in near if v not in present]


# --------------------------------------------------------------------------
# 1. Coders


@SETTINGS
@given(st.data(), pools(), st.integers(3, 50))
def test_digest_coder_codes_are_ranks_in_the_sorted_distinct_strings(data: Any, pool: list[str], lookup: int) -> None:
    cols = data.draw(columns(pool))
    with pytest.MonkeyPatch.context() as patch:
        # Small lookups: the dictionary merges many times, between columns and within one.
        patch.setattr(codes, "LOOKUP_ROWS", lookup)
        coder = DigestCoder()
        for key, values in enumerate(cols):
            coder.add(key, len(values), data.draw(chunked(values)))
        dictionary, coded = coder.finish()
    check_coded(dictionary, coded, cols, absent_from(pool, cols))


@SETTINGS
@given(st.data(), pools())
def test_text_coder_codes_are_ranks_in_the_sorted_distinct_strings(data: Any, pool: list[str]) -> None:
    cols = data.draw(columns(pool))
    coder = TextCoder()
    for key, values in enumerate(cols):
        coder.add(key, len(values), data.draw(chunked(values)))
    dictionary, coded = coder.finish()
    check_coded(dictionary, coded, cols, absent_from(pool, cols))


def test_digests_sharing_their_first_64_bits_keep_apart_through_many_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codes, "LOOKUP_ROWS", 3)
    rng = np.random.default_rng(5)
    heads = [f"{rng.integers(0, 1 << 62):016x}" for _ in range(20)]
    digests = [f"sha256:{h}{rng.integers(0, 1 << 62):048x}" for h in heads for _ in range(3)]
    cols: list[list[Value]] = [[*digests[i::4], None] for i in range(4)] + [list(digests[::-1])]
    coder = DigestCoder()
    for key, values in enumerate(cols):
        coder.add(key, len(values), [pa.array(values[i : i + 4], pa.string()) for i in range(0, len(values), 4)])
    dictionary, coded = coder.finish()
    check_coded(dictionary, coded, cols, absent_from(digests, cols))


def test_many_digests_in_many_chunks_against_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codes, "LOOKUP_ROWS", 700)
    rng = np.random.default_rng(11)
    heads = rng.integers(0, 1 << 62, size=3000)
    digests = [f"sha256:{h:016x}{t:048x}" for h, t in zip(heads, rng.integers(0, 1 << 62, size=3000), strict=True)]
    digests += [f"sha256:{h:016x}{'0' * 48}" for h in heads[:500]]  # first 64 bits shared with another
    others = ["sha256:" + d[7:].upper() for d in digests[:50]] + [d[:-1] for d in digests[50:100]] + ["", "é"]
    everything = np.array([*digests, *others, None], dtype=object)
    cols: list[list[Value]] = [list(everything[rng.integers(0, len(everything), size=n)]) for n in (9000, 4000, 6000)]
    coder = DigestCoder()
    for key, values in enumerate(cols):
        bounds = [0, *sorted(rng.integers(0, len(values), size=len(values) // 400).tolist()), len(values)]
        types = [pa.string(), pa.large_string()]
        chunks = [pa.array(values[a:b], types[i % 2]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
        coder.add(key, len(values), chunks)
    dictionary, coded = coder.finish()
    check_coded(dictionary, dict(enumerate(coded.values())), cols, ["sha256:" + "0" * 64, "x"])


def test_a_null_whose_slot_holds_text_is_a_null() -> None:
    # Arrow leaves a null's bytes unspecified: a null slot may hold a digest, or text of another length.
    digest, other = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    for hidden in (digest, "x"):
        data = (digest + hidden + other).encode()
        offsets = np.array([0, len(digest), len(digest) + len(hidden), len(data)], dtype=np.int32)
        mask = pa.array([True, False, True]).buffers()[1]
        chunk = pa.StringArray.from_buffers(3, pa.py_buffer(offsets), pa.py_buffer(data), mask)
        assert chunk.to_pylist() == [digest, None, other]
        for coder in (DigestCoder(), TextCoder()):
            coder.add("a", 3, [chunk])
            dictionary, coded = coder.finish()
            assert strings_of(dictionary, np.arange(len(dictionary))) == [digest, other]
            assert coded["a"].tolist() == [0, -1, 1]
            assert dictionary.find(chunk).tolist() == [0, -1, 1]


def test_a_coder_refuses_a_column_of_another_length() -> None:
    for coder in (DigestCoder(), TextCoder()):
        with pytest.raises(ValueError, match="3 expected"):
            coder.add("a", 3, [pa.array(["x", None])])


# --------------------------------------------------------------------------
# 2. CodedArray in pandas, against a plain `string` Series of the same values


def coded_columns(cols: list[list[Value]], digests: bool = True) -> tuple[Dictionary, list[pd.Series]]:
    coder: DigestCoder | TextCoder = DigestCoder() if digests else TextCoder()
    for key, values in enumerate(cols):
        coder.add(key, len(values), [pa.array(values, pa.string())])
    dictionary, coded = coder.finish()
    return dictionary, [dictionary.column(coded[key]) for key in range(len(cols))]


def plain(values: Sequence[Value]) -> pd.Series:
    return pd.Series(values, dtype="string")


def listed(values: Any) -> list[Value]:
    """Values as Python strings, None for any kind of null, whatever the dtype pandas chose."""
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in values]


@SETTINGS
@given(st.data(), pools(), st.booleans())
def test_coded_series_behave_as_string_series(data: Any, pool: list[str], digests: bool) -> None:
    cols = data.draw(columns(pool, min_columns=2))
    same_length = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(pool)), min_size=len(cols[0])))
    cols.append(same_length[: len(cols[0])])
    _, (left, right, *_, other) = coded_columns(cols, digests)
    _, (other_own,) = coded_columns([cols[-1]], digests=not digests)
    values, right_values, other_values = cols[0], cols[1], cols[-1]
    p, q = plain(values), plain(other_values)
    assert isinstance(left.dtype, CodedDtype) and left.dtype == right.dtype
    absent = absent_from(pool, cols)
    held = sorted({v for c in cols for v in c if v is not None})

    # == and != with a scalar, in the dictionary and not: NA on a null row, as plain `string` gives.
    for scalar in [*held[:3], *absent[:3], None]:
        assert listed(left == scalar) == listed(p == scalar)
        assert listed(left != scalar) == listed(p != scalar)
    # ... and with another column, coded against the same dictionary or plain.
    assert listed(left == other) == listed(p == q)
    assert listed(left != other) == listed(p != q)
    assert listed(left == q) == listed(p == q)
    assert listed(left.array == q.array) == listed(p.array == q.array)
    assert listed(left == other_own) == listed(p == q)
    assert listed(left != other_own) == listed(p != q)

    # isin: with codes, plain strings, absent strings and nulls.
    for among in (right_values, [*right_values, *absent[:2]], absent[:3], [None, *held[:1]], []):
        assert left.isin(among).tolist() == p.isin(among).tolist(), among
    assert left.isin(right).tolist() == p.isin(plain(right_values)).tolist()
    assert left.isin(other_own).tolist() == p.isin(q).tolist()

    # sort_values, nulls first and last: the values only (equal values are the same string anyway).
    for ascending in (True, False):
        for na_position in ("first", "last"):
            got = left.sort_values(ascending=ascending, na_position=na_position)
            want = p.sort_values(ascending=ascending, na_position=na_position)
            assert listed(got) == listed(want)
            assert listed(left[got.index]) == listed(got)

    # groupby(...).size(): the index is coded, the plain one `string`: compared as strings.
    for dropna in (True, False):
        got = pd.DataFrame({"k": left}).groupby("k", dropna=dropna).size()
        want = pd.DataFrame({"k": p}).groupby("k", dropna=dropna).size()
        assert listed(got.index) == listed(want.index) and got.tolist() == want.tolist()

    assert listed(left.drop_duplicates()) == listed(p.drop_duplicates())
    assert left.drop_duplicates().index.tolist() == p.drop_duplicates().index.tolist()
    assert listed(left.unique()) == listed(p.unique())
    assert listed(left.tolist()) == listed(p.tolist())
    assert left.isna().tolist() == p.isna().tolist()

    # value_counts: the index is coded; the order is pandas' (most frequent first, ties by first occurrence).
    counts = left.value_counts()
    want_counts = p.value_counts()
    assert listed(counts.index) == listed(want_counts.index)
    assert counts.tolist() == want_counts.tolist()
    counted = left.value_counts(dropna=False)
    assert Counter(dict(zip(listed(counted.index), counted.tolist(), strict=True))) == Counter(values)

    # fillna with a value in the dictionary stays coded; one not in it gives plain strings.
    for filler in [*held[:1], *absent[:1]]:
        got = left.fillna(filler)
        assert listed(got) == listed(p.fillna(filler))
        if filler in held:
            assert got.dtype == left.dtype

    as_string = left.astype("string")
    assert as_string.dtype == pd.StringDtype() and listed(as_string) == listed(p)

    indices = [-1, *range(len(values)), -1]
    if values:
        taken = left.array.take(indices, allow_fill=True)
        assert isinstance(taken, CodedArray)
        assert listed(taken) == listed(p.array.take(indices, allow_fill=True))
        assert listed(left.take([len(values) - 1, 0, -1])) == listed(p.take([len(values) - 1, 0, -1]))

    arrow = pa.array(left)
    assert arrow.type == pa.string() and arrow.to_pylist() == values
    assert pa.Table.from_pandas(pd.DataFrame({"k": left})).column("k").to_pylist() == values

    for name in ("min", "max"):
        got, want = getattr(left, name)(), getattr(p, name)()
        assert (got is pd.NA and want is pd.NA) or got == want, name
        got, want = getattr(left, name)(skipna=False), getattr(p, name)(skipna=False)
        assert (got is pd.NA and want is pd.NA) or got == want, name

    # merge on a coded key: both coded against one dictionary, against two, and coded with plain on either
    # side. The key comes out coded or `string`, and an outer merge puts null keys first where pandas puts
    # them last: rows compared as strings, in any order.
    lframe = pd.DataFrame({"k": left, "a": range(len(values))})
    rframe = pd.DataFrame({"k": right, "b": range(len(right_values))})
    _, (right_own,) = coded_columns([right_values], digests=not digests)
    for how in ("inner", "left", "right", "outer"):
        want = pd.merge(
            pd.DataFrame({"k": p, "a": range(len(values))}),
            pd.DataFrame({"k": plain(right_values), "b": range(len(right_values))}),
            on="k",
            how=how,
        )
        want_rows = sorted(zip(listed(want["k"]), listed(want["a"]), listed(want["b"]), strict=True), key=repr)
        for lf, rf in (
            (lframe, rframe),
            (lframe, rframe.assign(k=right_own)),
            (lframe, rframe.assign(k=plain(right_values))),
            (lframe.assign(k=p), rframe),
        ):
            got = pd.merge(lf, rf, on="k", how=how)
            rows = sorted(zip(listed(got["k"]), listed(got["a"]), listed(got["b"]), strict=True), key=repr)
            assert rows == want_rows, how


@SETTINGS
@given(st.data(), pools())
def test_concat_of_coded_columns_keeps_every_value(data: Any, pool: list[str]) -> None:
    cols = data.draw(columns(pool, min_columns=2))
    more = data.draw(columns(pool, min_columns=1))
    _, (first, second, *_) = coded_columns(cols)
    elsewhere, (third, *_) = coded_columns(more, digests=data.draw(st.booleans()))
    got = pd.concat([first, second], ignore_index=True)
    assert got.dtype == first.dtype and listed(got) == cols[0] + cols[1]
    mixed = pd.concat([first, third], ignore_index=True)
    assert listed(mixed) == cols[0] + more[0]
    if not elsewhere.same(first.array.dictionary):
        # Different dictionaries: pandas' common dtype of the two is plain `string`.
        assert mixed.dtype == pd.StringDtype()
    with_plain = pd.concat([first, plain(more[0])], ignore_index=True)
    assert with_plain.dtype == pd.StringDtype() and listed(with_plain) == cols[0] + more[0]
    frame_ = pd.concat([pd.DataFrame({"k": first}), pd.DataFrame({"k": third})], ignore_index=True)
    assert listed(frame_["k"]) == cols[0] + more[0]


# --------------------------------------------------------------------------
# 3. frames.py: the coded fast paths give the plain answers


def first_positions(values: list[Value], among: list[Value]) -> list[int]:
    first: dict[str, int] = {}
    for i, v in enumerate(among):
        if v is not None:
            first.setdefault(v, i)
    return [-1 if v is None else first.get(v, -1) for v in values]


def variants(values: list[Value], coded_same: pd.Series, coded_other: pd.Series) -> list[pd.Series]:
    """One column's values: plain, coded against the shared dictionary, and coded against its own."""
    return [plain(values), coded_same, coded_other]


@SETTINGS
@given(st.data(), pools())
def test_frames_helpers_give_the_same_answers_for_coded_and_plain_columns(data: Any, pool: list[str]) -> None:
    cols = data.draw(columns(pool, min_columns=2))
    left_values, right_values = cols[0], cols[1]
    _, (left_same, right_same, *_) = coded_columns(cols)
    _, (left_own,) = coded_columns([left_values])
    _, (right_own,) = coded_columns([right_values], digests=data.draw(st.booleans()))
    lefts = variants(left_values, left_same, left_own)
    rights = variants(right_values, right_same, right_own)
    want_positions = first_positions(left_values, right_values)
    want_isin = [p >= 0 for p in want_positions]
    for left in lefts:
        for right in rights:
            assert frames.positions(left, right).tolist() == want_positions
            assert frames.positions(left, pd.Index(right)).tolist() == want_positions
            assert frames.isin(left, right).tolist() == want_isin
            assert frames.isin(left, list(right_values)).tolist() == want_isin
            assert frames.isin(left, pd.Index(right)).tolist() == want_isin

    rows = np.array(data.draw(st.lists(st.integers(-1, len(left_values) - 1), max_size=10)), dtype=np.int64)
    want_pick = [left_values[r] if r >= 0 else None for r in rows]
    for left in lefts:
        picked = frames.pick(left, rows, index=pd.RangeIndex(len(rows)))
        assert listed(picked) == want_pick and picked.dtype == left.dtype

    # sorted_rows: by the string column, stably (the second column tells equal keys' rows apart), against
    # Python's sort, whose reverse order is stable too.
    n = len(left_values)
    ties = list(range(n))
    for direction in ("ascending", "descending"):
        order = sorted(range(n), key=lambda i: left_values[i] or "", reverse=direction == "descending")
        order = sorted(order, key=lambda i: left_values[i] is None)  # nulls last, both ways; stable
        want = [(left_values[i], ties[i]) for i in order]
        for left in lefts:
            table = pd.DataFrame({"k": left.reset_index(drop=True), "t": ties})
            got = frames.sorted_rows(table, [("k", direction)])
            assert list(zip(listed(got["k"]), got["t"], strict=True)) == want, direction

    # join_groups: per distinct key (in no promised order), its values joined in frame order.
    joined: dict[Value, list[str]] = {}
    for key, value in zip(left_values, range(n), strict=True):
        joined.setdefault(key, []).append(str(value))
    for left in lefts:
        table = pd.DataFrame({"k": left.reset_index(drop=True), "v": plain([str(i) for i in range(n)])})
        got = frames.join_groups(table, "k", "v")
        assert dict(zip(listed(got.index), got.tolist(), strict=True)) == {k: ",".join(v) for k, v in joined.items()}
    # ... and with a coded value column: Arrow's join gives null for a group that holds a null.
    keys = [str(i % 3) for i in range(n)]
    want_joined = {}
    for key in dict.fromkeys(keys):
        group = [v for k, v in zip(keys, left_values, strict=True) if k == key]
        want_joined[key] = None if None in group else ",".join(v for v in group if v is not None)
    for left in lefts:
        table = pd.DataFrame({"k": plain(keys), "v": left.reset_index(drop=True)})
        got = frames.join_groups(table, "k", "v")
        assert dict(zip(got.index, listed(got), strict=True)) == want_joined


# --------------------------------------------------------------------------
# 4. Snapshots read back value for value


def as_rows(df: pd.DataFrame) -> list[tuple[Any, ...]]:
    """A frame's rows as Python values: strings (coded or not) as str, nulls as None."""
    out = []
    for column in df.columns:
        out.append([None if pd.isna(v) else v for v in df[column].astype(object)])
    return list(zip(*out, strict=True)) if out else []


def parquet_rows(directory: Path, table: str) -> list[tuple[Any, ...]]:
    """The table's rows as plain Arrow reads its parts, no codes involved."""
    meta = inventory.read_metadata(directory)
    parts = [pq.read_table(path) for path in inventory.table_files(directory, meta)[table]]
    names = list(SCHEMA[table])
    rows: list[tuple[Any, ...]] = []
    for part in parts:
        rows += [tuple(r[n] for n in names) for r in part.to_pylist()]
    return rows


def same_values(written: Inventory, read: Inventory, directory: Path) -> None:
    for name in SCHEMA:
        got = getattr(read, name)
        assert list(got.columns) == list(SCHEMA[name])
        for column in CODED.get(name, {}):
            assert isinstance(got[column].dtype, CodedDtype), (name, column)
        want = as_rows(getattr(written, name))
        assert as_rows(got) == want, name
        stored = [tuple(None if v is None else v for v in row) for row in parquet_rows(directory, name)]
        assert len(stored) == len(want)
        for row, stored_row in zip(want, stored, strict=True):
            for value, stored_value in zip(row, stored_row, strict=True):
                if isinstance(value, str) or value is None:
                    assert value == stored_value, name


@pytest.fixture(scope="module")
def scanned() -> Inventory:
    return scan(LocalStorage(FIXTURES / "demo" / "docker/registry/v2"))


def test_a_snapshot_reads_back_the_scan_value_for_value(tmp_path: Path, scanned: Inventory) -> None:
    write_snapshot(scanned, tmp_path / "snap")
    read = read_snapshot(tmp_path / "snap")
    assert read.counts() == scanned.counts() and read.counts()["blobs"] > 0
    same_values(scanned, read, tmp_path / "snap")


def test_a_snapshot_in_many_parts_reads_back_the_same(
    tmp_path: Path, scanned: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_GROUP", 2)
    monkeypatch.setattr(snapshot_writer, "ROWS_PER_PART", 3)
    monkeypatch.setattr(inventory, "WRITE_ROWS", 5)
    monkeypatch.setattr(codes, "LOOKUP_ROWS", 3)
    write_snapshot(scanned, tmp_path / "snap")
    meta = inventory.read_metadata(tmp_path / "snap")
    assert len(meta["tables"]["blobs"]) == -(-len(scanned.blobs) // 3) > 2
    read = read_snapshot(tmp_path / "snap")
    same_values(scanned, read, tmp_path / "snap")
    # Read again, whole: the same codes, so columns of the two reads meet on their codes.
    monkeypatch.setattr(codes, "LOOKUP_ROWS", 1 << 20)
    whole = read_snapshot(tmp_path / "snap")
    assert whole.blobs["digest"].dtype == read.blobs["digest"].dtype
    assert np.array_equal(whole.blobs["digest"].array.codes, read.blobs["digest"].array.codes)


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    """A small inventory whose digest and name columns hold anything the pools hold."""
    pool = draw(pools())
    text = st.one_of(st.none(), st.sampled_from(pool))
    names = st.one_of(st.none(), st.sampled_from(["a", "b/c", "é/x", ""]))
    time = pd.Timestamp("2026-01-01", tz="UTC")
    blobs = draw(st.lists(st.tuples(text, st.integers(0, 9)), max_size=20))
    links = draw(st.lists(st.tuples(names, text, text), max_size=20))
    tags = draw(st.lists(st.tuples(names, st.sampled_from(["latest", "v1"]), text), max_size=10))
    return Inventory(
        root="/r",
        scanned_at=time.to_pydatetime(),
        blobs=frame("blobs", [(d, s, time) for d, s in blobs]),
        layer_links=frame("layer_links", links),
        tags=frame("tags", [(*t, time) for t in tags]),
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(inventories(), st.integers(1, 4), st.integers(3, 20))
def test_random_snapshots_in_parts_read_back_value_for_value(
    tmp_path_factory: pytest.TempPathFactory, inv: Inventory, rows: int, lookup: int
) -> None:
    directory = tmp_path_factory.mktemp("snap")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(snapshot_writer, "ROWS_PER_GROUP", rows)
        patch.setattr(snapshot_writer, "ROWS_PER_PART", rows * 2)
        patch.setattr(codes, "LOOKUP_ROWS", lookup)
        # Any text round-trips, names and digests no scan writes included: the refusal of those is tested apart.
        patch.setattr(inventory, "bad_rows", lambda tables: None)
        write_snapshot(inv, directory)
        read = read_snapshot(directory)
    same_values(inv, read, directory)
    # The tables share one dictionary of digests: a digest's code is the same in every table.
    digests = read.blobs["digest"].array.dictionary
    assert read.layer_links["target"].array.dictionary.same(digests)
    assert read.tags["digest"].array.dictionary.same(digests)
