"""The removers: how each storage backend (and a running registry's API) removes a plan's approved actions; the
applier's rules are above them."""

from __future__ import annotations

from pathlib import Path

from storage_audit.cleanup.plan import Plan
from storage_audit.cleanup.removers.base import Found, Quarantined, Remover, Unlisted
from storage_audit.cleanup.removers.local import LocalRemover
from storage_audit.cleanup.removers.s3 import Quarantine, S3Remover, bucket_of
from storage_audit.core.errors import UsageError
from storage_audit.storage.base import LocalStorage, RemoteOptions, Storage
from storage_audit.storage.s3 import ManifestCache, S3Storage, default_cache_dir


def plan_storage(plan: Plan, remote: RemoteOptions | None = None) -> Storage:
    """The tree `plan` was made for, as the plan names it: its directory, or its bucket at its endpoint and region
    (with the credentials of the environment, and `remote`'s cache and rate limit)."""
    if plan.location is None:
        return LocalStorage(plan.root)
    remote = remote or RemoteOptions()
    cache = ManifestCache(remote.cache_dir or default_cache_dir()) if remote.cache else None
    return S3Storage(bucket_of(plan, remote.max_requests_per_second), cache)


def remover_for(storage: Storage, quarantine: str | None = None) -> Remover:
    """The remover of `storage`'s backend, keeping what it removes in `quarantine` (a directory, or for a bucket also
    `s3://BUCKET/PREFIX`) when given; raises UsageError for a quarantine it cannot use."""
    if isinstance(storage, S3Storage):
        return S3Remover(storage, None if quarantine is None else Quarantine.parse(quarantine))
    if isinstance(storage, LocalStorage):
        if quarantine is not None and quarantine.startswith("s3://"):
            raise UsageError(f"--quarantine {quarantine}: a tree on disk quarantines into a local directory")
        return LocalRemover(storage, None if quarantine is None else Path(quarantine))
    raise UsageError(f"{storage.location}: nothing can be removed from this storage")


__all__ = [
    "Found",
    "LocalRemover",
    "Quarantine",
    "Quarantined",
    "Remover",
    "S3Remover",
    "Unlisted",
    "plan_storage",
    "remover_for",
]
