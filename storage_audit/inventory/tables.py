"""The inventory: one pandas DataFrame per kind of stored object, and its Parquet snapshots."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage_audit.core.memory import release, steady_allocator
from storage_audit.core.shard import SHARD_DIR_PATTERN
from storage_audit.core.version import __version__
from storage_audit.inventory.codes import CodedArray, CodedDtype, Dictionary, DigestCoder, TextCoder, TextDictionary
from storage_audit.inventory.schema import (
    ALIASES,
    CODED,
    DIGESTS,
    METADATA_FILE,
    NAMES,
    OPT_INT,
    PART_PATTERN,
    READABLE_FORMATS,
    SCHEMA,
    SNAPSHOT_FORMAT,
    STR,
    TIME,
    VIEW_FILE,
    VIEWS_SINCE,
    By,
)
from storage_audit.inventory.snapshot_writer import arrow_schema
from storage_audit.inventory.validate import (
    Bad,
    SnapshotError,
    bad_rows,
    metadata_problem,
    scanned_at,
    schema_problem,
    view_problem,
)
from storage_audit.storage.base import AccessError, open_regular, read_regular

# The system allocator gives back to the system what the analyses' many short-lived Arrow arrays free;
# Arrow's default one kept some 90 MB more at the peak of `orphans` on a tree of 600,000 blobs.
pa.set_memory_pool(pa.system_memory_pool())

WRITE_ROWS = 1024 * 1024
"""Rows of a frame converted to Arrow at a time when it is written."""
METADATA_LIMIT = 4 << 20
"""Bytes a snapshot's metadata.json may take: it lists each table's parts, a few kilobytes even for a huge tree."""


def frame(table: str, rows: Any = None) -> pd.DataFrame:
    """A DataFrame of `table`'s columns and dtypes, from a list of rows or a dict of columns."""
    columns = SCHEMA[table]
    df = pd.DataFrame(rows if rows is not None else [], columns=list(columns))
    return conform(table, df)


def conform(table: str, df: pd.DataFrame) -> pd.DataFrame:
    """Cast `df` to `table`'s schema so that scans and snapshots compare equal."""
    columns = SCHEMA[table]
    out = df.loc[:, list(columns)].reset_index(drop=True)
    for name, (dtype, _) in columns.items():
        if dtype == STR and isinstance(out[name].dtype, CodedDtype):
            continue
        if dtype == TIME:
            out[name] = pd.to_datetime(out[name], utc=True).astype(TIME)
        else:
            out[name] = out[name].astype(dtype)
    return out


@dataclass
class Inventory:
    """Everything a scan read: one DataFrame per table, plus where, when, and how long the scan took (when known)."""

    root: str
    scanned_at: datetime
    repositories: pd.DataFrame = field(default_factory=lambda: frame("repositories"))
    tags: pd.DataFrame = field(default_factory=lambda: frame("tags"))
    tag_history: pd.DataFrame = field(default_factory=lambda: frame("tag_history"))
    revisions: pd.DataFrame = field(default_factory=lambda: frame("revisions"))
    manifests: pd.DataFrame = field(default_factory=lambda: frame("manifests"))
    references: pd.DataFrame = field(default_factory=lambda: frame("references"))
    layer_links: pd.DataFrame = field(default_factory=lambda: frame("layer_links"))
    blobs: pd.DataFrame = field(default_factory=lambda: frame("blobs"))
    uploads: pd.DataFrame = field(default_factory=lambda: frame("uploads"))
    findings: pd.DataFrame = field(default_factory=lambda: frame("findings"))
    scan_seconds: float | None = None
    origin: dict[str, str] = field(default_factory=dict)
    """Where a tree in object storage was read (bucket, prefix, endpoint): never a credential."""

    def __post_init__(self) -> None:
        if not self.coded():
            # Made from plain frames: coded here, so that every analysis meets codes.
            builder = FrameBuilder()
            for name, df in self.tables().items():
                builder.add(name, pa.Table.from_pandas(df, preserve_index=False))
            for name, df in builder.frames().items():
                setattr(self, name, df)

    def coded(self) -> bool:
        """Whether every column of CODED is coded, digests against one dictionary and names against another."""
        shared: dict[str, Any] = {}
        for table, columns in CODED.items():
            for column, kind in columns.items():
                array = getattr(self, table)[column].array
                if not isinstance(array, CodedArray):
                    return False
                if kind in (DIGESTS, NAMES) and shared.setdefault(kind, array.dictionary) is not array.dictionary:
                    return False
        return True

    @property
    def digests(self) -> Dictionary:
        """The dictionary of every digest column."""
        array = self.blobs["digest"].array
        assert isinstance(array, CodedArray)
        return array.dictionary

    def tables(self) -> dict[str, pd.DataFrame]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SCHEMA}

    def counts(self) -> dict[str, int]:
        return {name: len(df) for name, df in self.tables().items()}

    def metadata(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "tool": "storage-audit",
            "version": __version__,
            "root": self.root,
            **({"origin": self.origin} if self.origin else {}),
            "scanned_at": self.scanned_at.isoformat(),
            "scan_seconds": self.scan_seconds,
            "counts": self.counts(),
            "blob_bytes": int(self.blobs["size"].sum()),
            "upload_bytes": int(self.uploads["bytes"].sum()),
        }


