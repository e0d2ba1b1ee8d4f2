"""Apply a reviewed deletion plan: validate it, re-check every precondition, never remove what is still used."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage_audit.analysis.graph import Graph
from storage_audit.cleanup.plan import BLOCKING_KINDS, OPS, Action, Op, Plan, PlanError
from storage_audit.core.errors import EXIT_OK, AuditError, UsageError
from storage_audit.core.paths import (
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
from storage_audit.inventory.frames import isin
from storage_audit.inventory.tables import Inventory
from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import AccessError, EntryKind, LocalStorage, Storage, is_inside

JOURNAL_SUFFIX = ".journal"
JOURNAL_HASH_CHARS = 16
"""Hex characters of the plan's sha256 in its journal's name: enough to tell plans apart."""
LINK_READ = 511
# Ops whose bytes count as freed: blob and upload data (link files are a few bytes each).
DATA_OPS = (Op.REMOVE_BLOB, Op.REMOVE_UPLOAD, Op.REMOVE_REPOSITORY)
UNCERTAIN = "the storage has findings that leave references unknown (run `storage-audit check`)"


class AlreadyApplied(AuditError):
    """The journal beside the plan says it was applied to the end: nothing to do, which is no failure."""

    exit_code = EXIT_OK


@dataclass(frozen=True)
class ApplyOptions:
    """dry_run changes nothing; quarantine moves removed files there instead of deleting them."""

    dry_run: bool = False
    quarantine: Path | None = None


@dataclass
class Outcome:
    """What an apply did, per action: done, skipped (with why), already gone, or failed (with the error)."""

    done: list[Action] = field(default_factory=list)
    skipped: list[tuple[Action, str]] = field(default_factory=list)
    gone: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    resumed: int = 0
    bytes_freed: int = 0

    def frame(self) -> pd.DataFrame:
        rows = [(a.op, "done") for a in self.done] + [(a.op, "skipped") for a, _ in self.skipped]
        rows += [(a.op, "already gone") for a in self.gone]
        rows += [(a.op, "failed") for a, _ in self.failed]
        frame = pd.DataFrame([(str(op), result) for op, result in rows], columns=["op", "result"])
        return frame.groupby(["op", "result"]).size().rename("count").reset_index()


def read_plan(path: Path) -> tuple[Plan, str]:
    """The validated plan in `path` and the sha256 of its bytes; raises PlanError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from exc
    plan = Plan.from_json(doc)
    if plan.location is not None:
        from storage_audit.cleanup.s3apply import check_plan

        check_plan(plan)
        return plan, hashlib.sha256(raw).hexdigest()
    storage = LocalStorage(plan.root)
    if not _is_dir(storage, "") or not (_is_dir(storage, "repositories") or _is_dir(storage, "blobs")):
        raise PlanError(f"the plan's root {plan.root} is not a registry's v2 directory")
    for i, action in enumerate(plan.actions):
        _no_symlinks(storage, action.path, f"action #{i}")
    return plan, hashlib.sha256(raw).hexdigest()


def _is_dir(storage: Storage, rel: str) -> bool:
    try:
        st = storage.stat(rel)
    except AccessError:
        return False
    return st is not None and st.kind == EntryKind.DIR


def _no_symlinks(storage: Storage, rel: str, what: str) -> None:
    """Refuse a path with a symbolic link anywhere between `v2` and its end."""
    parts = rel.split("/")
    for n in range(1, len(parts) + 1):
        current = "/".join(parts[:n])
        try:
            st = storage.stat(current)
        except AccessError as exc:
            raise PlanError(f"{what}: cannot inspect {storage.location}/{current}: {exc.reason}") from exc
        if st is None:
            return  # nothing further down exists: nothing can be followed
        if st.kind == EntryKind.SYMLINK:
            raise PlanError(f"{what}: {storage.location}/{current} is a symbolic link; refusing to act through it")


