"""Scan a registry's storage tree into an Inventory; big trees are walked by several worker processes.

pyarrow is imported only once the workers run: a process that has not loaded
it yet has one thread, and can start its workers by forking, in milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from storage_audit.core import clock
from storage_audit.core.findings import Finding
from storage_audit.core.memory import release, steady_allocator
from storage_audit.core.paths import BlobPrefix, InvalidPath, path_for
from storage_audit.core.shard import Shard
from storage_audit.inventory.schema import BOOL, INT, OPT_INT, SCHEMA, STR, TIME
from storage_audit.scan.rows import SENT_AS_TEXT, Packed
from storage_audit.scan.walk import TABLES, Columns, Totals, Walker, read_manifest_units, walk_units
from storage_audit.storage.base import AccessError, ProcessModel, Storage

PARALLEL_MIN_BLOBS = 5000
"""Below this many blobs (estimated) starting worker processes costs more than it saves."""
REPOSITORY_BATCHES_PER_WORKER = 16
BLOB_BATCHES_PER_WORKER = 4
MAX_WORKERS = 8
CODE_ROWS = 1 << 18
"""The rows of a scan's parts held before they are coded together (see `_Frames`): some 40 MB of text."""
JOBS_AHEAD_PER_WORKER = 3
"""Jobs submitted per worker and not yet taken: one running, the next queued, one done and waiting its turn."""

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from storage_audit.inventory.snapshot_writer import SnapshotWriter
    from storage_audit.inventory.tables import FrameBuilder, Inventory

T = TypeVar("T")


class Progress(Protocol):
    """Receives progress from a scan; the library never prints by itself."""

    def update(self, phase: str, advance: int) -> None: ...


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: `workers` processes (0: chosen from the machine and the tree, 1: this process only); `shard`:
    read only that share of the repositories and blob prefixes (None: all)."""

    progress: Progress | None = None
    workers: int = 0
    shard: Shard | None = None


def _chunks(items: Sequence[T], count: int) -> list[list[T]]:
    """Split `items` into at most `count` contiguous runs, so merged results keep their order."""
    size = max(1, -(-len(items) // max(1, count)))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _estimated_blobs(storage: Storage, prefixes: list[tuple[str, str]]) -> int:
    if not prefixes:
        return 0
    alg, prefix = prefixes[len(prefixes) // 2]
    try:
        return len(storage.subdirs(path_for(BlobPrefix(alg, prefix)))[0]) * len(prefixes)
    except (AccessError, InvalidPath):
        return 0


@functools.cache
def _arrow_type(table: str, column: str) -> pa.DataType:
    import pyarrow as pa

    if (table, column) in SENT_AS_TEXT:
        return pa.string()  # the text the walker read; the inventory parses it
    return {
        # pandas keeps its Arrow strings as large_string: built so, they need no cast, no copy, to become frames.
        STR: pa.large_string(),
        INT: pa.int64(),
        OPT_INT: pa.int64(),
        BOOL: pa.bool_(),
        TIME: pa.timestamp("ns", tz="UTC"),  # the walker's nanosecond mtimes
    }[SCHEMA[table][column][0]]


def _arrow(table: str, columns: Sequence[Sequence[object]]) -> pa.Table:
    """One inventory table's columns, as the walker sends them (lists, or Packed from a worker), as an Arrow table."""
    import pyarrow as pa

    # The system allocator gives back what the many small conversions free;
    # Arrow's default one kept about 150 MB of it on a tree of 600,000 blobs.
    pool = pa.system_memory_pool()
    made: dict[int, pa.Array] = {}
    arrays = {}
    for name, values in zip(SCHEMA[table], columns, strict=True):
        wanted = _arrow_type(table, name)
        if isinstance(values, Packed):
            # A Packed met twice is one column sent for two: both get the same array.
            array = made.get(id(values))
            if array is None:
                array = made[id(values)] = _unpacked(values, wanted, pool)
            arrays[name] = array if array.type == wanted else array.cast(wanted, memory_pool=pool)
        else:
            arrays[name] = pa.array(values, type=wanted, memory_pool=pool)
    return pa.table(arrays)


