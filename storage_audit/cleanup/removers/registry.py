"""Removal through a running registry's API: the plan's manifests deleted by digest (their tags go with them) while
the registry serves; what lies on storage (blobs, links, uploads, repositories) is left for the storage phase."""

from __future__ import annotations

from collections.abc import Sequence

from storage_audit.cleanup.action import Action, Op, PlanError, TagPrecondition
from storage_audit.cleanup.plan import Plan
from storage_audit.cleanup.removers.base import Found, Item, Remover
from storage_audit.core.errors import StorageError
from storage_audit.registry_api.client import RegistryClient
from storage_audit.storage.base import Storage

BATCH = 50
"""Actions looked at, then removed, at once: a repository's tags are listed once per batch."""
PROBE = "sha256:" + "0" * 64
"""A digest no manifest has: its DELETE tells whether the registry deletes at all (405 when it does not)."""
STORAGE_PHASE = "the storage phase (`storage-audit apply PLAN` with the registry read-only)"
ON_STORAGE = "blobs, layer links, tag history, uploads and repositories are swept on storage"
TAG_ALONE = (
    "the API removes a tag only by deleting its manifest, with every other tag on it, and the plan keeps that manifest"
)


class RegistryRemover(Remover):
    """The plan's tag and revision removals, carried out through the registry's API while it serves.

    A revision is deleted by digest (`DELETE /v2/<name>/manifests/<digest>`);
    the registry removes every tag on it with it, so a tag goes with its
    manifest's deletion, never alone, and a manifest that tags the plan keeps
    point at now is not deleted. Right before each batch, every target is
    looked at through the API: a tag must still name the digest the plan saw
    (`HEAD` by tag), a manifest must still be there. The fresh scans the
    applier makes before the revisions read the plan's storage through
    `storage_remover`, which also says whether the plan is for that storage.
    """

    where = "through the registry's API"
    untags_with_revision = True
    leaves_to = STORAGE_PHASE

    def __init__(self, client: RegistryClient, storage_remover: Remover) -> None:
        super().__init__()
        self.client = client
        self.storage_remover = storage_remover
        self._revisions: set[tuple[str | None, str | None]] = set()
        self._untagged: set[tuple[str | None, str | None, str]] = set()

    def _refuse(self, plan: Plan) -> None:
        self.storage_remover.check(plan)
        self._revisions = {(a.repository, a.digest) for a in plan.actions if a.op is Op.REMOVE_REVISION}
        self._untagged = {
            (a.repository, a.tag, a.precondition.current)
            for a in plan.actions
            if isinstance(a.precondition, TagPrecondition)
        }
        self.client.ping()
        repositories = sorted({repo for repo, _ in self._revisions if repo})
        if repositories:
            # Before anything: a registry that does not delete says so now (405), not half-way through.
            self.client.delete_manifest(repositories[0], PROBE)

    def leaves(self, action: Action) -> str | None:
        if action.op is Op.REMOVE_REVISION:
            return None
        if isinstance(action.precondition, TagPrecondition):
            return None if (action.repository, action.precondition.current) in self._revisions else TAG_ALONE
        return ON_STORAGE

    def fresh(self) -> Storage:
        return self.storage_remover.fresh()

    def batches(self, items: Sequence[Item]) -> list[list[Item]]:
        return [list(items[n : n + BATCH]) for n in range(0, len(items), BATCH)]

    # -- what the targets are now -------------------------------------------------------------

    def look(
        self, plan: Plan, actions: Sequence[Action], scanned: Storage | None = None
    ) -> list[Found | StorageError | None]:
        kept: dict[str, dict[str, list[str]]] = {}
        out: list[Found | StorageError | None] = []
        for action in actions:
            repository = action.repository or ""
            if isinstance(action.precondition, TagPrecondition):
                now = self.client.manifest_digest(repository, action.tag or "")
                planned = action.precondition.current
                moved = None if now == planned else f"it names {now} now, not {planned} as planned"
                out.append(None if now is None else Found({action.path: 0}, moved))
                continue
            digest = action.digest or ""
            if self.client.manifest_digest(repository, digest) is None:
                out.append(None)
                continue
            if repository not in kept:
                kept[repository] = self._kept_tags(repository)
            tags = kept[repository].get(digest, [])
            why = f"deleting it would delete the tags {', '.join(sorted(tags))}, which the plan keeps" if tags else None
            out.append(Found({action.path: 0}, why))
        return out

    def _kept_tags(self, repository: str) -> dict[str, list[str]]:
        """The tags of `repository` now that the plan does not remove, by the digest each names now."""
        out: dict[str, list[str]] = {}
        for tag in self.client.tags(repository):
            digest = self.client.manifest_digest(repository, tag)
            if digest is not None and (repository, tag, digest) not in self._untagged:
                out.setdefault(digest, []).append(tag)
        return out

    # -- removing ---------------------------------------------------------------------------

    def remove(self, approved: Sequence[tuple[Action, Found]]) -> None:
        for action, _ in approved:
            if action.op is not Op.REMOVE_REVISION:
                raise PlanError(f"{action.op} {action.path}: not for the registry's API")  # `leaves` keeps them out
            self.client.delete_manifest(action.repository or "", action.digest or "")


__all__ = ["STORAGE_PHASE", "RegistryRemover"]