class _Journal:
    """Append-only record beside the plan: resume after an interruption, never apply twice.

    Its name carries the plan's hash, so a plan written again over the same file
    starts a journal of its own; what a crash tore or garbled is checked again.
    """

    def __init__(self, path: Path, plan_hash: str, actions: int, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.done: set[int] = set()
        self._fh: Any = None
        self._fresh = True
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PlanError(f"{path}: cannot read the journal: {exc.strerror or exc}") from exc
        entries = []
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash, or garbled: its action is simply checked again
            if isinstance(entry, dict):
                entries.append(entry)
        header = [e["plan_sha256"] for e in entries if isinstance(e.get("plan_sha256"), str)]
        if any(h != plan_hash for h in header):
            raise PlanError(f"{path} belongs to another plan; move it away to apply this one")
        self._fresh = not header  # empty, or its first line torn: it is begun again
        if any(e.get("finished") is True for e in entries):
            raise AlreadyApplied(f"this plan was already applied to the end (see {path})")
        self.done = {
            e["index"]
            for e in entries
            if type(e.get("index")) is int and 0 <= e["index"] < actions and isinstance(e.get("result"), str)
        }

    def open(self, plan_hash: str) -> None:
        if not self.enabled:
            return
        try:
            if self._fresh:
                self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - held for the whole apply
                self._write({"plan_sha256": plan_hash})
                for index in sorted(self.done):
                    self._write({"index": index, "result": "resumed"})
            else:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole apply
        except OSError as exc:
            raise PlanError(f"{self.path}: cannot write the journal: {exc.strerror or exc}") from exc

    def _write(self, entry: dict[str, Any], sync: bool = True) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())

    def record(self, index: int, result: str, sync: bool = True) -> None:
        """Append an action's result; `sync=False` leaves it to `sync` (a batch's results are made durable at once)."""
        if self._fh is not None:
            self._write({"index": index, "result": result}, sync)

    def sync(self) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def finish(self, complete: bool) -> None:
        """Close the journal; a complete apply marks it finished, so the plan is never applied again."""
        if self._fh is not None:
            if complete:
                self._write({"finished": True})
            self._fh.close()


