"""The `scan` command's operation, `survey`: count and sum ROOT, or write it as a snapshot beside which older ones are
pruned, and sum it up.

Not named `scan`: `storage_audit.scan` is the package of the tree walk, which a
function of that name at the package's top would be hidden by (or hide).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage_audit.core.errors import UsageError
from storage_audit.operations.inventory import load, unreadable_paths
from storage_audit.roots.resolve import Bucket, Root, Snapshot

if TYPE_CHECKING:
    from storage_audit.core.shard import Shard
    from storage_audit.inventory.retention import Pruned
    from storage_audit.inventory.tables import Inventory
    from storage_audit.scan.run import ScanOptions
    from storage_audit.scan.walk import Totals
    from storage_audit.storage.s3 import RemoteStats


@dataclass(frozen=True)
class SnapshotOptions:
    """Write the inventory as a snapshot in `output`; keep the `keep` newest snapshots beside it (None: all)."""

    output: Path
    keep: int | None = None


@dataclass(frozen=True)
class Survey:
    """What a scan read, as `git count-objects -v` states it: rows per table and bytes, findings per severity.

    `unreadable` are the paths that could not be read (the answer leaves out
    what they hold); `pruned`, what `keep` removed or had to leave; `remote`,
    what reading a bucket took.
    """

    root: str
    totals: Totals
    severities: Counter[str]
    unreadable: list[str]
    pruned: Pruned | None = None
    remote: RemoteStats | None = None


def check_target(output: Path) -> None:
    """Refuse a snapshot directory that would overwrite something else; raises UsageError.

    Cheap, and called again by `survey`: a caller may refuse before it even resolves ROOT.
    """
    try:
        if not output.exists():
            return
        from storage_audit.inventory.retention import foreign_content

        if output.is_dir() and not foreign_content(output):
            return
    except OSError as exc:
        raise UsageError(f"{output}: cannot write snapshot: {exc.strerror or exc}") from exc
    raise UsageError(f"{output}: exists and is not an empty directory or an earlier snapshot")


def survey(root: Root, options: ScanOptions | None = None, snapshot: SnapshotOptions | None = None) -> Survey:
    """Read `root` and sum it up; with `snapshot`, write its inventory and every whole report view there.

    Without a snapshot to write, a storage tree is only counted: neither pandas
    nor pyarrow is loaded. Raises UsageError when the snapshot cannot be written
    or its older siblings cannot be listed.
    """
    if snapshot is None and not isinstance(root, Snapshot):
        from storage_audit.scan.run import tally

        totals, found = tally(root.storage, options)
        return Survey(
            root.location,
            totals,
            Counter(f.severity.value for f in found),
            [f.path for f in found if f.kind == "unreadable"],
            remote=_remote(root),
        )
    shard = options.shard if options is not None else None
    if shard is not None and (snapshot is None or isinstance(root, Snapshot)):
        raise UsageError("--shard reads a share of a storage tree into a snapshot: give a tree or bucket and -o DIR")
    if shard is not None and snapshot is not None:
        check_shard_target(snapshot.output, shard)
        inv = _shard_written(root, options, snapshot.output / shard.directory, shard)
    elif snapshot is not None:
        check_target(snapshot.output)
        inv = _written(root, options, snapshot.output)
    else:
        inv = load(root, options)
    from storage_audit.scan.walk import Totals

    pruned = None
    if snapshot is not None and snapshot.keep is not None and shard is None:
        pruned = _prune(snapshot.output, snapshot.keep)
    return Survey(
        inv.root,
        Totals.of(inv.tables()),
        Counter(inv.findings["severity"]),
        unreadable_paths(inv.findings),
        pruned,
        _remote(root),
    )


def check_shard_target(output: Path, shard: Shard) -> None:
    """Refuse a shard set directory that holds anything but shares of a scan, or a share's directory that is
    something else than an earlier share; raises UsageError."""
    from storage_audit.core.shard import SHARD_DIR_PATTERN

    try:
        if output.exists():
            if not output.is_dir():
                raise UsageError(f"{output}: exists and is not a directory of shards")
            strays = sorted(name for name in os.listdir(output) if not SHARD_DIR_PATTERN.fullmatch(name))
            if strays:
                raise UsageError(
                    f"{output}: holds {strays[0]!r}, which is no shard of a scan: give a directory for shards"
                )
    except OSError as exc:
        raise UsageError(f"{output}: cannot write snapshot: {exc.strerror or exc}") from exc
    check_target(output / shard.directory)


def _shard_written(root: Root, options: ScanOptions | None, output: Path, shard: Shard) -> Inventory:
    """`shard`'s share of `root`, written as a snapshot marked as that share, without report views (a share alone
    answers nothing: its set is read as one snapshot)."""
    assert not isinstance(root, Snapshot)
    from storage_audit.scan.run import scan_to_snapshot

    started = time.monotonic()
    with _writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        streamed = scan_to_snapshot(root.storage, output, options)
    streamed.scan_seconds = time.monotonic() - started
    inv = streamed.inventory()
    from storage_audit.inventory.tables import finish_snapshot

    with _writing(output):
        finish_snapshot(streamed.out, inv, {}, {"shard": {"index": shard.index, "count": shard.count}})
    return inv


def _written(root: Root, options: ScanOptions | None, output: Path) -> Inventory:
    """The inventory of `root`, written to the snapshot `output` with its whole report views."""
    streamed = None
    if isinstance(root, Snapshot):
        inv = load(root, options)
    else:
        # The tables go to the snapshot as the workers deliver them; the analysis loads after they started.
        from storage_audit.scan.run import scan_to_snapshot

        started = time.monotonic()
        with _writing(output):
            streamed = scan_to_snapshot(root.storage, output, options)
        streamed.scan_seconds = time.monotonic() - started
        inv = streamed.inventory()
    from storage_audit.analysis.graph import Graph
    from storage_audit.analysis.report import WholeViews
    from storage_audit.inventory.tables import finish_snapshot, write_snapshot

    # The whole report views go along: a report from the snapshot then only reads one file.
    views = WholeViews(Graph(inv))
    with _writing(output):
        if streamed is None:
            write_snapshot(inv, output, views)
        else:
            finish_snapshot(streamed.out, inv, views)
    return inv


@contextmanager
def _writing(output: Path) -> Iterator[None]:
    """Turn a failure to write the snapshot `output` into a UsageError that names it."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"{output}: cannot write snapshot: {exc.strerror or exc}") from exc


def _prune(output: Path, keep: int) -> Pruned:
    from storage_audit.inventory.retention import prune

    try:
        return prune(output, keep)
    except OSError as exc:
        raise UsageError(f"{output.parent}: cannot list snapshots: {exc.strerror or exc}") from exc


def _remote(root: Root) -> RemoteStats | None:
    return root.storage.stats() if isinstance(root, Bucket) else None