def write_snapshot(inv: Inventory, directory: Path, views: Mapping[str, pd.DataFrame] | None = None) -> None:
    """Write every table, and the given report views, as Parquet, then `metadata.json` last.

    The metadata's presence marks a whole snapshot; it lists the tables' files and the views stored.
    """
    from storage_audit.inventory.snapshot_writer import SnapshotWriter

    out = SnapshotWriter(directory)
    for name, df in inv.tables().items():
        for start in range(0, len(df), WRITE_ROWS):
            out.write(name, pa.Table.from_pandas(df.iloc[start : start + WRITE_ROWS], preserve_index=False))
    finish_snapshot(out, inv, views or {})


def finish_snapshot(
    out: Any, inv: Inventory, views: Mapping[str, pd.DataFrame], more: Mapping[str, Any] | None = None
) -> None:
    """Write the views of a snapshot whose tables `out` (a SnapshotWriter) wrote, then its metadata (with `more`
    fields), last."""
    for name, df in views.items():
        out.write_view(name, pa.Table.from_pandas(df, preserve_index=False))
        del df
        # What computing the view freed goes back to the system before the next one.
        release()
    out.close(inv.metadata() | dict(more or {}))


def read_view(directory: Path, name: str, every_column: bool = True) -> pd.DataFrame | None:
    """The report view `name` stored in a snapshot, or None when the snapshot holds none, or one that an earlier
    version computed otherwise (see VIEWS_SINCE); ValueError when unreadable, or not that view as the tool writes
    it (without `every_column`, a column may be missing)."""
    meta = read_metadata(directory)
    views = meta.get("views")
    if not isinstance(views, list) or name not in views:
        return None
    stored_format = meta.get("views_format", 1)
    if not isinstance(stored_format, int) or stored_format < VIEWS_SINCE.get(name, 1):
        return None
    path = directory / VIEW_FILE.format(name)
    try:
        with _parquet(path) as parquet:
            view = parquet.read()
        problem = view_problem(By(name), view, every_column)
        if problem is not None:
            raise SnapshotError(path, problem)
        return view.to_pandas()
    except SnapshotError as exc:
        raise ValueError(f"unreadable snapshot: {exc.below(directory)}") from exc
    except Exception as exc:  # OSError, or pyarrow's own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc


SHARD_SPREAD = timedelta(hours=6)
"""The longest time between the first and the last share of one scan; shares further apart are of other scans."""


def is_shard_set(directory: Path) -> bool:
    """Whether `directory` is no snapshot itself but holds shares of one (`scan -o DIR --shard I/N`)."""
    try:
        if (directory / METADATA_FILE).exists():
            return False
        return any(SHARD_DIR_PATTERN.fullmatch(name) for name in os.listdir(directory))
    except OSError:
        return False


def read_metadata(directory: Path) -> dict[str, Any]:
    """A snapshot's metadata.json, or the metadata of a whole shard set (see `shard_set_metadata`); raises
    ValueError when it is unreadable (not a regular file, too big, not JSON), names no snapshot of a known format,
    holds fields the tool does not write (a scan time without its offset), or is one share of a scan alone."""
    if is_shard_set(directory):
        return shard_set_metadata(directory)
    meta = _own_metadata(directory)
    shard = meta.get("shard")
    if shard is not None:
        raise ValueError(
            f"one share ({_share_text(shard)}) of a scan, which answers nothing alone: read the directory that "
            "holds all its shares"
        )
    return meta


def _share_text(shard: Any) -> str:
    if isinstance(shard, dict):
        return f"{shard.get('index')}/{shard.get('count')}"
    return repr(shard)