class _Applier:
    def __init__(
        self,
        plan: Plan,
        options: ApplyOptions,
        journal: _Journal,
        log: Callable[[str], None],
        storage: Storage | None = None,
    ) -> None:
        self.plan = plan
        self.v2 = Path(plan.root)
        self.storage: Storage = storage if storage is not None else LocalStorage(self.v2)
        self.options = options
        self.journal = journal
        self.log = log
        self.outcome = Outcome(resumed=len(journal.done))
        self.batched = False
        """Whether results are recorded in batches, made durable by `journal.sync`."""
        # What this run removed; a dry run removes nothing, so its later checks subtract these.
        self.removed_tags: set[tuple[str | None, str | None]] = set()
        self.removed_revisions: set[tuple[str | None, str | None]] = set()
        self.removed_layer_links: set[tuple[str | None, str | None]] = set()

    # -- primitives -----------------------------------------------------------

    def _read_link(self, rel: str) -> str | None:
        """The link's content; None when absent; an unreadable link (a directory, a symlink, a FIFO) never matches."""
        try:
            small = self.storage.read_small(rel, LINK_READ, stat=False)
        except AccessError as exc:
            return f"<unreadable: {exc.reason}>"
        return None if small is None else small.data.decode("ascii", "replace")

    def _exists(self, rel: str) -> bool:
        return self.storage.stat(rel) is not None

    def _remove(self, rel: str) -> int:
        """Delete (or quarantine) a file or directory; returns the bytes of the files it held."""
        freed = self.storage.bytes_below(rel)
        if not self.options.dry_run:
            self.storage.remove(rel, self.options.quarantine)
        return freed

    def _prune_empty(self, rel: str, levels: int) -> None:
        """Remove up to `levels` parent directories of `rel` that are now empty (as the registry leaves them)."""
        if not self.options.dry_run:
            self.storage.prune_empty(rel, levels)

    def _settle(self, index: int, action: Action, result: str, why: str = "", freed: int = 0) -> None:
        if result == "done":
            if action.op == Op.REMOVE_TAG:
                self.removed_tags.add((action.repository, action.tag))
            elif action.op == Op.REMOVE_REVISION:
                self.removed_revisions.add((action.repository, action.digest))
            elif action.op == Op.REMOVE_LAYER_LINK:
                self.removed_layer_links.add((action.repository, action.digest))
            self.outcome.done.append(action)
            if action.op in DATA_OPS:
                self.outcome.bytes_freed += freed
            verb = "would remove" if self.options.dry_run else "removed"
            self.log(f"{verb} {action.path}")
        elif result == "gone":
            self.outcome.gone.append(action)
        else:
            self.outcome.skipped.append((action, why))
            self.log(f"skipped {action.path}: {why}")
        if not self.options.dry_run:
            # A batch's results only follow its removal: lost in a crash, they are found gone on the next run.
            self.journal.record(index, result, sync=not self.batched)

    def _attempt(self, index: int, action: Action, step: Callable[[], None]) -> None:
        """Run one action's step; a storage error fails that action only (it is tried again on the next run)."""
        try:
            step()
        except AccessError as exc:
            self.outcome.failed.append((action, str(exc)))
            self.log(f"failed {action.path}: {exc}")

    # -- the phases -------------------------------------------------------------

    def run(self) -> Outcome:
        pending = [(i, a) for i, a in enumerate(self.plan.actions) if i not in self.journal.done]
        by_op: dict[Op, list[tuple[int, Action]]] = {op: [] for op in OPS}
        for i, action in pending:
            by_op[Op(action.op)].append((i, action))
        for i, action in by_op[Op.REMOVE_TAG]:
            current = path_for(TagCurrentLink(action.repository or "", action.tag or ""))
            self._attempt(i, action, partial(self._link_action, i, action, current, "current", 0))
        for i, action in by_op[Op.REMOVE_TAG_HISTORY]:
            self._attempt(i, action, partial(self._link_action, i, action, action.path, "link", 1))
        if by_op[Op.REMOVE_REVISION]:
            protected = self._reached_now({(a.repository, a.digest) for _, a in by_op[Op.REMOVE_REVISION]})
            for i, action in by_op[Op.REMOVE_REVISION]:
                if protected is None:
                    self._settle(i, action, "skipped", UNCERTAIN)
                elif (action.repository, action.digest) in protected:
                    self._settle(i, action, "skipped", "a tag or a remaining manifest reaches it now")
                else:
                    self._attempt(i, action, partial(self._link_action, i, action, action.path, "link", 1))
        fresh = self._fresh_inventory() if by_op[Op.REMOVE_LAYER_LINK] or by_op[Op.REMOVE_BLOB] else None
        held = None if fresh is None else self._held_now(fresh)
        for i, action in by_op[Op.REMOVE_LAYER_LINK]:
            target = action.precondition.get("link")
            if held is None:
                self._settle(i, action, "skipped", UNCERTAIN)
            elif target in held:
                self._settle(i, action, "skipped", "a manifest present now references its blob")
            else:
                self._attempt(i, action, partial(self._layer_link_action, i, action))
        if by_op[Op.REMOVE_BLOB]:
            linked = None if fresh is None else self._layer_linked_now(fresh)
            for i, action in by_op[Op.REMOVE_BLOB]:
                self._attempt(i, action, partial(self._blob_action, i, action, held, linked))
        for i, action in by_op[Op.REMOVE_UPLOAD]:
            self._attempt(i, action, partial(self._upload_action, i, action))
        for i, action in by_op[Op.REMOVE_REPOSITORY]:
            self._attempt(i, action, partial(self._repository_action, i, action))
        if not self.options.dry_run:
            self.journal.finish(complete=not self.outcome.failed)
        return self.outcome

    def _link_action(self, index: int, action: Action, link_rel: str, key: str, levels: int) -> None:
        expected = action.precondition.get(key)
        content = self._read_link(link_rel)
        if content is None:
            if self._exists(action.path):
                self._settle(index, action, "skipped", "its link is missing; left for `check` to explain")
            else:
                # Removed by an earlier run that was interrupted before pruning: prune now.
                self._prune_empty(action.path, levels)
                self._settle(index, action, "gone")
            return
        if content != expected:
            self._settle(index, action, "skipped", f"changed since planning: now names {content[:80]}")
            return
        freed = self._remove(action.path)
        self._prune_empty(action.path, levels)
        self._settle(index, action, "done", freed=freed)

    def _layer_link_action(self, index: int, action: Action) -> None:
        st = self.storage.stat(action.path)
        # The registry writes the link again when a client pushes the blob again: a push in progress.
        if st is not None and st.mtime_ns > _ns(self.plan.created_at):
            self._settle(index, action, "skipped", "written again since planning (a push in progress?)")
            return
        self._link_action(index, action, action.path, "link", levels=1)

    def _layer_linked_now(self, fresh: Inventory) -> set[str]:
        """Every blob a layer link of the fresh scan names, but those this run removed since: links a push added
        since planning."""
        links = fresh.layer_links
        keys = zip(links["repository"], links["digest"], strict=True)
        staying = links[np.array([k not in self.removed_layer_links for k in keys], dtype=bool)]
        return set(staying["digest"]) | set(staying["target"].dropna())

    def _blob_action(self, index: int, action: Action, held: set[str] | None, linked: set[str] | None) -> None:
        data = path_for(BlobData(Digest.parse(action.digest or "")))
        st = self.storage.stat(data)
        if st is None:
            self._prune_empty(action.path, levels=1)
            self._settle(index, action, "gone")
            return
        if held is None or linked is None:
            self._settle(index, action, "skipped", UNCERTAIN)
            return
        if action.digest in held:
            self._settle(index, action, "skipped", "a manifest present now references it")
            return
        if action.digest in linked:
            self._settle(index, action, "skipped", "a layer link to it was added since planning (a push in progress?)")
            return
        size, mtime = action.precondition.get("size"), action.precondition.get("mtime_ns")
        if st.size != size or st.mtime_ns != mtime or st.kind != EntryKind.FILE:
            self._settle(index, action, "skipped", "its data changed since planning")
            return
        freed = self._remove(action.path)
        self._prune_empty(action.path, levels=1)
        self._settle(index, action, "done", freed=freed)

    def _upload_action(self, index: int, action: Action) -> None:
        if not self._exists(action.path):
            self._settle(index, action, "gone")
            return
        spec = action.spec()
        assert isinstance(spec, UploadDir)  # the plan was validated: its op fixes the kind of path
        repo, upload_id = spec.repository, spec.upload_id
        started = self._read_link(path_for(UploadStartedAt(repo, upload_id)))
        expected = action.precondition.get("started_at")
        if expected is not None and (started is None or _timestamp(started) != pd.Timestamp(expected)):
            self._settle(index, action, "skipped", "it was restarted since planning")
            return
        if self.storage.bytes_below(path_for(UploadData(repo, upload_id))) != action.precondition.get("bytes"):
            self._settle(index, action, "skipped", "it received data since planning")
            return
        self._settle(index, action, "done", freed=self._remove(action.path))

    def _repository_action(self, index: int, action: Action) -> None:
        repo = action.repository or ""
        if not self._exists(action.path):
            self._settle(index, action, "gone")
            return
        parts = {part: path_for(RepositoryPart(repo, part)) for part in REPOSITORY_PARTS}
        if self.options.dry_run:
            self._settle(index, action, "done", freed=self.storage.bytes_below(parts["_uploads"]))
            return
        if _has_files(self.storage, parts["_manifests"]) or _has_files(self.storage, parts["_uploads"]):
            self._settle(index, action, "skipped", "it holds tags, manifests or uploads now")
            return
        planned = action.precondition.get("layers_changed_at")
        # Our own removals touch the directories, never the remaining link files: a newer link is a push.
        if any(planned is None or st.mtime_ns > planned for _, st in self.storage.files(parts["_layers"])):
            self._settle(index, action, "skipped", "a layer link was added since planning (a push in progress?)")
            return
        freed = 0
        for part in REPOSITORY_PARTS:
            if self._exists(parts[part]):
                freed += self._remove(parts[part])
        # Parents that are no repositories themselves and now empty go too.
        self._prune_empty(parts["_manifests"], levels=repo.count("/") + 1)
        self._settle(index, action, "done", freed=freed)

    # -- fresh looks at the tree, right before the irreversible steps -------------

    def _remaining_tags(self, inv: Inventory) -> pd.DataFrame:
        keys = zip(inv.tags["repository"], inv.tags["tag"], strict=True)
        return inv.tags[np.array([k not in self.removed_tags for k in keys], dtype=bool)]

    def _fresh_inventory(self) -> Inventory | None:
        """A new scan; None when its findings leave references unknown (then nothing irreversible runs)."""
        inv = scan(self.storage, ScanOptions())
        if isin(inv.findings["kind"], BLOCKING_KINDS).any():
            return None
        return inv

    def _reached_now(self, planned: set[tuple[str | None, str | None]]) -> set[tuple[str, str]] | None:
        inv = self._fresh_inventory()
        if inv is None:
            return None
        graph = Graph(inv)
        present = graph.present
        keys = list(zip(present["repository"], present["digest"], strict=True))
        staying = np.array([k not in planned for k in keys], dtype=bool)
        # Tags now, plus every revision that stays, keep what they reach.
        reached = graph.reached(graph.tagged(self._remaining_tags(inv)) | staying, keep_referrers=True)
        return {k for k, r in zip(keys, reached, strict=True) if r}

    def _held_now(self, inv: Inventory) -> set[str]:
        """Every blob a revision present now (any repository) or a tag names, and what those reference."""
        revisions = inv.revisions[inv.revisions["linked"]]
        gone = [k in self.removed_revisions for k in zip(revisions["repository"], revisions["digest"], strict=True)]
        tags = self._remaining_tags(inv)
        own = set(revisions[~np.array(gone, dtype=bool)]["target"].dropna()) | set(tags["digest"].dropna())
        referenced = set(inv.references[isin(inv.references["manifest"], own)]["digest"])
        return own | referenced