def _unpacked(column: Packed, wanted: pa.DataType, pool: pa.MemoryPool) -> pa.Array:
    """A worker's packed column as an Arrow array of type `wanted`, made on its very buffers where they fit."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def bits(flags: bytes) -> pa.Buffer:
        """A byte per row, 0 or not, as the bitmap Arrow keeps."""
        as_bytes = pa.Array.from_buffers(pa.uint8(), len(flags), [None, pa.py_buffer(flags)])
        return pc.not_equal(as_bytes, 0, memory_pool=pool).buffers()[1]

    n = len(column)
    valid = None if column.valid is None else bits(column.valid)
    if column.offsets is not None:
        offsets = Packed(INT, n + 1, column.offsets).integers()
        array = pa.Array.from_buffers(pa.large_string(), n, [valid, pa.py_buffer(offsets), pa.py_buffer(column.data)])
    elif column.kind == BOOL:
        array = pa.Array.from_buffers(pa.bool_(), n, [valid, bits(column.data)])
    else:
        array = pa.Array.from_buffers(wanted, n, [valid, pa.py_buffer(column.integers())])
    array.validate()
    return array if array.type == wanted else array.cast(wanted, memory_pool=pool)


def concat(table: str, parts: list[pa.Table]) -> pa.Table:
    """The parts of one table, in order, as one table (an empty one of the right types when none)."""
    import pyarrow as pa

    if not parts:
        return _arrow(table, [() for _ in SCHEMA[table]])
    return pa.concat_tables(parts)


def _start_method() -> BaseContext:
    """fork when this process has a single thread (never safe otherwise), else spawn.

    A forked worker starts at once with what this process has loaded; a
    spawned one starts a new interpreter and imports the walker.
    """
    try:
        alone = sys.platform == "linux" and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        alone = False
    return multiprocessing.get_context("fork" if alone else "spawn")


def _start_worker() -> None:
    """A worker holds the rows it will send, none of them in a reference cycle: collecting would only re-scan them."""
    gc.disable()


def _workers(options: ScanOptions, storage: Storage, prefixes: list[tuple[str, str]]) -> int:
    if storage.process_model is not ProcessModel.WORKERS:
        return 1
    if options.workers > 0:
        return options.workers
    if _estimated_blobs(storage, prefixes) < PARALLEL_MIN_BLOBS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


class _Taker(Protocol):
    """Takes what each job of a scan sends."""

    def take(self, part: Columns) -> None: ...


class _Sink(_Taker, Protocol):
    """Takes what each job sends, and says what the jobs are to send."""

    send_rows: bool
    """Whether the workers are to send every row, or only the revisions and the totals."""


S = TypeVar("S", bound=_Sink)


class _Frames:
    """Codes every table as its parts come (see inventory.FrameBuilder): no table's text is held whole.

    Parts are held as they come until they make CODE_ROWS rows, then made Arrow tables and coded together: a
    small tree is coded in one go once the workers are done, not in a call per part and table (which took
    twice the CPU), and a big one holds at most that many rows uncoded.
    """

    send_rows = True

    def __init__(self) -> None:
        self._builder: FrameBuilder | None = None
        self._held: dict[str, list[Sequence[Sequence[object]]]] = {}
        self._held_rows = 0

    @property
    def builder(self) -> FrameBuilder:
        if self._builder is None:
            # Parts come once the workers run: pandas may load now.
            from storage_audit.inventory.tables import FrameBuilder

            self._builder = FrameBuilder(TABLES)
        return self._builder

    def take(self, part: Columns) -> None:
        for table, columns in part.tables.items():
            self._held.setdefault(table, []).append(columns)
            self._held_rows += len(columns[0]) if columns else 0
        if self._held_rows >= CODE_ROWS:
            self._code()

    def _code(self) -> None:
        """Code the parts held, each table's in the order they came."""
        import pyarrow as pa

        held, self._held, self._held_rows = self._held, {}, 0
        for table in list(held):
            arrow = pa.concat_tables([_arrow(table, columns) for columns in held.pop(table)])
            self.builder.add(table, _with_start_times(arrow) if table == "uploads" else arrow)
            del arrow
        # The parts' many arrays, freed once coded: given back before the next ones come.
        release()

    def frames(self) -> dict[str, pd.DataFrame]:
        self._code()
        return self.builder.frames()


class _SnapshotTables:
    """Writes every part of every table to a snapshot's files as it comes, instead of keeping it.

    The writer starts with the first part, once the workers run (it loads pyarrow); the uploads,
    whose start times are parsed, and the findings, which are sorted, are written at the end.
    """

    send_rows = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._out: SnapshotWriter | None = None
        self.uploads: list[pa.Table] = []

    @property
    def out(self) -> SnapshotWriter:
        if self._out is None:
            from storage_audit.inventory.snapshot_writer import SnapshotWriter

            self._out = SnapshotWriter(self.directory)
        return self._out

    def take(self, part: Columns) -> None:
        for table, columns in part.tables.items():
            if table == "uploads":
                self.uploads.append(_arrow(table, columns))
            else:
                self.out.write(table, _arrow(table, columns))

    def finish(self, findings: list[Finding]) -> None:
        import pyarrow as pa

        from storage_audit.inventory import tables as inv_mod

        self.out.write("uploads", _with_start_times(concat("uploads", self.uploads)))
        self.uploads = []
        found = inv_mod.frame("findings", [f.row() for f in findings])
        found = found.sort_values(["path", "kind"], kind="stable", ignore_index=True)
        self.out.write("findings", pa.Table.from_pandas(found, preserve_index=False))