def shard_set_metadata(directory: Path) -> dict[str, Any]:
    """The metadata of the shares in `directory` read as one snapshot: the tables' files of every share, in order;
    ValueError for an incomplete or mixed set (a share missing, of another N, root or time)."""
    names = sorted(name for name in os.listdir(directory) if SHARD_DIR_PATTERN.fullmatch(name))
    strays = sorted(set(os.listdir(directory)) - set(names))
    if strays:
        raise ValueError(f"a directory of shards that holds {strays[0]!r} too")
    metas = []
    for name in names:
        try:
            meta = _own_metadata(directory / name)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        shard = meta.get("shard")
        match = SHARD_DIR_PATTERN.fullmatch(name)
        assert match is not None
        if not isinstance(shard, dict) or [shard.get("index"), shard.get("count")] != [int(match[1]), int(match[2])]:
            raise ValueError(f"{name}: its metadata names no share {int(match[1])}/{int(match[2])}")
        metas.append(meta)
    counts = sorted({meta["shard"]["count"] for meta in metas})
    if len(counts) > 1:
        raise ValueError(f"a mixed set of shards: of {' and of '.join(map(str, counts))} shares")
    count = counts[0]
    missing = sorted(set(range(count)) - {meta["shard"]["index"] for meta in metas})
    if missing:
        shown = ", ".join(f"{index}/{count}" for index in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"an incomplete set of shards: {shown} missing")
    roots = sorted({meta["root"] for meta in metas})
    if len(roots) > 1:
        raise ValueError(f"a mixed set of shards: of {roots[0]} and of {roots[1]}")
    origins = {json.dumps(meta.get("origin"), sort_keys=True) for meta in metas}
    if len(origins) > 1:
        raise ValueError("a mixed set of shards: of different storage origins")
    times = sorted(scanned_at(meta) for meta in metas)  # type: ignore[type-var]
    if times[-1] - times[0] > SHARD_SPREAD:  # type: ignore[operator]
        raise ValueError(
            f"a mixed set of shards: scanned from {times[0].isoformat()} to {times[-1].isoformat()}, "  # type: ignore[union-attr]
            f"more than {SHARD_SPREAD} apart"
        )
    first = metas[0]
    tables = {
        table: [f"{name}/{part}" for name, meta in zip(names, metas, strict=True) for part in meta["tables"][table]]
        for table in SCHEMA
    }
    seconds = [s for s in (meta.get("scan_seconds") for meta in metas) if isinstance(s, int | float)]
    return {
        "format": first["format"],
        "tool": "storage-audit",
        "version": first.get("version"),
        "root": first["root"],
        **({"origin": first["origin"]} if "origin" in first else {}),
        "scanned_at": times[0].isoformat(),  # type: ignore[union-attr]
        "scan_seconds": max(seconds) if len(seconds) == len(metas) else None,
        "tables": tables,
        "views": [],
        "shards": count,
    }


def _own_metadata(directory: Path) -> dict[str, Any]:
    """The metadata.json of `directory` itself, validated."""
    try:
        meta = json.loads(read_regular(directory / METADATA_FILE, METADATA_LIMIT))
    except AccessError as exc:
        raise ValueError(f"unreadable snapshot: {METADATA_FILE}: {exc.reason}") from exc
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"unreadable snapshot: {METADATA_FILE}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("tool") != "storage-audit" or meta.get("format") not in READABLE_FORMATS:
        raise ValueError("metadata.json is not a storage-audit snapshot of a known format")
    problem = metadata_problem(meta)
    if problem is not None:
        raise ValueError(f"unreadable snapshot: {METADATA_FILE}: {problem}")
    return meta


def table_files(directory: Path, meta: Mapping[str, Any]) -> dict[str, list[Path]]:
    """The files of each table of a snapshot, in order; raises ValueError when the metadata lists others."""
    if meta["format"] == 1:
        return {name: [directory / f"{name}.parquet"] for name in SCHEMA}
    listed = meta.get("tables")
    if not isinstance(listed, dict) or set(listed) != set(SCHEMA):
        raise ValueError("unreadable snapshot: metadata.json does not list the files of every table")
    # A shard set's tables are its shares' files, each below its share's directory.
    shards = f"(?:{SHARD_DIR_PATTERN.pattern}/)?" if meta.get("shards") else ""
    files = {}
    for name in SCHEMA:
        parts = listed[name]
        # Only `<table>/part-NNNNN.parquet`: a listed path never leads out of the snapshot.
        if (
            not isinstance(parts, list)
            or not parts
            or not all(
                isinstance(p, str) and re.fullmatch(f"{shards}{re.escape(name)}/{PART_PATTERN}", p) for p in parts
            )
        ):
            raise ValueError(f"unreadable snapshot: metadata.json lists no valid files for {name}")
        files[name] = [directory / p for p in parts]
        # Parts are opened without following a link; their table's directory is no link either.
        for below in sorted({p.rpartition(f"{name}/")[0] for p in parts}):
            _check_table_directory(directory / below, name)
    return files


