"""Apply a reviewed deletion plan: every rule of deletion safety, once, over a backend that only looks and removes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from storage_audit.analysis.graph import Graph
from storage_audit.cleanup.action import LayerLinkPrecondition, RevisionPrecondition, TagPrecondition
from storage_audit.cleanup.journal import AlreadyApplied, Journal, PlanBusy, journal_path
from storage_audit.cleanup.plan import BLOCKING_KINDS, OPS, Action, Op, Plan, PlanError, revision_ranks
from storage_audit.cleanup.removers.base import Found, Item, Remover
from storage_audit.core import clock
from storage_audit.core.errors import StorageError
from storage_audit.inventory.frames import isin
from storage_audit.inventory.tables import Inventory
from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import AccessError, Storage, read_regular

PLAN_LIMIT = 1 << 36
"""64 GiB: far more than a plan of a hundred million actions takes; what is bigger is no plan."""
CLOCK_SKEW = timedelta(minutes=1)
"""How far ahead of this machine's clock a plan's creation may lie (the clocks of two hosts differ)."""

DATA_OPS = (Op.REMOVE_BLOB, Op.REMOVE_UPLOAD, Op.REMOVE_REPOSITORY)
"""Ops whose bytes count as freed: blob and upload data (link files are a few bytes each)."""

UNCERTAIN = "the storage has findings that leave references unknown (run `storage-audit check`)"
REACHED = "a tag or a remaining manifest reaches it now"
BLOB_HELD = "a manifest present now references its blob"
HELD = "a manifest present now references it"
LINKED = "a layer link to it was added since planning (a push in progress?)"
BUSY = "it holds tags, manifests or uploads now"
KEPT_MANIFEST = "its manifest was not deleted (skipped, failed or left)"

Veto = Callable[[Action], str | None]
"""Why an action must not run now, or None."""


@dataclass(frozen=True)
class ApplyOptions:
    """dry_run changes nothing and writes no journal: it says what would be removed."""

    dry_run: bool = False


@dataclass
class Outcome:
    """What an apply did, per action: done, skipped (with why; `refused` in its table where the plan marked it so),
    already gone, failed (with the error), or left to another phase by a remover that does not carry it out (with
    why; not journaled, so a later apply does it).

    `bytes` are those of the blob and upload data removed (freed, or moved to
    a quarantine); in a dry run, what would be. A dry run's done actions are
    those it would remove.
    """

    done: list[Action] = field(default_factory=list)
    skipped: list[tuple[Action, str]] = field(default_factory=list)
    gone: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    left: list[tuple[Action, str]] = field(default_factory=list)
    resumed: int = 0
    bytes: int = 0
    dry_run: bool = False

    def frame(self) -> pd.DataFrame:
        done = "would remove" if self.dry_run else "done"
        rows = [(a.op, done) for a in self.done]
        rows += [(a.op, "skipped" if a.refused is None else "refused") for a, _ in self.skipped]
        rows += [(a.op, "already gone") for a in self.gone]
        rows += [(a.op, "failed") for a, _ in self.failed]
        rows += [(a.op, "left") for a, _ in self.left]
        frame = pd.DataFrame([(str(op), result) for op, result in rows], columns=["op", "result"])
        return frame.groupby(["op", "result"]).size().rename("count").reset_index()


def read_plan(path: Path) -> tuple[Plan, str]:
    """The validated plan in `path` and the sha256 of its bytes; raises PlanError.

    A plan is a regular file, read without following a symbolic link or waiting on a FIFO.
    """
    try:
        raw = read_regular(path, PLAN_LIMIT)
    except AccessError as exc:
        raise PlanError(f"cannot read: {exc.reason}") from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from exc
    return Plan.from_json(doc), hashlib.sha256(raw).hexdigest()


def _no_veto(_action: Action) -> str | None:
    return None


class Applier(AbstractContextManager["Applier"]):
    """Carries out a plan's pending actions through a remover, in the plan's order, each re-checked right before.

    It runs the phases in the plan's order, scans the tree afresh before the
    revisions and again before the layer links and blobs, vetoes what is in
    use now, and journals each result; the remover (`cleanup.removers`) says
    what each action's target is now, whether that is what the plan saw, and
    removes what the applier approves. Made by `prepare`, which holds the
    plan against a second apply until the applier is closed (or used as a
    context manager). What this run removed is remembered, so that the later
    checks of a dry run, which removes nothing, see the tree as a real run
    would. What the remover `leaves` (the registry's API leaves all but tags
    and revisions) is neither done nor journaled, and the journal is then not
    marked finished, so that an apply on storage carries it out afterwards.
    """

    def __init__(self, plan: Plan, remover: Remover, journal: Journal, options: ApplyOptions) -> None:
        self.plan = plan
        self.remover = remover
        self.journal = journal
        self.dry_run = options.dry_run
        self.log: Callable[[str], None] = lambda _line: None
        self.outcome = Outcome(resumed=len(journal.done), dry_run=options.dry_run)
        self.removed_tags: set[tuple[str | None, str | None]] = set()
        self.removed_revisions: set[tuple[str | None, str | None]] = set()
        self.removed_layer_links: set[tuple[str | None, str | None]] = set()
        self.removed_paths: set[str] = set()
        # Tags that go with their manifest's deletion (a remover with `untags_with_revision`), by that manifest.
        self.deferred: dict[tuple[str | None, str], list[Item]] = {}
        verb = "removed" if remover.quarantine is None else "quarantined"
        self.verb = "would remove" if self.dry_run else verb

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the plan (and its journal)."""
        self.journal.close()

    # -- the phases -------------------------------------------------------------

    def run(self, log: Callable[[str], None] | None = None) -> Outcome:
        """Apply the plan, saying each removal and skip to `log`; the plan is released at the end."""
        if log is not None:
            self.log = log
        try:
            if not self.dry_run:
                self.journal.open()
            outcome = self._phases()
            if not self.dry_run:
                # A plan that left actions to another phase is not applied to the end: that phase resumes it.
                self.journal.finish(complete=not outcome.failed and not outcome.left)
        finally:
            self.close()
        return outcome

    def _phases(self) -> Outcome:
        by_op: dict[Op, list[Item]] = {op: [] for op in OPS}
        for i, action in enumerate(self.plan.actions):
            if i in self.journal.done:
                continue
            why = self.remover.leaves(action)
            if why is None:
                by_op[action.op].append((i, action))
            else:
                self.outcome.left.append((action, why))
        self._say_left(self.outcome.left)
        revisions = by_op[Op.REMOVE_REVISION]
        tags, with_revision = by_op[Op.REMOVE_TAG], []
        if self.remover.untags_with_revision:
            # Every revision of the plan, those an earlier run deleted too: their tags are never removed alone.
            planned = {(a.repository, a.digest) for a in self.plan.actions if a.op is Op.REMOVE_REVISION}
            with_revision = [(i, a) for i, a in tags if (a.repository, _tag_target(a)) in planned]
            tags = [(i, a) for i, a in tags if (a.repository, _tag_target(a)) not in planned]
        self._phase(tags)
        self._phase(with_revision, defer=True)
        self._phase(by_op[Op.REMOVE_TAG_HISTORY])
        if revisions:
            fresh = self._fresh_inventory()
            planned = {(a.repository, a.digest) for _, a in revisions}
            reached = None if fresh is None else self._reached_now(fresh, planned)
            for group in _by_rank(fresh, revisions):
                self._phase(group, partial(_reached_veto, reached))
        kept = [(a, KEPT_MANIFEST) for items in self.deferred.values() for _, a in items]
        self.outcome.left += kept
        self._say_left(kept)
        if by_op[Op.REMOVE_LAYER_LINK] or by_op[Op.REMOVE_BLOB]:
            scanned = self.remover.fresh()
            fresh = self._fresh_inventory(scanned)
            held = None if fresh is None else self._held_now(fresh)
            # No action of either phase holds a key of another: what the scan listed of each is still all there is,
            # but what this run removed of it (which its look finds gone when asked).
            self._phase(by_op[Op.REMOVE_LAYER_LINK], partial(_link_veto, held), scanned=scanned)
            # After the layer links: those removed since do not keep their blobs.
            linked = None if fresh is None else self._layer_linked_now(fresh)
            self._phase(by_op[Op.REMOVE_BLOB], partial(_blob_veto, held, linked), scanned=scanned)
        self._phase(by_op[Op.REMOVE_UPLOAD])
        self._phase(by_op[Op.REMOVE_REPOSITORY])
        return self.outcome

    def _say_left(self, left: Sequence[tuple[Action, str]]) -> None:
        """One line per op and reason: a plan leaves thousands of blobs to the storage phase."""
        counts: dict[tuple[Op, str], int] = {}
        for action, why in left:
            counts[action.op, why] = counts.get((action.op, why), 0) + 1
        for (op, why), n in counts.items():
            self.log(f"left {n} {op} for {self.remover.leaves_to}: {why}")

    def _phase(
        self, items: Sequence[Item], veto: Veto = _no_veto, defer: bool = False, scanned: Storage | None = None
    ) -> None:
        """Each batch the remover makes: look at its targets now, settle what goes no further, remove the rest.

        `defer`: what is approved is not removed now but goes with its manifest, which the revision phase deletes
        (the tags of a remover with `untags_with_revision`); until then it counts as removed for the vetoes.
        `scanned`: the storage of the fresh scan the vetoes were judged on, when nothing removed since holds a key
        of these actions (see `Remover.look`).
        """
        for batch in self.remover.batches(items):
            settled: set[int] = set()
            try:
                found = self.remover.look(self.plan, [a for _, a in batch], scanned)
                approved: list[tuple[int, Action, Found]] = []
                for (i, action), now in zip(batch, found, strict=True):
                    if isinstance(now, StorageError):
                        self._fail(action, now)
                        settled.add(i)
                        continue
                    if now is None:
                        if not self.dry_run:
                            self.remover.tidy(action)
                        self._settle(i, action, "gone")
                        settled.add(i)
                        continue
                    why = veto(action) or self._busy(action, now) or now.changed
                    if why is not None:
                        self._settle(i, action, "skipped", why)
                        settled.add(i)
                    else:
                        approved.append((i, action, now))
                if defer:
                    for i, action, _ in approved:
                        self.removed_tags.add((action.repository, action.tag))
                        self.deferred.setdefault((action.repository, _tag_target(action)), []).append((i, action))
                        settled.add(i)
                    approved = []
                errors: Sequence[StorageError | None] | None = None
                if approved and not self.dry_run:
                    errors = self.remover.remove([(action, now) for _, action, now in approved])
                for n, (i, action, now) in enumerate(approved):
                    error = None if errors is None else errors[n]
                    if error is not None:
                        self._fail(action, error)
                    else:
                        self._settle(i, action, "done", size=self._bytes(action, now))
                    settled.add(i)
            except StorageError as exc:
                for i, action in batch:
                    if i not in settled:
                        self._fail(action, exc)
            # A batch's results only follow its removal: lost in a crash, they are found gone on the next run.
            self.journal.sync()

    def _fail(self, action: Action, exc: StorageError) -> None:
        """Not journaled: a later apply looks at it again."""
        self.outcome.failed.append((action, str(exc)))
        self.log(f"failed {action.path}: {exc}")

    def _settle(self, index: int, action: Action, result: str, why: str = "", size: int = 0) -> None:
        if result == "done":
            key = (action.repository, action.digest)
            if action.op is Op.REMOVE_TAG:
                self.removed_tags.add((action.repository, action.tag))
            elif action.op is Op.REMOVE_REVISION:
                self.removed_revisions.add(key)
            elif action.op is Op.REMOVE_LAYER_LINK:
                self.removed_layer_links.add(key)
            self.removed_paths.add(action.path)
            self.outcome.done.append(action)
            self.outcome.bytes += size
            self.log(f"{self.verb} {action.path}")
            if action.op is Op.REMOVE_REVISION:
                # The tags that went with this manifest's deletion.
                for i, tag in self.deferred.pop((action.repository, action.digest or ""), []):
                    self._settle(i, tag, "done")
        elif result == "gone":
            self.outcome.gone.append(action)
        else:
            self.outcome.skipped.append((action, why))
            # A plan made --gc-compatible marks what the stock collector deletes and these rules keep.
            self.log(f"{'skipped' if action.refused is None else 'refused'} {action.path}: {why}")
        if not self.dry_run:
            self.journal.record(index, result)

    # -- what stays in use now ------------------------------------------------------

    def _busy(self, action: Action, now: Found) -> str | None:
        """A repository goes only when nothing but layer links is left in it."""
        if action.op is not Op.REMOVE_REPOSITORY:
            return None
        layers = f"{action.path}/_layers/"
        if any(not path.startswith(layers) and not self._removed_here(path) for path in now.held()):
            return BUSY
        return None

    def _removed_here(self, path: str) -> bool:
        """Whether this dry run would have removed `path` already (a real run finds it gone, or written again)."""
        if not self.dry_run:
            return False
        parts = path.split("/")
        return any("/".join(parts[:n]) in self.removed_paths for n in range(1, len(parts) + 1))

    def _bytes(self, action: Action, now: Found) -> int:
        if action.op not in DATA_OPS:
            return 0
        return sum(size for path, size in now.held().items() if not self._removed_here(path))

    def _fresh_inventory(self, storage: Storage | None = None) -> Inventory | None:
        """A new scan (of `storage`, the remover's fresh one by default); None when its findings leave references
        unknown (then nothing irreversible runs)."""
        inv = scan(storage or self.remover.fresh(), ScanOptions())
        if isin(inv.findings["kind"], BLOCKING_KINDS).any():
            return None
        return inv

    def _remaining_tags(self, inv: Inventory) -> pd.DataFrame:
        keys = zip(inv.tags["repository"], inv.tags["tag"], strict=True)
        return inv.tags[np.array([k not in self.removed_tags for k in keys], dtype=bool)]

    def _reached_now(self, inv: Inventory, planned: set[tuple[str | None, str | None]]) -> set[tuple[str, str]]:
        """The revisions that the tags now, and every revision that stays, reach."""
        graph = Graph(inv)
        present = graph.present
        keys = list(zip(present["repository"], present["digest"], strict=True))
        staying = np.array([k not in planned for k in keys], dtype=bool)
        reached = graph.reached(graph.tagged(self._remaining_tags(inv)) | staying, keep_referrers=True)
        return {k for k, r in zip(keys, reached, strict=True) if r}

    def _held_now(self, inv: Inventory) -> set[str]:
        """Every blob a revision present now (any repository) or a tag names, what those reference, and what the
        children their lists and indexes name reference in turn, revision link or not (as planning keeps it)."""
        revisions = inv.revisions[inv.revisions["linked"]]
        gone = [k in self.removed_revisions for k in zip(revisions["repository"], revisions["digest"], strict=True)]
        tags = self._remaining_tags(inv)
        held = set(revisions[~np.array(gone, dtype=bool)]["target"].dropna()) | set(tags["digest"].dropna())
        refs = inv.references
        frontier = set(held)
        while frontier:
            named = refs[isin(refs["manifest"], frontier)]
            children = set(named["digest"][(named["ref_type"] == "child").to_numpy()])
            frontier = children - held
            held |= set(named["digest"])
        return held

    def _layer_linked_now(self, inv: Inventory) -> set[str]:
        """Every blob a layer link of the fresh scan names, but those this run removed since: links a push added
        since planning."""
        links = inv.layer_links
        keys = zip(links["repository"], links["digest"], strict=True)
        staying = links[np.array([k not in self.removed_layer_links for k in keys], dtype=bool)]
        return set(staying["digest"]) | set(staying["target"].dropna())