class _Tally:
    """Adds up the totals the workers send; they send no rows but the revisions."""

    send_rows = False

    def __init__(self) -> None:
        self.totals = Totals()

    def take(self, part: Columns) -> None:
        if part.totals is not None:
            self.totals.merge(part.totals)


class _ManifestItems:
    """The distinct manifests to parse, (repository, digest), first seen first, read once each.

    First what the revision links and tags (current or history) name: a
    dangling tag's target too, since the engine protects what it names and
    needs that manifest's contents to know what it holds. Those of tags come
    after every revision's, so the order does not depend on how the jobs were
    split. A revision directory without its link names nothing: whether it is
    there at all (an empty directory, gone on S3 or after a copy) must change
    no answer. Then, round after round, the children that the lists and
    indexes read name and that were not read yet: a child whose revision link
    was deleted is protected by the index that lists it, through its content.
    """

    def __init__(self) -> None:
        # Deduplicated as they come: a tree of 100,000 manifests has twice as many revisions and tags,
        # which kept as (repository, digest) pairs until the end held some 40 MB.
        self._revisions: dict[str, str] = {}
        self._tagged: dict[str, str] = {}
        self._listed: dict[str, str] = {}
        self._read: set[str] = set()

    def take(self, part: Columns) -> None:
        revisions = part.tables.get("revisions")
        seen = self._revisions
        if revisions:
            repos, digests, targets, linked = revisions[:4]
            for repo, digest, target, is_linked in zip(repos, digests, targets, linked, strict=True):
                if is_linked:
                    # A link whose content is unusable still names its own digest.
                    seen.setdefault(cast(str, target if target is not None else digest), cast(str, repo))
        for table in ("tags", "tag_history"):
            columns = part.tables.get(table)
            if columns:
                tagged = self._tagged
                for repo, digest in zip(columns[0], columns[2], strict=True):
                    if digest is not None and digest not in seen:
                        tagged.setdefault(cast(str, digest), cast(str, repo))
        if part.listed:
            read, listed = self._read, self._listed
            for repo, digest in part.listed:
                if digest not in read:
                    listed.setdefault(digest, repo)

    def first(self) -> list[tuple[str, str]]:
        """What the revisions and tags name; marked read."""
        items = [(repo, manifest) for manifest, repo in self._revisions.items()]
        items += [(repo, manifest) for manifest, repo in self._tagged.items() if manifest not in self._revisions]
        self._read.update(manifest for _, manifest in items)
        self._revisions, self._tagged = {}, {}
        return items

    def next(self) -> list[tuple[str, str]]:
        """What the lists and indexes read since the last call name and nothing read yet was; marked read."""
        items = [(repo, manifest) for manifest, repo in self._listed.items()]
        self._read.update(self._listed)
        self._listed = {}
        return items


def _in_worker(fn: Callable[..., Columns], *args: Any) -> Columns:
    """Run one job in a worker and pack its columns to send; first give back what the previous job left in the heap."""
    release()
    return fn(*args).packed()


def _run(
    pool: Executor | None,
    ahead: int,
    fn: Callable[..., Columns],
    jobs: list[tuple[str, tuple[Any, ...]]],
    progress: Progress | None,
    sinks: Sequence[_Taker],
    findings: list[Finding],
    meanwhile: Callable[[], object] | None = None,
    last: bool = False,
) -> threading.Thread | None:
    """Run (phase, args) jobs, in order, handing their tables to `sinks` and collecting their findings; empties `jobs`.

    With a pool, at most `ahead` jobs are submitted and not yet taken: the results of the others,
    done while an earlier, bigger one runs, would otherwise wait here as Python objects.
    `meanwhile` starts, in a thread returned to join, once the workers have their first jobs. When
    these are the `last` jobs, the workers end as soon as they are done, not once this process has
    taken every result.
    """
    # Each job's arguments go once it is done (100,000 manifests to read are some 20 MB), not with the last one.
    waiting = deque(jobs)
    jobs.clear()
    if pool is None:
        while waiting:
            phase, args = waiting.popleft()
            _take(phase, fn(*args), progress, sinks, findings)
        return None
    running: deque[tuple[str, Future[Columns]]] = deque()

    def submit(count: int) -> None:
        for _ in range(min(count, len(waiting))):
            phase, args = waiting.popleft()
            running.append((phase, pool.submit(_in_worker, fn, *args)))
            if last and not waiting:
                pool.shutdown(wait=False)

    submit(ahead)
    loader = None
    if meanwhile is not None:
        # The workers were all started by the first submit (forked, when this process had one thread), and the
        # pool's own thread runs since: a thread of ours is as safe now. In it, `meanwhile` leaves this one free
        # to keep the workers fed; run here, it kept them waiting with their first few jobs done (loading pandas
        # took a third of a second, a fifth of the walk of a tree of 60,000 blobs on 2 CPUs).
        loader = threading.Thread(target=meanwhile, name="meanwhile", daemon=True)
        loader.start()
    while running:
        phase, future = running.popleft()
        part = future.result()
        submit(1)
        _take(phase, part, progress, sinks, findings)
        del part, future  # the future holds its result too: let it go before waiting on the next
    return loader


