"""Apply a reviewed deletion plan: validate it, re-check every precondition, never remove what is still used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import EXIT_OK, AuditError
from .frames import isin
from .graph import Graph
from .inventory import Inventory
from .paths import BlobData, Digest, path_for
from .plan import BLOCKING_KINDS, OPS, Action, Plan, PlanError
from .scan import ScanOptions, scan

JOURNAL_SUFFIX = ".journal"
REPOSITORY_PARTS = ("_manifests", "_layers", "_uploads")
# Ops whose bytes count as freed: blob and upload data (link files are a few bytes each).
DATA_OPS = ("remove-blob", "remove-upload", "remove-repository")
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
    """What an apply did, per action: done, skipped (with why), or already gone."""

    done: list[Action] = field(default_factory=list)
    skipped: list[tuple[Action, str]] = field(default_factory=list)
    gone: list[Action] = field(default_factory=list)
    resumed: int = 0
    bytes_freed: int = 0

    def frame(self) -> pd.DataFrame:
        rows = [(a.op, "done") for a in self.done] + [(a.op, "skipped") for a, _ in self.skipped]
        rows += [(a.op, "already gone") for a in self.gone]
        frame = pd.DataFrame(rows, columns=["op", "result"])
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
    v2 = Path(plan.root)
    if not v2.is_dir() or not ((v2 / "repositories").is_dir() or (v2 / "blobs").is_dir()):
        raise PlanError(f"the plan's root {plan.root} is not a registry's v2 directory")
    for i, action in enumerate(plan.actions):
        _no_symlinks(v2, action.path, f"action #{i}")
    return plan, hashlib.sha256(raw).hexdigest()


def _no_symlinks(v2: Path, rel: str, what: str) -> None:
    """Refuse a path with a symbolic link anywhere between `v2` and its end."""
    current = v2
    for part in rel.split("/"):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return  # nothing further down exists: nothing can be followed
        except OSError as exc:
            raise PlanError(f"{what}: cannot inspect {current}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise PlanError(f"{what}: {current} is a symbolic link; refusing to act through it")


class _Journal:
    """Append-only record beside the plan: resume after an interruption, never apply twice."""

    def __init__(self, path: Path, plan_hash: str, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.done: set[int] = set()
        self._fh: Any = None
        if not path.exists():
            return
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash: its action is simply checked again
        lines = [entry for entry in lines if isinstance(entry, dict)]
        if not lines or lines[0].get("plan_sha256") != plan_hash:
            raise PlanError(f"{path} belongs to another plan; move it away to apply this one")
        if any(entry.get("finished") for entry in lines):
            raise AlreadyApplied(f"this plan was already applied to the end (see {path})")
        self.done = {entry["index"] for entry in lines[1:] if "index" in entry}

    def open(self, plan_hash: str) -> None:
        if not self.enabled:
            return
        fresh = not self.path.exists()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole apply
        if fresh:
            self._write({"plan_sha256": plan_hash})

    def _write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def record(self, index: int, result: str) -> None:
        if self._fh is not None:
            self._write({"index": index, "result": result})

    def finish(self) -> None:
        if self._fh is not None:
            self._write({"finished": True})
            self._fh.close()


class _Applier:
    def __init__(self, plan: Plan, options: ApplyOptions, journal: _Journal, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.v2 = Path(plan.root)
        self.options = options
        self.journal = journal
        self.log = log
        self.outcome = Outcome(resumed=len(journal.done))
        # What this run removed; a dry run removes nothing, so its later checks subtract these.
        self.removed_tags: set[tuple[str | None, str | None]] = set()
        self.removed_revisions: set[tuple[str | None, str | None]] = set()

    # -- primitives -----------------------------------------------------------

    def _read_link(self, rel: str) -> str | None:
        """The link's content; None when absent; an unreadable link (a directory, a symlink) never matches."""
        try:
            fd = os.open(self.v2 / rel, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"<unreadable: {exc.strerror}>"
        try:
            return os.read(fd, 512).decode("ascii", "replace")
        except OSError as exc:
            return f"<unreadable: {exc.strerror}>"
        finally:
            os.close(fd)

    def _remove(self, rel: str) -> int:
        """Delete (or quarantine) a file or directory; returns the bytes of the files it held."""
        target = self.v2 / rel
        freed = _tree_bytes(target)
        if self.options.dry_run:
            return freed
        if self.options.quarantine is not None:
            _merge_move(target, self.options.quarantine / rel)
        elif target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        return freed

    def _prune_empty(self, rel: str, levels: int) -> None:
        """Remove up to `levels` parent directories of `rel` that are now empty (as the registry leaves them)."""
        if self.options.dry_run:
            return
        parent = (self.v2 / rel).parent
        for _ in range(levels):
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def _settle(self, index: int, action: Action, result: str, why: str = "", freed: int = 0) -> None:
        if result == "done":
            if action.op == "remove-tag":
                self.removed_tags.add((action.repository, action.tag))
            elif action.op == "remove-revision":
                self.removed_revisions.add((action.repository, action.digest))
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
            self.journal.record(index, result)

    # -- the phases -------------------------------------------------------------

    def run(self) -> Outcome:
        pending = [(i, a) for i, a in enumerate(self.plan.actions) if i not in self.journal.done]
        by_op: dict[str, list[tuple[int, Action]]] = {op: [] for op in OPS}
        for i, action in pending:
            by_op[action.op].append((i, action))
        for i, action in by_op["remove-tag"]:
            self._link_action(i, action, action.path + "/current/link", "current", levels=0)
        for i, action in by_op["remove-tag-history"]:
            self._link_action(i, action, action.path, "link", levels=1)
        if by_op["remove-revision"]:
            protected = self._reached_now({(a.repository, a.digest) for _, a in by_op["remove-revision"]})
            for i, action in by_op["remove-revision"]:
                if protected is None:
                    self._settle(i, action, "skipped", UNCERTAIN)
                elif (action.repository, action.digest) in protected:
                    self._settle(i, action, "skipped", "a tag or a remaining manifest reaches it now")
                else:
                    self._link_action(i, action, action.path, "link", levels=1)
        held = self._held_now() if by_op["remove-layer-link"] or by_op["remove-blob"] else None
        for i, action in by_op["remove-layer-link"]:
            target = action.precondition.get("link")
            if held is None:
                self._settle(i, action, "skipped", UNCERTAIN)
            elif target in held:
                self._settle(i, action, "skipped", "a manifest present now references its blob")
            else:
                self._link_action(i, action, action.path, "link", levels=1)
        if by_op["remove-blob"]:
            for i, action in by_op["remove-blob"]:
                self._blob_action(i, action, held)
        for i, action in by_op["remove-upload"]:
            self._upload_action(i, action)
        for i, action in by_op["remove-repository"]:
            self._repository_action(i, action)
        if not self.options.dry_run:
            self.journal.finish()
        return self.outcome

    def _link_action(self, index: int, action: Action, link_rel: str, key: str, levels: int) -> None:
        expected = action.precondition.get(key)
        content = self._read_link(link_rel)
        if content is None:
            if (self.v2 / action.path).exists():
                self._settle(index, action, "skipped", "its link is missing; left for `check` to explain")
            else:
                self._settle(index, action, "gone")
            return
        if content != expected:
            self._settle(index, action, "skipped", f"changed since planning: now names {content[:80]}")
            return
        freed = self._remove(action.path)
        self._prune_empty(action.path, levels)
        self._settle(index, action, "done", freed=freed)

    def _blob_action(self, index: int, action: Action, held: set[str] | None) -> None:
        data = self.v2 / path_for(BlobData(Digest.parse(action.digest or "")))
        try:
            st = os.lstat(data)
        except FileNotFoundError:
            self._settle(index, action, "gone")
            return
        if held is None:
            self._settle(index, action, "skipped", UNCERTAIN)
            return
        if action.digest in held:
            self._settle(index, action, "skipped", "a manifest present now references it")
            return
        size, mtime = action.precondition.get("size"), action.precondition.get("mtime_ns")
        if st.st_size != size or st.st_mtime_ns != mtime or not stat.S_ISREG(st.st_mode):
            self._settle(index, action, "skipped", "its data changed since planning")
            return
        freed = self._remove(action.path)
        self._prune_empty(action.path, levels=1)
        self._settle(index, action, "done", freed=freed)

    def _upload_action(self, index: int, action: Action) -> None:
        directory = self.v2 / action.path
        if not directory.exists():
            self._settle(index, action, "gone")
            return
        started = self._read_link(action.path + "/startedat")
        expected = action.precondition.get("started_at")
        if expected is not None and (started is None or _timestamp(started) != pd.Timestamp(expected)):
            self._settle(index, action, "skipped", "it was restarted since planning")
            return
        if _tree_bytes(directory / "data") != action.precondition.get("bytes"):
            self._settle(index, action, "skipped", "it received data since planning")
            return
        self._settle(index, action, "done", freed=self._remove(action.path))

    def _repository_action(self, index: int, action: Action) -> None:
        directory = self.v2 / action.path
        if not directory.exists():
            self._settle(index, action, "gone")
            return
        if self.options.dry_run:
            self._settle(index, action, "done", freed=_tree_bytes(directory / "_uploads"))
            return
        if _has_files(directory / "_manifests") or _has_files(directory / "_uploads"):
            self._settle(index, action, "skipped", "it holds tags, manifests or uploads now")
            return
        planned = action.precondition.get("layers_changed_at")
        # Our own removals touch the directories, never the remaining link files: a newer link is a push.
        if any(planned is None or m > planned for m in _file_mtimes(directory / "_layers")):
            self._settle(index, action, "skipped", "a layer link was added since planning (a push in progress?)")
            return
        freed = 0
        for part in REPOSITORY_PARTS:
            if (directory / part).exists():
                freed += self._remove(f"{action.path}/{part}")
        # Parents that are no repositories themselves and now empty go too.
        self._prune_empty(f"{action.path}/_", levels=action.path.count("/"))
        self._settle(index, action, "done", freed=freed)

    # -- fresh looks at the tree, right before the irreversible steps -------------

    def _remaining_tags(self, inv: Inventory) -> pd.DataFrame:
        keys = zip(inv.tags["repository"], inv.tags["tag"], strict=True)
        return inv.tags[np.array([k not in self.removed_tags for k in keys], dtype=bool)]

    def _fresh_inventory(self) -> Inventory | None:
        """A new scan; None when its findings leave references unknown (then nothing irreversible runs)."""
        inv = scan(self.v2, ScanOptions())
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

    def _held_now(self) -> set[str] | None:
        """Every blob a revision present now (any repository) or a tag names, and what those reference."""
        inv = self._fresh_inventory()
        if inv is None:
            return None
        revisions = inv.revisions[inv.revisions["linked"]]
        gone = [k in self.removed_revisions for k in zip(revisions["repository"], revisions["digest"], strict=True)]
        tags = self._remaining_tags(inv)
        own = set(revisions[~np.array(gone, dtype=bool)]["target"].dropna()) | set(tags["digest"].dropna())
        referenced = set(inv.references[isin(inv.references["manifest"], own)]["digest"])
        return own | referenced


def _merge_move(source: Path, dest: Path) -> None:
    """Move `source` to `dest`, merging into what an earlier quarantine left there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.move(str(source), str(dest))
    elif source.is_dir() and not source.is_symlink() and dest.is_dir():
        for child in list(source.iterdir()):
            _merge_move(child, dest / child.name)
        source.rmdir()
    else:
        dest.unlink() if not dest.is_dir() else shutil.rmtree(dest)
        shutil.move(str(source), str(dest))


def _tree_bytes(path: Path) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _file_mtimes(path: Path) -> list[int]:
    return [
        os.lstat(os.path.join(dirpath, name)).st_mtime_ns for dirpath, _dirs, files in os.walk(path) for name in files
    ]


def _timestamp(text: str) -> pd.Timestamp | None:
    try:
        return pd.Timestamp(text.strip())
    except ValueError:
        return None


def _has_files(path: Path) -> bool:
    return any(files for _, _, files in os.walk(path))


def journal_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.name + JOURNAL_SUFFIX)


def apply_plan(
    plan: Plan, plan_hash: str, plan_path: Path, options: ApplyOptions, log: Callable[[str], None] | None = None
) -> Outcome:
    """Carry out `plan` in its order, re-checking each action right before it; resumes from the journal."""
    journal = _Journal(journal_path(plan_path), plan_hash, enabled=not options.dry_run)
    journal.open(plan_hash)
    return _Applier(plan, options, journal, log or (lambda _line: None)).run()


__all__ = ["AlreadyApplied", "ApplyOptions", "Outcome", "apply_plan", "journal_path", "read_plan"]