def _check_table_directory(directory: Path, name: str) -> None:
    try:
        mode = os.lstat(directory / name).st_mode
    except FileNotFoundError:
        return  # a snapshot stripped down to its views
    except OSError as exc:
        raise ValueError(f"unreadable snapshot: {name}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(mode):
        raise ValueError(f"unreadable snapshot: {name}: not a directory")


@contextmanager
def _parquet(path: Path, table: str | None = None) -> Iterator[pq.ParquetFile]:
    """A Parquet file of a snapshot, opened as a regular file (through no symbolic link, never waiting on a FIFO);
    with `table`, holding that table's columns. Raises SnapshotError."""
    try:
        source = open_regular(path)
    except AccessError as exc:
        raise SnapshotError(path, exc.reason) from exc
    with source:
        try:
            parquet = pq.ParquetFile(source)
        except pa.ArrowException as exc:
            raise SnapshotError(path, f"not a Parquet file: {exc}") from exc
        problem = None if table is None else schema_problem(table, parquet.schema_arrow)
        if problem is not None:
            raise SnapshotError(path, problem)
        yield parquet


def _holding(bad: Bad, paths: list[Path]) -> Path:
    """The first of a table's files holding the rows `bad` describes (the table's directory, if none does)."""
    for path in paths:
        with _parquet(path) as parquet:
            if bad.found_in(parquet.read(columns=[bad.column]).column(0)):
                return path
    return paths[0].parent


def read_findings(directory: Path) -> pd.DataFrame:
    """The kind and path of each finding a snapshot holds; none of a snapshot stripped down to its views."""
    meta = read_metadata(directory)
    paths = table_files(directory, meta)["findings"]
    if not all(os.path.lexists(path) for path in paths):
        return pd.DataFrame({"kind": pd.Series(dtype="string"), "path": pd.Series(dtype="string")})
    try:
        frames = []
        for path in paths:
            with _parquet(path, "findings") as parquet:
                frames.append(parquet.read(columns=None if meta.get("shards") else ["kind", "path"]).to_pandas())
        found = pd.concat(frames, ignore_index=True)
        if meta.get("shards"):  # a finding two shares met is one
            found = found.drop_duplicates().sort_values(["path", "kind"], kind="stable", ignore_index=True)
        return found[["kind", "path"]]
    except SnapshotError as exc:
        raise ValueError(f"unreadable snapshot: {exc.below(directory)}") from exc
    except Exception as exc:  # OSError, or pyarrow's own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc


class Columns:
    """The tables of a snapshot, read from its Parquet files a row group or a column at a time."""

    def __init__(self, files: Mapping[str, list[Path]]) -> None:
        self.files = files

    def batches(self, table: str, columns: list[str]) -> Iterator[list[pa.Array]]:
        """The columns' values, a row group at a time; the next one is read (pyarrow lets go of the
        interpreter) while this one is coded."""
        with ExitStack() as opened, ThreadPoolExecutor(1) as pool:
            groups = [
                (source, group)
                for source in (opened.enter_context(_parquet(path, table)) for path in self.files[table])
                for group in range(source.num_row_groups)
            ]
            ahead = None
            for at, (source, group) in enumerate(groups):
                read = ahead.result() if ahead is not None else source.read_row_group(group, columns=columns)
                if at + 1 < len(groups):
                    ahead = pool.submit(groups[at + 1][0].read_row_group, groups[at + 1][1], columns=columns)
                yield [_one_array(read.column(c)) for c in columns]

    def column(self, table: str, column: str) -> pa.ChunkedArray:
        parts = []
        for path in self.files[table]:
            with _parquet(path, table) as parquet:
                parts.append(parquet.read(columns=[column]).column(0))
        return pa.chunked_array([chunk for part in parts for chunk in part.chunks], type=parts[0].type)


def _one_array(values: pa.ChunkedArray) -> pa.Array:
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


class FrameBuilder:
    """The frames of an inventory's tables, made from batches of rows or of columns.

    The text columns of CODED are coded as their values come, digests against one dictionary and
    repository names against another, both shared by every table, so that no table's text is ever held
    whole and the analyses join tables on integers; the other columns are kept as they come.
    """

    def __init__(self, tables: Iterable[str] = tuple(SCHEMA)) -> None:
        wanted = set(tables)
        self.tables = [name for name in SCHEMA if name in wanted]
        self.digests = DigestCoder()
        self.names = TextCoder()
        self.own: dict[tuple[str, str], TextCoder] = {}
        self.same: dict[tuple[str, str], list[np.ndarray]] = {}
        self.plain: dict[tuple[str, str], list[pa.Array]] = {}

    def extend(self, table: str, column: str, values: pa.Array, like: pa.Array | None = None) -> None:
        """Append values to one column; `like` holds, for a column of ALIASES, the other column's values."""
        key = (table, column)
        kind = CODED.get(table, {}).get(column)
        if kind is None:
            self.plain.setdefault(key, []).append(values)
        elif kind == DIGESTS:
            skip = None
            if like is not None:
                # Where it names the same digest as its alias, the row takes the alias's code at the end.
                skip = np.asarray(pc.fill_null(pc.equal(values, like), False).to_numpy(zero_copy_only=False))
                self.same.setdefault(key, []).append(skip)
            self.digests.extend(key, values, skip)
        elif kind == NAMES:
            self.names.extend(key, values)
        else:
            self.own.setdefault(key, TextCoder()).extend(key, values)

    def add(self, table: str, batch: pa.Table) -> None:
        """Append a batch of rows of `table`, every column."""
        for column in SCHEMA[table]:
            like = ALIASES.get((table, column))
            self.extend(table, column, _one_array(batch[column]), _one_array(batch[like]) if like else None)

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table as a frame of the schema's dtypes; the builder is spent."""
        digests, codes = self.digests.finish()
        for key, same in self.same.items():
            equal = np.concatenate(same)
            codes[key][equal] = codes[key[0], ALIASES[key]][equal]
        coded = {key: digests.column(values) for key, values in codes.items()}
        names, codes = self.names.finish()
        coded |= {key: names.column(values) for key, values in codes.items()}
        for key, coder in self.own.items():
            dictionary, codes = coder.finish()
            coded[key] = dictionary.column(codes[key])
        empty: dict[str, Dictionary] = {DIGESTS: digests, NAMES: names}
        frames = {}
        for table in self.tables:
            out = {}
            schema = arrow_schema(table)
            for column, (dtype, _) in SCHEMA[table].items():
                key = (table, column)
                if key in coded:
                    out[column] = coded.pop(key)
                elif column in CODED.get(table, {}):
                    nothing = empty.get(CODED[table][column]) or TextDictionary(pa.array([], type=pa.string()))
                    out[column] = nothing.column(np.zeros(0, dtype=np.int32))
                else:
                    chunks = self.plain.pop(key, [])
                    kind_of = chunks[0].type if chunks else schema.field(column).type
                    values = pa.chunked_array([c.cast(kind_of) for c in chunks] or [pa.array([], type=kind_of)])
                    out[column] = values.to_pandas(types_mapper=_MAPPERS.get(dtype, {}).get)
                    del values, chunks
            frames[table] = conform(table, pd.DataFrame(out, copy=False))
        return frames


def coded_frames(source: Columns, tables: Iterable[str] = tuple(SCHEMA)) -> dict[str, pd.DataFrame]:
    """Every table of `source` as a frame of the schema's dtypes, its text columns in CODED coded.

    Column by column, the blobs' digests first (most digests name a blob); the rest whole.
    """
    builder = FrameBuilder(tables)
    for table, kinds in CODED.items():
        if table not in builder.tables:
            continue
        for column in kinds:
            like = ALIASES.get((table, column))
            for batch in source.batches(table, [column] if like is None else [column, like]):
                builder.extend(table, column, *batch)
            builder.digests.settle((table, column))
    for table in builder.tables:
        for column in SCHEMA[table]:
            if column not in CODED.get(table, {}):
                builder.plain[table, column] = source.column(table, column).chunks
    return builder.frames()


_STRING = pd.StringDtype()
_MAPPERS: dict[str, dict[pa.DataType, Any]] = {
    STR: {pa.string(): _STRING, pa.large_string(): _STRING, pa.null(): _STRING},
    OPT_INT: {pa.int64(): pd.Int64Dtype(), pa.null(): pd.Int64Dtype()},
}


_BY_REPOSITORY = ("repositories", "tags", "tag_history", "revisions", "layer_links", "uploads")


def _as_one_scan(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables of a shard set's shares, one after another, as one scan of the whole tree gives them.

    Every repository and every blob is in one share alone, but a manifest (its references, its findings) is read
    by each share whose links name it: kept once. Rows come in the order of the walk: repositories by their
    top-level directory, blobs by digest, findings by path and kind.
    """
    out = dict(tables)
    out["findings"] = (
        tables["findings"].drop_duplicates().sort_values(["path", "kind"], kind="stable", ignore_index=True)
    )
    blobs = tables["blobs"]["digest"].array
    assert isinstance(blobs, CodedArray)
    out["blobs"] = tables["blobs"].iloc[np.argsort(blobs.codes, kind="stable")].reset_index(drop=True)
    for table in _BY_REPOSITORY:
        names = tables[table]["repository"].array
        assert isinstance(names, CodedArray)
        every = names.dictionary.strings(np.arange(len(names.dictionary)))
        tops = pc.list_element(pc.split_pattern(every, "/", max_splits=1), 0)
        rank = np.asarray(pc.rank(tops, sort_keys="ascending", tiebreaker="dense"), dtype=np.int64)
        order = np.argsort(rank[names.codes] if len(rank) else names.codes, kind="stable")
        out[table] = tables[table].iloc[order].reset_index(drop=True)
    out["manifests"], out["references"] = _manifests_once(out, tables["manifests"], tables["references"])
    return out


def _manifests_once(
    tables: dict[str, pd.DataFrame], manifests: pd.DataFrame, references: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each manifest once, in the order a scan reads them (what revision links name, then tags, then what lists
    and indexes name), and its references once, in its order."""
    digests = manifests["digest"].array
    assert isinstance(digests, CodedArray)
    size = len(digests.dictionary)
    never = np.iinfo(np.int64).max
    first = np.full(size + 1, never, dtype=np.int64)
    at = 0
    revisions = tables["revisions"]
    named = [
        np.where(
            revisions["target"].array.codes >= 0, revisions["target"].array.codes, revisions["digest"].array.codes
        )[revisions["linked"].to_numpy(dtype=bool)],
        tables["tags"]["digest"].array.codes,
        tables["tag_history"]["digest"].array.codes,
        digests.codes,
    ]
    for codes in named:
        codes = np.where(codes >= 0, codes, size)
        distinct, where = np.unique(codes, return_index=True)
        new = distinct[first[distinct] == never]
        order = np.argsort(where[np.isin(distinct, new)], kind="stable")
        first[new[order]] = at + np.arange(len(new))
        at += len(new)
    rank = first[np.where(digests.codes >= 0, digests.codes, size)]
    _, once = np.unique(digests.codes, return_index=True)
    kept = manifests.iloc[once[np.argsort(rank[once], kind="stable")]].reset_index(drop=True)
    # References follow their manifest, in the order they were read.
    placed = np.full(size + 1, len(kept), dtype=np.int64)
    placed[kept["digest"].array.codes] = np.arange(len(kept))
    refs = references.drop_duplicates(ignore_index=True)
    owner = refs["manifest"].array.codes
    order = np.argsort(placed[np.where(owner >= 0, owner, size)], kind="stable")
    return kept, refs.iloc[order].reset_index(drop=True)


def read_snapshot(directory: Path) -> Inventory:
    """Load a snapshot written by `write_snapshot`; raises ValueError when it is not one."""
    meta = read_metadata(directory)
    files = table_files(directory, meta)
    try:
        steady_allocator()
        tables = coded_frames(Columns(files))
        if meta.get("shards"):
            tables = _as_one_scan(tables)
        release()
        bad = bad_rows(tables)
        if bad is not None:
            raise SnapshotError(_holding(bad, files[bad.table]), bad.problem)
        seconds = meta.get("scan_seconds")  # absent from snapshots of earlier versions
        when = scanned_at(meta)
        assert isinstance(when, datetime)  # read_metadata refused any other
        return Inventory(
            root=meta["root"],
            scanned_at=when,
            scan_seconds=float(seconds) if isinstance(seconds, int | float) else None,
            **tables,
        )
    except SnapshotError as exc:
        raise ValueError(f"unreadable snapshot: {exc.below(directory)}") from exc
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable snapshot: {exc}") from exc
    except ValueError:
        raise
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise ValueError(f"unreadable snapshot: {exc}") from exc