def _take(
    phase: str, part: Columns, progress: Progress | None, sinks: Sequence[_Taker], findings: list[Finding]
) -> None:
    findings.extend(part.findings)
    for sink in sinks:
        sink.take(part)
    if progress is not None:
        progress.update(phase, part.rows())


def _read(
    storage: Storage, options: ScanOptions | None, make_sink: Callable[[], S], meanwhile: Callable[[], object] | None
) -> tuple[S, list[Finding]]:
    """Read the tree, handing every part of every table to a new sink; that sink and the findings met.

    `meanwhile` runs in a thread of this process while the workers, if any, read the tree (started once they
    are); for a remote tree, while it is listed and read.
    """
    options = options or ScanOptions()
    loader = None
    if meanwhile is not None and storage.process_model is ProcessModel.THREADS:
        # The tree is read in this one process, which mostly waits on the network meanwhile;
        # no worker is forked from it, so a thread is safe here.
        loader = threading.Thread(target=meanwhile, name="meanwhile", daemon=True)
        loader.start()
        meanwhile = None
    steady_allocator()
    shard = options.shard
    if shard is not None:
        storage.share(shard.has_repository)
    try:
        top = Walker(storage)
        units = _share(top.units(), options.shard)
        workers = _workers(options, storage, units[1])
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=_start_method(), initializer=_start_worker)
            try:
                return _walk_with(pool, workers, top, units, options.progress, make_sink(), meanwhile)
            except (BrokenProcessPool, OSError):
                # A machine that cannot start worker processes still gets its scan, in this process.
                pool.shutdown(cancel_futures=True)
                top = Walker(storage)
                units = _share(top.units(), options.shard)
            finally:
                pool.shutdown()
        return _walk_with(None, 1, top, units, options.progress, make_sink(), None)
    finally:
        if loader is not None:
            loader.join()