# -- the vetoes -------------------------------------------------------------------------


def _reached_veto(reached: set[tuple[str, str]] | None, action: Action) -> str | None:
    if reached is None:
        return UNCERTAIN
    return REACHED if (action.repository, action.digest) in reached else None


def _link_veto(held: set[str] | None, action: Action) -> str | None:
    if held is None:
        return UNCERTAIN
    assert isinstance(action.precondition, LayerLinkPrecondition)  # the plan was validated: its op fixes the kind
    return BLOB_HELD if action.precondition.link in held else None


def _blob_veto(held: set[str] | None, linked: set[str] | None, action: Action) -> str | None:
    if held is None or linked is None:
        return UNCERTAIN
    if action.digest in held:
        return HELD
    return LINKED if action.digest in linked else None


def _tag_target(action: Action) -> str:
    """The digest a tag named when the plan was made."""
    assert isinstance(action.precondition, TagPrecondition)  # the plan was validated: its op fixes the kind
    return action.precondition.current


def _by_rank(inv: Inventory | None, items: list[Item]) -> list[list[Item]]:
    """Revisions in the plan's order, split where their rank changes: referrers, then indexes, then images.

    A remover may remove a batch in no set order: an index and its child in
    one batch could leave the index without its child.
    """
    if inv is None or not items:
        return [items]
    targets = []
    for _, action in items:
        assert isinstance(action.precondition, RevisionPrecondition)  # the plan was validated
        targets.append(action.precondition.link)
    ranks = revision_ranks(inv, pd.Series(targets, dtype=object))
    groups: list[list[Item]] = []
    for n, item in enumerate(items):
        if not groups or ranks[n] != ranks[n - 1]:
            groups.append([])
        groups[-1].append(item)
    return groups


