"""Scan a registry's storage tree into an Inventory; big trees are walked by several worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from .findings import Finding
from .walk import Columns, Walker, concat, read_manifest_units, start_worker, walk_units

PARALLEL_MIN_BLOBS = 5000
"""Below this many blobs (estimated) starting worker processes costs more than it saves."""
REPOSITORY_BATCHES_PER_WORKER = 16
BLOB_BATCHES_PER_WORKER = 4
MAX_WORKERS = 8

if TYPE_CHECKING:
    import pandas as pd

    from .inventory import Inventory

T = TypeVar("T")

WALKED = ("repositories", "tags", "tag_history", "revisions", "layer_links", "blobs", "uploads")
PARSED = ("manifests", "references")


class Progress(Protocol):
    """Receives progress from a scan; the library never prints by itself."""

    def update(self, phase: str, advance: int) -> None: ...


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: `workers` processes (0: chosen from the machine and the tree, 1: this process only)."""

    progress: Progress | None = None
    workers: int = 0


def _chunks(items: Sequence[T], count: int) -> list[list[T]]:
    """Split `items` into at most `count` contiguous runs, so merged results keep their order."""
    size = max(1, -(-len(items) // max(1, count)))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _estimated_blobs(v2: str, prefixes: list[tuple[str, str]]) -> int:
    if not prefixes:
        return 0
    alg, prefix = prefixes[len(prefixes) // 2]
    try:
        return len(os.listdir(f"{v2}/blobs/{alg}/{prefix}")) * len(prefixes)
    except OSError:
        return 0


def _workers(options: ScanOptions, v2: str, prefixes: list[tuple[str, str]]) -> int:
    if options.workers > 0:
        return options.workers
    if _estimated_blobs(v2, prefixes) < PARALLEL_MIN_BLOBS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _run(
    pool: Executor | None,
    fn: Callable[..., Columns],
    jobs: list[tuple[str, tuple[Any, ...]]],
    progress: Progress | None,
    into: dict[str, list[pa.Table]],
    findings: list[Finding],
    meanwhile: Callable[[], object] | None = None,
) -> None:
    """Run (phase, args) jobs, in order, collecting their tables and findings.

    With a pool, `meanwhile` runs here while the workers start on the jobs.
    """
    args = [job for _, job in jobs]
    results = pool.map(fn, *zip(*args, strict=True)) if pool is not None and jobs else (fn(*job) for job in args)
    if pool is not None and meanwhile is not None:
        meanwhile()
    for (phase, _), part in zip(jobs, results, strict=True):
        findings.extend(part.findings)
        for name, table in part.tables.items():
            into.setdefault(name, []).append(table)
        if progress is not None:
            progress.update(phase, part.rows())


def read_tables(
    v2: Path, options: ScanOptions | None = None, meanwhile: Callable[[], object] | None = None
) -> tuple[dict[str, pa.Table], list[Finding]]:
    """Read the `v2` tree into one Arrow table per inventory table, plus the findings met.

    This is a scan without pandas: enough to count and sum. `meanwhile` runs in
    this process while the workers, if any, read the tree.
    """
    options = options or ScanOptions()
    root = str(v2)
    top = Walker(root)
    repositories, prefixes = top.units()
    workers = _workers(options, root, prefixes)
    pool: Executor | None = None
    try:
        if workers > 1:
            # spawn, not fork: the workers need only the walker, not this process's pandas and threads.
            pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker
            )
        return _walk_with(pool, workers, root, top.part.findings, repositories, prefixes, options.progress, meanwhile)
    except (BrokenProcessPool, OSError):
        if pool is None:
            raise
        # A machine that cannot start worker processes still gets its scan, in this process.
        pool.shutdown(cancel_futures=True)
        pool = None
        top = Walker(root)
        repositories, prefixes = top.units()
        return _walk_with(None, 1, root, top.part.findings, repositories, prefixes, options.progress, None)
    finally:
        if pool is not None:
            pool.shutdown()


def _walk_with(
    pool: Executor | None,
    workers: int,
    v2: str,
    findings: list[Finding],
    repositories: list[str],
    prefixes: list[tuple[str, str]],
    progress: Progress | None,
    meanwhile: Callable[[], object] | None,
) -> tuple[dict[str, pa.Table], list[Finding]]:
    parts: dict[str, list[pa.Table]] = {}
    # Repositories vary a lot in size: many small jobs keep every worker busy to the end,
    # and the evenly sized blob prefixes, queued last, fill in behind the biggest one.
    repo_batches = workers * REPOSITORY_BATCHES_PER_WORKER if workers > 1 else 1
    blob_batches = workers * BLOB_BATCHES_PER_WORKER if workers > 1 else 1
    jobs: list[tuple[str, tuple[Any, ...]]] = [
        ("repositories", (v2, chunk, [])) for chunk in _chunks(repositories, repo_batches)
    ]
    jobs += [("blobs", (v2, [], chunk)) for chunk in _chunks(prefixes, blob_batches)]
    _run(pool, walk_units, jobs, progress, parts, findings, meanwhile)
    tables = {name: concat(name, parts.get(name, [])) for name in WALKED}
    items = _manifest_items(tables["revisions"], tables["blobs"])
    # Arrow's allocator keeps what the lookups freed; give it back before the tables grow again.
    pa.default_memory_pool().release_unused()
    manifest_jobs = [("manifests", (v2, chunk)) for chunk in _chunks(items, repo_batches)]
    _run(pool, read_manifest_units, manifest_jobs, progress, parts, findings)
    tables.update({name: concat(name, parts.get(name, [])) for name in PARSED})
    return tables, findings


def _manifest_items(revisions: pa.Table, blobs: pa.Table) -> list[tuple[str, str, int]]:
    """(repository, digest, size) of each distinct manifest to parse, first seen first.

    Unlinked (deleted) revisions are read too: their blobs are still manifests.
    Only blobs the walk found as regular files are read.
    """
    targets = pc.coalesce(revisions["target"], revisions["digest"])
    # Only the blobs that are manifests are hashed, not every blob: a far smaller table.
    blobs = blobs.filter(pc.is_in(blobs["digest"], value_set=pc.unique(targets)))
    found = pc.index_in(targets, value_set=blobs["digest"].combine_chunks())
    sizes = pc.take(blobs["size"], found)
    items: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for repo, target, size in zip(
        revisions["repository"].to_pylist(), targets.to_pylist(), sizes.to_pylist(), strict=True
    ):
        if size is not None and target not in seen:
            seen.add(target)
            items.append((repo, target, size))
    return items


def _load_pandas() -> None:
    from . import inventory  # noqa: F401


def _frame(name: str, table: pa.Table) -> pd.DataFrame:
    import pandas as pd

    from . import inventory as inv_mod

    if table.num_rows == 0:
        # pandas' Arrow strings from an empty table have no chunks, which its merges reject.
        return inv_mod.frame(name)
    df = table.to_pandas(types_mapper={pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype()}.get)
    if name == "uploads":
        # `startedat` holds RFC 3339 text written by the registry; garbage becomes null.
        df["started_at"] = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    return inv_mod.conform(name, df)


def scan(v2: Path, options: ScanOptions | None = None) -> Inventory:
    """Scan the `v2` directory of a registry's storage into an Inventory.

    Rows come out in path order (directories are read sorted), so two scans of
    the same tree give identical frames whatever the number of workers.
    """
    scanned_at = datetime.now(UTC)
    # The frames made at the end need pandas, which takes a CPU-second to import:
    # it loads while the workers read the tree, not before or after them.
    tables, found = read_tables(v2, options, meanwhile=_load_pandas)
    from . import inventory as inv_mod

    findings = inv_mod.frame("findings", [f.row() for f in found])
    frames = {name: _frame(name, tables.pop(name)) for name in list(tables)}
    return inv_mod.Inventory(
        root=str(v2),
        scanned_at=scanned_at,
        findings=findings.sort_values(["path", "kind"], kind="stable", ignore_index=True),
        **frames,
    )