def _share(
    units: tuple[list[str], list[tuple[str, str]]], shard: Shard | None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The repositories and blob prefixes of `shard`'s share (all without one).

    The manifests the share's links name are read wherever their blobs lie: a manifest row may come from several
    shares (the same row), which a shard set's reader keeps once.
    """
    if shard is None:
        return units
    repositories, prefixes = units
    return [r for r in repositories if shard.has_repository(r)], [p for p in prefixes if shard.has_prefix(p[1])]


def _walk_with(
    pool: Executor | None,
    workers: int,
    top: Walker,
    units: tuple[list[str], list[tuple[str, str]]],
    progress: Progress | None,
    sink: S,
    meanwhile: Callable[[], object] | None,
) -> tuple[S, list[Finding]]:
    """Read the repositories and blob prefixes `units`, found by `top`, with `workers` processes of `pool`."""
    v2, findings = top.storage, top.part.findings
    repositories, prefixes = units
    if workers > 1:
        repositories = top.split_namespaces(repositories)
    # Repositories vary a lot in size: many small jobs keep every worker busy to the end,
    # and the evenly sized blob prefixes, queued last, fill in behind the biggest one.
    repo_batches = workers * REPOSITORY_BATCHES_PER_WORKER if workers > 1 else 1
    blob_batches = workers * BLOB_BATCHES_PER_WORKER if workers > 1 else 1
    rows = sink.send_rows
    jobs: list[tuple[str, tuple[Any, ...]]] = [
        ("repositories", (v2, chunk, [], rows)) for chunk in _chunks(repositories, repo_batches)
    ]
    jobs += [("blobs", (v2, [], chunk, rows)) for chunk in _chunks(prefixes, blob_batches)]
    ahead = workers * JOBS_AHEAD_PER_WORKER
    manifests = _ManifestItems()
    loader = _run(pool, ahead, walk_units, jobs, progress, [sink, manifests], findings, meanwhile)
    try:
        manifest_jobs = [("manifests", (v2, chunk, rows)) for chunk in _chunks(manifests.first(), repo_batches)]
        _run(pool, ahead, read_manifest_units, manifest_jobs, progress, [sink, manifests], findings, last=True)
        # The children only a list names (their revision links deleted) are few: read here, not by the
        # workers, which are gone by now; an index may list an index, hence the rounds.
        while listed := manifests.next():
            jobs = [("manifests", (v2, listed, rows, True))]
            _run(None, 0, read_manifest_units, jobs, progress, [sink, manifests], findings)
    finally:
        # Joined only now: the manifests are read meanwhile.
        if loader is not None:
            loader.join()
    return sink, findings


def tally(storage: Storage, options: ScanOptions | None = None) -> tuple[Totals, list[Finding]]:
    """Read the tree only to count and sum it: neither pyarrow nor pandas is loaded."""
    sink, findings = _read(storage, options, _Tally, meanwhile=None)
    return sink.totals, findings


def _load_pandas() -> None:
    """Import what the frames need, in a thread: where that fails, the import that needs it says why, not this.

    What an import makes lives as long as the process: the collector is held off meanwhile, then told to leave it
    for good (`gc.freeze`), so that no collection of the analysis walks it again. Collections over the modules of
    pandas and pyarrow took a tenth of a CPU-second of `orphans` on a tree of 60,000 blobs.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        with contextlib.suppress(Exception):
            import storage_audit.inventory.tables  # noqa: F401
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def _with_start_times(uploads: pa.Table) -> pa.Table:
    """The uploads with their `startedat` parsed: RFC 3339 text written by the registry; garbage becomes null."""
    import pandas as pd
    import pyarrow as pa

    text = uploads["started_at"]
    times = pd.to_datetime(pd.Series(text.to_pylist(), dtype=object), utc=True, errors="coerce", format="ISO8601")
    column = pa.array(times.astype("datetime64[ns, UTC]"), type=pa.timestamp("ns", tz="UTC"))
    return uploads.set_column(uploads.schema.get_field_index("started_at"), "started_at", column)


def scan(storage: Storage, options: ScanOptions | None = None) -> Inventory:
    """Scan a registry's storage tree into an Inventory.

    Rows come out in path order (directories are read sorted), so two scans of
    the same tree give identical frames whatever the number of workers.
    """
    scanned_at = clock.now()
    # The frames made at the end need pandas, which takes a CPU-second to import:
    # it loads while the workers read the tree, not before or after them.
    sink, found = _read(storage, options, _Frames, meanwhile=_load_pandas)
    from storage_audit.inventory import tables as inv_mod

    findings = inv_mod.frame("findings", [f.row() for f in found])
    frames = sink.frames()
    release()
    return inv_mod.Inventory(
        root=storage.location,
        origin=storage.origin,
        scanned_at=scanned_at,
        findings=findings.sort_values(["path", "kind"], kind="stable", ignore_index=True),
        **frames,
    )


@dataclass
class Streamed:
    """A scan whose tables went to a snapshot's files as it read them; the snapshot lacks its metadata yet."""

    out: SnapshotWriter
    root: str
    origin: dict[str, str]
    scanned_at: datetime
    scan_seconds: float | None = None

    def inventory(self) -> Inventory:
        """The tables written, read back as `scan` would have made them: what the analyses of the views need."""

        from storage_audit.inventory import tables as inv_mod

        parts = self.out.close_tables()
        files = {name: [self.out.directory / p for p in names] for name, names in parts.items()}
        frames = inv_mod.coded_frames(inv_mod.Columns(files))
        release()
        return inv_mod.Inventory(
            root=self.root, origin=self.origin, scanned_at=self.scanned_at, scan_seconds=self.scan_seconds, **frames
        )


def scan_to_snapshot(storage: Storage, directory: Path, options: ScanOptions | None = None) -> Streamed:
    """Scan as `scan` does, writing each table to `directory` in batches as the workers deliver them.

    Nothing grows with the tree here but the manifests to read and the findings. Finish the
    snapshot with inventory.finish_snapshot: until then it has no metadata.json, and is no snapshot.
    Raises OSError when the snapshot cannot be written.
    """
    scanned_at = clock.now()
    sink, found = _read(storage, options, lambda: _SnapshotTables(directory), meanwhile=_load_pandas)
    sink.finish(found)
    release()
    return Streamed(sink.out, storage.location, storage.origin, scanned_at)
