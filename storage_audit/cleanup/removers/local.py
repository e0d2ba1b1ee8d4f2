"""Removal from a tree on disk: each action looked at and removed on its own, never through a symbolic link, many at
once on a pool of threads; a quarantine is a move."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pandas as pd

from storage_audit.cleanup.action import (
    Action,
    BlobPrecondition,
    LinkPrecondition,
    Op,
    PlanError,
    RepositoryPrecondition,
    TagPrecondition,
    UploadPrecondition,
)
from storage_audit.cleanup.plan import Plan
from storage_audit.cleanup.removers.base import Found, Item, Quarantined, Remover
from storage_audit.core.errors import StorageError, UsageError
from storage_audit.core.paths import (
    LINK_READ,
    REPOSITORY_PARTS,
    BlobData,
    Digest,
    RepositoryPart,
    TagCurrentLink,
    UploadData,
    UploadDir,
    UploadStartedAt,
    path_for,
)
from storage_audit.storage.base import AccessError, EntryKind, LocalStorage, Stat, Storage, is_inside

PRUNED = {Op.REMOVE_TAG_HISTORY: 1, Op.REMOVE_REVISION: 1, Op.REMOVE_LAYER_LINK: 1, Op.REMOVE_BLOB: 1}
"""How many parent directories a removal may leave empty, to prune as the registry leaves them (never `tags/`)."""

LINK_MISSING = "its link is missing; left for `check` to explain"
PUSHED_AGAIN = "written again since planning (a push in progress?)"
DATA_CHANGED = "its data changed since planning"
RESTARTED = "it was restarted since planning"
RECEIVED_DATA = "it received data since planning"
LAYER_ADDED = "a layer link was added since planning (a push in progress?)"

BATCH = 512
"""Actions looked at, then removed, at once. Each is still looked at right before its batch is removed, and an error
fails that action only."""
THREADS = 16
"""Threads that look and remove at once: an unlink or rmdir mostly waits on the file system's journal, and many in
flight let it commit them together (about five times as fast as one at a time on ext4)."""
ALONE = (Op.REMOVE_UPLOAD, Op.REMOVE_REPOSITORY)
"""Ops removed one action at a time: few, and each prunes parents that another's removal may share."""

T = TypeVar("T")