def prepare(plan: Plan, plan_hash: str, plan_path: Path, remover: Remover, options: ApplyOptions) -> Applier:
    """Everything that refuses an apply, before anything is removed: the remover's check of the plan, the plan held
    against a second apply (not in a dry run), its journal read.

    Raises PlanError for a plan the remover refuses (nothing is deleted, no
    journal is written) or one created later than this machine's clock says
    it is now, PlanBusy while another apply of the plan runs, AlreadyApplied
    when the journal says it was applied to the end.
    """
    machine = clock.machine_now()
    if plan.created_at > machine + CLOCK_SKEW:
        # Its re-checks compare what changed since its creation: a future creation would hide a push since.
        raise PlanError(
            f"it was created at {plan.created_at.isoformat()}, later than this machine's clock "
            f"({machine.isoformat(timespec='seconds')}); made with STORAGE_AUDIT_NOW set, or on a host whose "
            "clock runs ahead? Plan again without it"
        )
    remover.check(plan)
    journal = Journal(plan_path, plan_hash, len(plan.actions))
    try:
        if not options.dry_run:
            journal.lock()
        journal.read()
    except BaseException:
        journal.close()
        raise
    return Applier(plan, remover, journal, options)


def apply_plan(
    plan: Plan,
    plan_hash: str,
    plan_path: Path,
    remover: Remover,
    options: ApplyOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Carry out `plan` through `remover`, in its order, re-checking each action right before it; resumes from the
    journal beside `plan_path`. Raises what `prepare` raises."""
    return prepare(plan, plan_hash, plan_path, remover, options or ApplyOptions()).run(log)


__all__ = [
    "AlreadyApplied",
    "Applier",
    "ApplyOptions",
    "Outcome",
    "PlanBusy",
    "apply_plan",
    "journal_path",
    "prepare",
    "read_plan",
]
