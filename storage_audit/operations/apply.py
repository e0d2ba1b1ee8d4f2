"""Apply a reviewed plan file: open it against its storage, refusing what cannot be applied before anything goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from storage_audit.core.errors import UsageError
from storage_audit.roots.resolve import Root, Snapshot
from storage_audit.storage.base import RemoteOptions

if TYPE_CHECKING:
    from storage_audit.cleanup.apply import Applier, Outcome
    from storage_audit.cleanup.plan import Plan
    from storage_audit.cleanup.removers import Remover
    from storage_audit.registry_api.client import ClientOptions
    from storage_audit.registry_api.credentials import Credentials
    from storage_audit.storage.base import Storage

REFUSED = "refusing the plan, nothing was deleted"


@dataclass(frozen=True)
class RegistryTarget:
    """A running registry to carry out the plan's manifest removals through: its URL, the credentials (None:
    anonymous) and how to reach it (TLS, retries, rate limit)."""

    url: str
    credentials: Credentials | None = field(default=None, repr=False)
    client: ClientOptions | None = None


@dataclass(frozen=True)
class ApplyOptions:
    """`dry_run` removes nothing; `quarantine` keeps what goes (a directory, or for a bucket also
    `s3://BUCKET/PREFIX`); `root` is where to apply (refused unless the plan's; default: the plan's own root);
    `remote` reads a bucket named by the plan itself; `registry`, when given, carries out the tag and manifest
    removals through that running registry's API and leaves the rest for an apply on storage."""

    dry_run: bool = False
    quarantine: str | None = None
    root: Root | None = None
    remote: RemoteOptions = field(default_factory=RemoteOptions)
    registry: RegistryTarget | None = None


class Application:
    """A plan opened for applying: held against a second apply until closed (or left as a context manager)."""

    def __init__(self, plan_file: Path, plan: Plan, remover: Remover, applier: Applier) -> None:
        self.plan_file = plan_file
        self.plan = plan
        self.remover = remover
        self._applier = applier

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._applier.close()

    def run(self, log: Callable[[str], None] | None = None) -> Outcome:
        """Carry out the plan, saying each removal and skip to `log`; raises UsageError when the journal cannot be
        written (nothing was removed)."""
        from storage_audit.cleanup.plan import PlanError

        try:
            return self._applier.run(log)
        except PlanError as exc:
            raise UsageError(f"{self.plan_file}: {REFUSED}: {exc}") from exc


def open_plan(plan_file: Path, options: ApplyOptions | None = None) -> Application:
    """The plan in `plan_file`, validated and held for applying to its storage.

    Raises UsageError (nothing deleted) for a plan that cannot be read, is
    refused by its storage, or is being applied already; AlreadyApplied (exit
    code 0) when its journal says it was applied to the end.
    """
    from storage_audit.cleanup.apply import ApplyOptions as ApplierOptions
    from storage_audit.cleanup.apply import prepare, read_plan
    from storage_audit.cleanup.plan import PlanError
    from storage_audit.cleanup.removers import remover_for

    options = options or ApplyOptions()
    try:
        loaded, digest = read_plan(plan_file)
        remover = remover_for(_storage(loaded, options), options.quarantine)
        if options.registry is not None:
            remover = _through_api(remover, options)
        applier = prepare(loaded, digest, plan_file, remover, ApplierOptions(options.dry_run))
    except PlanError as exc:
        raise UsageError(f"{plan_file}: {REFUSED}: {exc}") from exc
    return Application(plan_file, loaded, remover, applier)


def apply(plan_file: Path, options: ApplyOptions | None = None, log: Callable[[str], None] | None = None) -> Outcome:
    """Apply the plan in `plan_file` without asking: each action re-checked right before it, never removing what is
    in use; a journal beside the plan lets an interrupted apply resume. Raises what `open_plan` raises."""
    with open_plan(plan_file, options) as application:
        return application.run(log)


def _through_api(storage_remover: Remover, options: ApplyOptions) -> Remover:
    """The registry's remover, whose fresh scans read the plan's storage through `storage_remover`."""
    from storage_audit.cleanup.removers.registry import RegistryRemover
    from storage_audit.registry_api.client import RegistryClient

    assert options.registry is not None
    if options.quarantine is not None:
        raise UsageError("--quarantine keeps files removed on storage; the registry's API deletes, it keeps nothing")
    target = options.registry
    return RegistryRemover(RegistryClient(target.url, target.credentials, target.client), storage_remover)


def _storage(plan: Plan, options: ApplyOptions) -> Storage:
    """Where a plan goes: the given root's storage (refused unless the plan's), else the plan's own."""
    from storage_audit.cleanup.removers import plan_storage

    root = options.root
    if isinstance(root, Snapshot):
        raise UsageError(f"{REFUSED}: it is for {plan.root}, not the snapshot {root.location}")
    if root is not None:
        return root.storage
    return plan_storage(plan, options.remote)