class LocalRemover(Remover):
    """A plan's actions on a `v2` directory: removed (or moved to `quarantine`, in the same layout) one by one."""

    where = "on disk"

    def __init__(self, storage: LocalStorage, quarantine: Path | None = None) -> None:
        """Raises UsageError for a quarantine that is no directory or lies in the tree (it would move into it)."""
        super().__init__()
        self.storage = storage
        self.kept = quarantine
        if quarantine is not None:
            try:
                exists, is_dir = quarantine.exists(), quarantine.is_dir()
            except OSError as exc:
                raise UsageError(f"{quarantine}: {exc.strerror or exc}") from exc
            if exists and not is_dir:
                raise UsageError(f"{quarantine}: not a directory")
            if is_inside(quarantine, Path(storage.location)):
                raise UsageError(f"{quarantine}: the quarantine must lie outside the storage tree {storage.location}")
            self.quarantine = Quarantined(str(quarantine), copied=False)

    def _refuse(self, plan: Plan) -> None:
        if plan.location is not None or plan.root != self.storage.location:
            raise PlanError(f"the plan is for {plan.root}, not {self.storage.location}")
        if not self._is_dir("") or not (self._is_dir("repositories") or self._is_dir("blobs")):
            raise PlanError(f"the plan's root {plan.root} is not a registry's v2 directory")
        for i, action in enumerate(plan.actions):
            self._no_symlinks(action.path, f"action #{i}")

    def _is_dir(self, rel: str) -> bool:
        try:
            st = self.storage.stat(rel)
        except AccessError:
            return False
        return st is not None and st.kind == EntryKind.DIR

    def _no_symlinks(self, rel: str, what: str) -> None:
        """Refuse a path with a symbolic link anywhere between `v2` and its end."""
        parts = rel.split("/")
        for n in range(1, len(parts) + 1):
            current = "/".join(parts[:n])
            try:
                st = self.storage.stat(current)
            except AccessError as exc:
                raise PlanError(f"{what}: cannot inspect {self.storage.location}/{current}: {exc.reason}") from exc
            if st is None:
                return  # nothing further down exists: nothing can be followed
            if st.kind == EntryKind.SYMLINK:
                raise PlanError(
                    f"{what}: {self.storage.location}/{current} is a symbolic link; refusing to act through it"
                )

    def fresh(self) -> LocalStorage:
        return self.storage  # every call reads the disk now

    def batches(self, items: Sequence[Item]) -> list[list[Item]]:
        """Consecutive actions in groups of BATCH; those of ALONE one by one."""
        out: list[list[Item]] = []
        for item in items:
            if item[1].op in ALONE or not out or len(out[-1]) >= BATCH or out[-1][0][1].op in ALONE:
                out.append([item])
            else:
                out[-1].append(item)
        return out

    # -- what a target is now -----------------------------------------------------------

    def look(
        self, plan: Plan, actions: Sequence[Action], scanned: Storage | None = None
    ) -> list[Found | StorageError | None]:
        # Each look is a stat or two of its own: cheaper than anything a scan remembers, and of now.
        return _each(actions, lambda action: self._look(plan, action))

    def _look(self, plan: Plan, action: Action) -> Found | None:
        pre = action.precondition
        if isinstance(pre, TagPrecondition):
            return self._link(action, path_for(TagCurrentLink(action.repository or "", action.tag or "")), pre.current)
        if isinstance(pre, LinkPrecondition):
            found = self._link(action, action.path, pre.link)
            if found is not None and action.op is Op.REMOVE_LAYER_LINK and found.changed is None:
                st = self.storage.stat(action.path)
                # The registry writes the link again when a client pushes the blob again: a push in progress.
                if st is not None and st.mtime_ns > pd.Timestamp(plan.created_at).value:
                    return Found(found.paths, PUSHED_AGAIN)
            return found
        if isinstance(pre, BlobPrecondition):
            return self._blob(action, pre)
        if isinstance(pre, UploadPrecondition):
            return self._upload(action, pre)
        assert isinstance(pre, RepositoryPrecondition)  # the plan was validated: its op fixes the kind
        return self._repository(action, pre)

    def _files(self, rel: str) -> dict[str, Stat]:
        return dict(self.storage.files(rel))

    def _read_link(self, rel: str) -> str | None:
        """The link's content; None when absent; an unreadable link (a directory, a symlink, a FIFO) never matches."""
        try:
            small = self.storage.read_small(rel, LINK_READ, stat=False)
        except AccessError as exc:
            return f"<unreadable: {exc.reason}>"
        return None if small is None else small.data.decode("ascii", "replace")

    def _link(self, action: Action, link: str, expected: str) -> Found | None:
        content = self._read_link(link)
        if content is None:
            if self.storage.stat(action.path) is None:
                return None
            return _found(self._files(action.path), LINK_MISSING)
        changed = None if content == expected else f"changed since planning: now names {content[:80]}"
        return _found(self._files(action.path), changed)

    def _blob(self, action: Action, pre: BlobPrecondition) -> Found | None:
        st = self.storage.stat(path_for(BlobData(Digest.parse(action.digest or ""))))
        if st is None:
            return None
        unchanged = st.size == pre.size and st.mtime_ns == pre.mtime_ns and st.kind == EntryKind.FILE
        return _found(self._files(action.path), None if unchanged else DATA_CHANGED)

    def _upload(self, action: Action, pre: UploadPrecondition) -> Found | None:
        if self.storage.stat(action.path) is None:
            return None
        spec = action.spec()
        assert isinstance(spec, UploadDir)  # the plan was validated: its op fixes the kind of path
        files = self._files(action.path)
        started = self._read_link(path_for(UploadStartedAt(spec.repository, spec.upload_id)))
        if pre.started_at is not None and (started is None or _timestamp(started) != pd.Timestamp(pre.started_at)):
            return _found(files, RESTARTED)
        if self.storage.bytes_below(path_for(UploadData(spec.repository, spec.upload_id))) != pre.bytes:
            return _found(files, RECEIVED_DATA)
        return _found(files)

    def _repository(self, action: Action, pre: RepositoryPrecondition) -> Found | None:
        if self.storage.stat(action.path) is None:
            return None
        files: dict[str, Stat] = {}
        for part in REPOSITORY_PARTS:
            files.update(self._files(path_for(RepositoryPart(action.repository or "", part))))
        layers = f"{action.path}/_layers/"
        planned = pre.layers_changed_at
        # Removals touch the directories, never the remaining link files: a newer link is a push.
        newer = any(p.startswith(layers) and (planned is None or st.mtime_ns > planned) for p, st in files.items())
        return _found(files, LAYER_ADDED if newer else None)

    # -- removing -------------------------------------------------------------------------

    def remove(self, approved: Sequence[tuple[Action, Found]]) -> list[StorageError | None]:
        found = {id(action): now for action, now in approved}
        errors = _each([action for action, _ in approved], lambda action: self._remove(action, found[id(action)]))
        return [error if isinstance(error, StorageError) else None for error in errors]

    def _remove(self, action: Action, found: Found) -> None:
        if action.op is Op.REMOVE_REPOSITORY:
            repo = action.repository or ""
            parts = [path_for(RepositoryPart(repo, part)) for part in REPOSITORY_PARTS]
            for part in parts:
                if self.storage.stat(part) is not None:
                    self.storage.remove(part, self.kept)
            # Parents that are no repositories themselves and now empty go too.
            self.storage.prune_empty(parts[0], levels=repo.count("/") + 1)
        else:
            inside = f"{action.path}/"
            names = [path.removeprefix(inside) for path in found.paths]
            if self.kept is None and action.op is Op.REMOVE_BLOB and all(n and "/" not in n for n in names):
                self.storage.remove_dir(action.path, names)  # a blob's directory holds its `data` alone
            else:
                self.storage.remove(action.path, self.kept)
            self.storage.prune_empty(action.path, PRUNED.get(action.op, 0))

    def tidy(self, action: Action) -> None:
        # Removed by an earlier run that was interrupted before pruning: prune now.
        self.storage.prune_empty(action.path, PRUNED.get(action.op, 0))


def _each(actions: Sequence[Action], do: Callable[[Action], T]) -> list[T | StorageError]:
    """`do` for each action, on a pool of threads when there are several; the StorageError of one that raised."""

    def one(action: Action) -> T | StorageError:
        try:
            return do(action)
        except StorageError as exc:
            return exc

    if len(actions) < 2:
        return [one(action) for action in actions]
    # A pool per batch: no thread outlives it, so a fresh scan after the phase still forks its workers.
    with ThreadPoolExecutor(min(THREADS, len(actions))) as pool:
        return list(pool.map(one, actions))


def _found(files: dict[str, Stat], changed: str | None = None) -> Found:
    return Found({path: st.size for path, st in files.items()}, changed)


def _timestamp(text: str) -> pd.Timestamp | None:
    try:
        return pd.Timestamp(text.strip())
    except ValueError:
        return None


__all__ = ["LocalRemover"]
