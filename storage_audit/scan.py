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
from typing import Any, Protocol, TypeVar

import pandas as pd

from . import inventory as inv_mod
from .inventory import Inventory
from .walk import Part, Walker, read_manifest_units, walk_units

PARALLEL_MIN_BLOBS = 5000
"""Below this many blobs (estimated) starting worker processes costs more than it saves."""
BATCHES_PER_WORKER = 4
MAX_WORKERS = 8

T = TypeVar("T")


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
    fn: Callable[..., Part],
    jobs: list[tuple[Any, ...]],
    phase: str,
    progress: Progress | None,
) -> Part:
    total = Part()
    results = pool.map(fn, *zip(*jobs, strict=True)) if pool is not None and jobs else (fn(*job) for job in jobs)
    for part in results:
        total.extend(part)
        if progress is not None:
            progress.update(phase, part.size())
    return total


def _walk(v2: str, options: ScanOptions) -> Part:
    top = Walker(v2)
    repositories, prefixes = top.units()
    workers = _workers(options, v2, prefixes)
    batches = workers * BATCHES_PER_WORKER if workers > 1 else 1
    pool: Executor | None = None
    try:
        if workers > 1:
            # spawn, not fork: the workers need only the walker, not this process's pandas and threads.
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return _walk_with(pool, v2, top.part, repositories, prefixes, batches, options.progress)
    except (BrokenProcessPool, OSError):
        if pool is None:
            raise
        # A machine that cannot start worker processes still gets its scan, in this process.
        pool.shutdown(cancel_futures=True)
        pool = None
        top = Walker(v2)
        repositories, prefixes = top.units()
        return _walk_with(None, v2, top.part, repositories, prefixes, 1, options.progress)
    finally:
        if pool is not None:
            pool.shutdown()


def _walk_with(
    pool: Executor | None,
    v2: str,
    part: Part,
    repositories: list[str],
    prefixes: list[tuple[str, str]],
    batches: int,
    progress: Progress | None,
) -> Part:
    repo_jobs: list[tuple[Any, ...]] = [(v2, chunk, []) for chunk in _chunks(repositories, batches)]
    part.extend(_run(pool, walk_units, repo_jobs, "repositories", progress))
    blob_jobs: list[tuple[Any, ...]] = [(v2, [], chunk) for chunk in _chunks(prefixes, batches)]
    part.extend(_run(pool, walk_units, blob_jobs, "blobs", progress))
    sizes = {digest: size for digest, size, _ in part.blobs}
    items: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    # Unlinked (deleted) revisions are read too: their blobs are still manifests.
    for repo, digest, target, _linked, _mtime in part.revisions:
        target = target or digest
        if target not in seen and target in sizes:
            seen.add(target)
            items.append((repo, target, sizes[target]))
    manifest_jobs = [(v2, chunk) for chunk in _chunks(items, batches)]
    part.extend(_run(pool, read_manifest_units, manifest_jobs, "manifests", progress))
    return part


def _times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, unit="ns", utc=True)


def _table(name: str, rows: list[Any], time_cols: tuple[str, ...] = ()) -> pd.DataFrame:
    names = list(inv_mod.SCHEMA[name])
    # Column lists convert to typed arrays much faster than a frame of row tuples.
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in names]
    # The rows go as soon as their columns exist: peak memory is one table's worth, not two.
    rows.clear()
    df = pd.DataFrame(dict(zip(names, columns, strict=True)))
    del columns
    for col in time_cols:
        df[col] = _times(df[col])
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
    part = _walk(str(v2), options or ScanOptions())
    findings = inv_mod.frame("findings", [f.row() for f in part.findings])
    return Inventory(
        root=str(v2),
        scanned_at=scanned_at,
        repositories=_table("repositories", part.repositories, ("layers_changed_at",)),
        tags=_table("tags", part.tags, ("pushed_at",)),
        tag_history=_table("tag_history", part.history, ("pushed_at",)),
        revisions=_table("revisions", part.revisions, ("pushed_at",)),
        manifests=_table("manifests", part.manifests),
        references=_table("references", part.references),
        layer_links=_table("layer_links", part.layer_links),
        blobs=_table("blobs", part.blobs, ("mtime",)),
        uploads=_table("uploads", part.uploads),
        findings=findings.sort_values(["path", "kind"], kind="stable", ignore_index=True),
    )