def _ns(when: Any) -> int:
    return int(pd.Timestamp(when).value)


def _timestamp(text: str) -> pd.Timestamp | None:
    try:
        return pd.Timestamp(text.strip())
    except ValueError:
        return None


def _has_files(storage: Storage, rel: str) -> bool:
    return next(iter(storage.files(rel)), None) is not None


def journal_path(plan_path: Path, plan_hash: str | None = None) -> Path:
    """Where the journal of the plan in `plan_path` (with sha256 `plan_hash`, else of its bytes now) is kept."""
    if plan_hash is None:
        plan_hash = hashlib.sha256(plan_path.read_bytes()).hexdigest()
    return plan_path.with_name(f"{plan_path.name}.{plan_hash[:JOURNAL_HASH_CHARS]}{JOURNAL_SUFFIX}")


def apply_plan(
    plan: Plan, plan_hash: str, plan_path: Path, options: ApplyOptions, log: Callable[[str], None] | None = None
) -> Outcome:
    """Carry out `plan` in its order, re-checking each action right before it; resumes from the journal.

    Raises UsageError for a quarantine inside the storage tree (it would move files into what it removes).
    """
    if plan.location is not None:
        raise UsageError("a plan for object storage is applied with apply_s3_plan")
    if options.quarantine is not None and is_inside(options.quarantine, Path(plan.root)):
        raise UsageError(f"{options.quarantine}: the quarantine must lie outside the storage tree {plan.root}")
    journal = _Journal(journal_path(plan_path, plan_hash), plan_hash, len(plan.actions), enabled=not options.dry_run)
    journal.open(plan_hash)
    return _Applier(plan, options, journal, log or (lambda _line: None)).run()


__all__ = ["AlreadyApplied", "ApplyOptions", "Outcome", "apply_plan", "journal_path", "read_plan"]
