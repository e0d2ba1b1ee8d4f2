"""What changed between two audits: repositories, tags or blobs added, removed and resized, largest change first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

import humanize
import pandas as pd

from storage_audit.analysis.graph import Graph
from storage_audit.analysis.options import By, DiffBy
from storage_audit.analysis.report import whole
from storage_audit.core.errors import UsageError
from storage_audit.core.text import count, size
from storage_audit.core.version import __version__
from storage_audit.core.view import View
from storage_audit.inventory.frames import isin
from storage_audit.inventory.tables import Inventory, read_metadata, read_snapshot, read_view

INT: Final = "Int64"  # nullable: a column one side's version did not write stays empty
STR: Final = "string"

# The repository view's byte columns compared before and after.
REPOSITORY_BYTES: Final = ("total_bytes", "exclusive_bytes", "reclaimable_bytes")


class DiffError(UsageError):
    """A side of a diff that cannot be read (an unreadable or foreign snapshot)."""


class Audit:
    """One side of a diff: where and when it was taken, by which version, and its whole report views.

    A snapshot's stored views are read as they are; a view it does not hold, or
    any view of a scanned tree, comes from one graph built on first need.
    """

    def __init__(
        self,
        name: str,
        root: str,
        scanned_at: datetime,
        version: str | None,
        snapshot: Path | None = None,
        inventory: Callable[[], Inventory] | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.scanned_at = scanned_at
        self.version = version
        self._snapshot = snapshot
        self._inventory = inventory
        self._graph: Graph | None = None
        self._views: dict[By, pd.DataFrame] = {}

    @classmethod
    def of_snapshot(cls, directory: Path, name: str | None = None) -> Audit:
        """The audit a snapshot directory holds; raises DiffError when it cannot be read."""
        try:
            meta = read_metadata(directory)
            scanned_at = datetime.fromisoformat(str(meta["scanned_at"]))
        except (ValueError, KeyError) as exc:
            raise DiffError(f"{directory}: {exc}") from exc
        version = meta.get("version")
        return cls(
            name or str(directory),
            str(meta.get("root", "")),
            scanned_at,
            str(version) if version is not None else None,
            snapshot=directory,
        )

    @classmethod
    def of_inventory(cls, inv: Inventory, name: str | None = None) -> Audit:
        """The audit of an inventory scanned now."""
        return cls(name or inv.root, inv.root, inv.scanned_at, __version__, inventory=lambda: inv)

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            if self._inventory is not None:
                inv = self._inventory()
            else:
                assert self._snapshot is not None
                try:
                    inv = read_snapshot(self._snapshot)
                except ValueError as exc:
                    raise DiffError(f"{self._snapshot}: {exc}") from exc
            self._graph = Graph(inv)
        return self._graph

    def view(self, by: By) -> pd.DataFrame:
        """The whole report view `by`: stored in the snapshot, else computed from the graph."""
        if by not in self._views:
            stored = None
            if self._snapshot is not None:
                try:
                    # An earlier version's view may lack a column: each is then left empty, with a warning.
                    stored = read_view(self._snapshot, by.value, every_column=False)
                except ValueError as exc:
                    raise DiffError(f"{self._snapshot}: {exc}") from exc
            self._views[by] = stored if stored is not None else whole(self.graph, by)
        return self._views[by]


@dataclass(frozen=True)
class Changes:
    """The counts and bytes the one-line summary states."""

    seconds: float
    net_bytes: int
    tags_added: int = 0
    tags_moved: int = 0
    tags_removed: int = 0
    repositories_new: int = 0
    repositories_gone: int = 0
    manifests_added: int = 0
    manifests_removed: int = 0
    blobs_added: int = 0
    blobs_removed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0


@dataclass(frozen=True)
class Diff:
    """The rows of a diff, largest change first, what they add up to, and warnings about the two sides."""

    by: DiffBy
    frame: pd.DataFrame
    changes: Changes
    warnings: list[str] = field(default_factory=list)


def warnings(old: Audit, new: Audit) -> list[str]:
    """What makes two audits compare less well: other tool versions, other storage roots, time running backwards."""
    out = []
    if old.version != new.version:
        out.append(
            f"OLD was written by storage-audit {old.version or 'of an unknown version'} and NEW by "
            f"{new.version or 'an unknown version'}: figures may differ by method, not only by content"
        )
    if old.root != new.root:
        out.append(f"OLD and NEW audit different storage: {old.root} and {new.root}")
    if new.scanned_at < old.scanned_at:
        out.append("NEW was scanned before OLD: the changes read backwards")
    return out


def diff(old: Audit, new: Audit, by: DiffBy = DiffBy.REPOSITORY) -> Diff:
    """Compare two audits; raises DiffError when a side cannot be read."""
    notes = warnings(old, new)
    builders = {DiffBy.REPOSITORY: _repositories, DiffBy.TAG: _tags, DiffBy.BLOB: _blobs}
    frame, changes = builders[by](old, new, notes)
    return Diff(by, frame, changes, notes)


# --------------------------------------------------------------------------
# Aligning the two sides


def _columns(audit: Audit, by: By, wanted: tuple[str, ...], side: str, notes: list[str]) -> pd.DataFrame:
    """The view's `wanted` columns; one the side's version did not write is added empty, with a warning."""
    frame = audit.view(by)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        notes.append(
            f"{side}'s {by.value} view has no {', '.join(missing)} (written by storage-audit "
            f"{audit.version or 'of an unknown version'}): left empty"
        )
        frame = frame.assign(**{c: pd.NA for c in missing})
    return frame[list(wanted)].copy()


def _seconds(old: Audit, new: Audit) -> float:
    return (new.scanned_at - old.scanned_at).total_seconds()


def _physical(audit: Audit, side: str, notes: list[str]) -> object:
    return _columns(audit, By.SUMMARY, ("physical_bytes",), side, notes)["physical_bytes"].iloc[0]


def _net(old: Audit, new: Audit, notes: list[str]) -> int:
    before, after = _physical(old, "OLD", notes), _physical(new, "NEW", notes)
    return 0 if pd.isna(before) or pd.isna(after) else int(after) - int(before)  # type: ignore[call-overload]


def _changed_digest(before: pd.Series, after: pd.Series) -> pd.Series:
    """Pairs whose digests differ, a missing digest being different from any digest."""
    return before.fillna("").astype(STR) != after.fillna("").astype(STR)


def _order(frame: pd.DataFrame, delta: str, keys: list[str], *, extra: str | None = None) -> pd.DataFrame:
    """Largest change first: by absolute `delta`, then `extra` (a count of changes) largest first, then keys."""
    sort = frame.assign(_abs=frame[delta].abs())
    columns, ascending = ["_abs"], [False]
    if extra is not None:
        columns.append(extra)
        ascending.append(False)
    sort = sort.sort_values([*columns, *keys], ascending=[*ascending] + [True] * len(keys), na_position="last")
    return sort.drop(columns="_abs").reset_index(drop=True)


# --------------------------------------------------------------------------
# The three views


TAG_KEYS: Final = ["repository", "tag"]


def _tag_pairs(old: Audit, new: Audit, notes: list[str]) -> pd.DataFrame:
    """Every tag of either side, with its digest and image bytes before and after, and how it changed."""
    wanted = ("repository", "tag", "digest", "image_bytes", "pushed_at")
    before = _columns(old, By.TAG, wanted, "OLD", notes)
    after = _columns(new, By.TAG, wanted, "NEW", notes)
    both = before.merge(after, on=TAG_KEYS, how="outer", suffixes=("_old", "_new"), indicator=True)
    change = pd.Series(pd.NA, index=both.index, dtype=STR)
    change[both["_merge"] == "right_only"] = "added"
    change[both["_merge"] == "left_only"] = "removed"
    moved = (both["_merge"] == "both") & _changed_digest(both["digest_old"], both["digest_new"])
    change[moved] = "moved"
    return both.assign(change=change).drop(columns="_merge")


def _tags(old: Audit, new: Audit, notes: list[str]) -> tuple[pd.DataFrame, Changes]:
    pairs = _tag_pairs(old, new, notes)
    pairs = pairs[pairs["change"].notna()]
    before = pairs["image_bytes_old"].astype(INT)
    after = pairs["image_bytes_new"].astype(INT)
    frame = pd.DataFrame(
        {
            "repository": pairs["repository"].astype(STR),
            "tag": pairs["tag"].astype(STR),
            "change": pairs["change"].astype(STR),
            "old_digest": pairs["digest_old"].astype(STR),
            "new_digest": pairs["digest_new"].astype(STR),
            "old_image_bytes": before,
            "new_image_bytes": after,
            "delta_bytes": after.fillna(0) - before.fillna(0),
            "pushed_at": pd.to_datetime(pairs["pushed_at_new"], utc=True),
        }
    )
    frame = _order(frame, "delta_bytes", TAG_KEYS)
    changes = Changes(
        seconds=_seconds(old, new),
        net_bytes=_net(old, new, notes),
        tags_added=int((frame["change"] == "added").sum()),
        tags_moved=int((frame["change"] == "moved").sum()),
        tags_removed=int((frame["change"] == "removed").sum()),
    )
    return frame, changes


def _per_repository(frame: pd.DataFrame, mask: pd.Series) -> pd.Series:
    return frame.loc[mask, "repository"].value_counts()


def _repositories(old: Audit, new: Audit, notes: list[str]) -> tuple[pd.DataFrame, Changes]:
    wanted = ("repository", *REPOSITORY_BYTES)
    before = _columns(old, By.REPOSITORY, wanted, "OLD", notes)
    after = _columns(new, By.REPOSITORY, wanted, "NEW", notes)
    both = before.merge(after, on="repository", how="outer", suffixes=("_old", "_new"), indicator=True)
    frame = pd.DataFrame({"repository": both["repository"].astype(STR)})
    frame["change"] = both["_merge"].map({"right_only": "new", "left_only": "gone", "both": "changed"}).astype(STR)
    appeared, vanished = frame["change"] == "new", frame["change"] == "gone"
    for column in REPOSITORY_BYTES:
        # A repository that is not there holds nothing; a column a version did not write stays empty.
        old_bytes = both[f"{column}_old"].astype(INT).mask(appeared, 0)
        new_bytes = both[f"{column}_new"].astype(INT).mask(vanished, 0)
        frame[f"{column}_old"], frame[f"{column}_new"] = old_bytes, new_bytes
        frame[f"{column}_delta"] = new_bytes - old_bytes

    tags = _tag_pairs(old, new, notes)
    manifest_keys = ("repository", "digest")
    revisions = _columns(old, By.MANIFEST, manifest_keys, "OLD", notes).merge(
        _columns(new, By.MANIFEST, manifest_keys, "NEW", notes), how="outer", indicator=True
    )
    counts = {
        "tags_added": _per_repository(tags, tags["change"] == "added"),
        "tags_removed": _per_repository(tags, tags["change"] == "removed"),
        "tags_moved": _per_repository(tags, tags["change"] == "moved"),
        "manifests_added": _per_repository(revisions, revisions["_merge"] == "right_only"),
        "manifests_removed": _per_repository(revisions, revisions["_merge"] == "left_only"),
    }
    for column, per in counts.items():
        frame[column] = frame["repository"].map(per).fillna(0).astype("int64")

    deltas = frame[[f"{c}_delta" for c in REPOSITORY_BYTES]].fillna(0).ne(0).any(axis=1)
    moves = frame[list(counts)].sum(axis=1)
    frame = frame.assign(_moves=moves)[(frame["change"] != "changed") | deltas | (moves > 0)]
    frame = _order(frame, "total_bytes_delta", ["repository"], extra="_moves").drop(columns="_moves")
    changes = Changes(
        seconds=_seconds(old, new),
        net_bytes=_net(old, new, notes),
        tags_added=int(counts["tags_added"].sum()),
        tags_moved=int(counts["tags_moved"].sum()),
        tags_removed=int(counts["tags_removed"].sum()),
        repositories_new=int((frame["change"] == "new").sum()),
        repositories_gone=int((frame["change"] == "gone").sum()),
        manifests_added=int(counts["manifests_added"].sum()),
        manifests_removed=int(counts["manifests_removed"].sum()),
    )
    return frame, changes


def _blobs(old: Audit, new: Audit, notes: list[str]) -> tuple[pd.DataFrame, Changes]:
    wanted = ("digest", "size", "kind", "orphan")
    before = _columns(old, By.BLOB, wanted, "OLD", notes)
    after = _columns(new, By.BLOB, wanted, "NEW", notes)
    added = after[~isin(after["digest"], before["digest"])].assign(change="added")
    removed = before[~isin(before["digest"], after["digest"])].assign(change="removed")
    both = pd.concat([added, removed], ignore_index=True)
    frame = pd.DataFrame(
        {
            "digest": both["digest"].astype(STR),
            "change": both["change"].astype(STR),
            "size": both["size"].astype(INT),
            "delta_bytes": both["size"].astype(INT).where(both["change"] == "added", -both["size"].astype(INT)),
            "kind": both["kind"].astype(STR),
            "orphan": both["orphan"].astype("boolean"),
        }
    )
    frame = _order(frame, "size", ["digest"])
    bytes_added = int(frame.loc[frame["change"] == "added", "size"].sum())
    bytes_removed = int(frame.loc[frame["change"] == "removed", "size"].sum())
    changes = Changes(
        seconds=_seconds(old, new),
        net_bytes=bytes_added - bytes_removed,
        blobs_added=int((frame["change"] == "added").sum()),
        blobs_removed=int((frame["change"] == "removed").sum()),
        bytes_added=bytes_added,
        bytes_removed=bytes_removed,
    )
    return frame, changes


# --------------------------------------------------------------------------
# Presentation


def _signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + size(abs(n))


def summary_line(result: Diff) -> str:
    """One line for people: `+12.4 GiB in 3 days: 61 tags pushed, 4 repositories new`."""
    from datetime import timedelta

    c = result.changes
    when = humanize.naturaldelta(timedelta(seconds=abs(c.seconds)))
    if result.by is DiffBy.BLOB:
        parts = [
            f"{count(c.blobs_added, 'blob')} added ({size(c.bytes_added)})",
            f"{count(c.blobs_removed, 'blob')} removed ({size(c.bytes_removed)})",
        ]
        return f"{_signed(c.net_bytes)} physical in {when}: {', '.join(parts)}"
    pushed = c.tags_added + c.tags_moved
    parts = [
        f"{count(pushed, 'tag')} pushed" if pushed else "",
        f"{count(c.tags_removed, 'tag')} removed" if c.tags_removed else "",
        f"{count(c.repositories_new, 'repository', 'repositories')} new" if c.repositories_new else "",
        f"{count(c.repositories_gone, 'repository', 'repositories')} gone" if c.repositories_gone else "",
        f"{count(c.manifests_removed, 'manifest')} deleted" if c.manifests_removed else "",
    ]
    if result.by is DiffBy.TAG:
        parts = [
            f"{count(c.tags_added, 'tag')} added" if c.tags_added else "",
            f"{count(c.tags_moved, 'tag')} moved" if c.tags_moved else "",
            f"{count(c.tags_removed, 'tag')} removed" if c.tags_removed else "",
        ]
    nothing = "no tag changed" if result.by is DiffBy.TAG else "no tag, repository or manifest changed"
    said = ", ".join(p for p in parts if p) or nothing
    return f"{_signed(c.net_bytes)} in {when}: {said}"


def view(result: Diff) -> View:
    """How to show a diff's rows."""
    hints = {
        DiffBy.REPOSITORY: View(
            result.frame,
            title="changes per repository",
            size_columns=tuple(f"{c}_{s}" for c in REPOSITORY_BYTES for s in ("old", "new", "delta")),
            optional_columns=(
                "reclaimable_bytes_old",
                "reclaimable_bytes_new",
                "exclusive_bytes_old",
                "exclusive_bytes_new",
                "tags_moved",
                "reclaimable_bytes_delta",
                "exclusive_bytes_delta",
                "manifests_removed",
                "manifests_added",
            ),
            total_columns=(
                *(f"{c}_{s}" for c in REPOSITORY_BYTES for s in ("old", "new", "delta")),
                "tags_added",
                "tags_removed",
                "tags_moved",
                "manifests_added",
                "manifests_removed",
            ),
        ),
        DiffBy.TAG: View(
            result.frame,
            title="changes per tag",
            size_columns=("old_image_bytes", "new_image_bytes", "delta_bytes"),
            optional_columns=("pushed_at", "old_image_bytes", "new_image_bytes", "old_digest", "new_digest"),
        ),
        DiffBy.BLOB: View(
            result.frame,
            title="blobs added and removed",
            size_columns=("size", "delta_bytes"),
            optional_columns=("orphan", "kind", "size"),
            total_columns=("delta_bytes",),
        ),
    }
    return hints[result.by]
