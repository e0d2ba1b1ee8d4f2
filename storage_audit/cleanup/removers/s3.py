"""Removal from a tree in a bucket (S3, GCS, Azure): keys checked against their ETags in a fresh listing, then
deleted (in DeleteObjects batches on S3); a quarantine is a copy."""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from storage_audit.cleanup.action import Action, Op, PlanError, UploadPrecondition
from storage_audit.cleanup.plan import Plan
from storage_audit.cleanup.removers.base import Found, Item, Quarantined, Remover, Unlisted
from storage_audit.core.errors import StorageError, UsageError
from storage_audit.core.paths import Blobs, path_for
from storage_audit.storage.base import Storage
from storage_audit.storage.bucket import DELETE_BATCH, V2, ObjectInfo, S3Bucket, S3Location, S3Settings
from storage_audit.storage.clouds import AzureSettings, GCSSettings
from storage_audit.storage.s3 import S3Storage

MULTIPART_OPS = (Op.REMOVE_UPLOAD, Op.REMOVE_REPOSITORY)
"""Ops whose targets may hold an upload's data, an incomplete multipart upload that listings do not show."""
RECEIVED_DATA = "it received data since planning"
CHANGED_SINCE_LISTED = "changed between the fresh listing and its delete (conditional delete refused): left in place"
REQUESTS_PER_BATCH = 8
"""DeleteObjects requests a batch may take, sent at once: each batch is listed afresh and removed in turn, so a
larger batch spends fewer round trips waiting on one server."""
# Below these, every name is a digest: one length, one alphabet.
_DIGEST_CONTAINERS = ("/_manifests/revisions", "/_layers", "/index")


# -- where a plan goes ----------------------------------------------------------------------


_SCHEMES = {"s3": "s3", "gcs": "gs", "azure": "az"}


def plan_location(plan: Plan) -> S3Location:
    """The bucket and rootdirectory the plan was made for."""
    assert plan.location is not None
    prefix = plan.location["prefix"]
    scheme = _SCHEMES[plan.location.get("provider", "s3")]
    return S3Location(plan.location["bucket"], prefix.removesuffix(f"{V2}/").strip("/"), scheme)


def bucket_of(plan: Plan, max_requests_per_second: float | None) -> S3Bucket:
    """The plan's own bucket, reached at its endpoint (and region, account) with the credentials of the
    environment."""
    assert plan.location is not None
    location = plan.location
    settings: S3Settings | GCSSettings | AzureSettings
    provider = location.get("provider", "s3")
    if provider == "gcs":
        settings = GCSSettings(endpoint=location.get("endpoint"), max_requests_per_second=max_requests_per_second)
    elif provider == "azure":
        settings = AzureSettings(
            account_name=location.get("account"),
            endpoint=location.get("endpoint"),
            max_requests_per_second=max_requests_per_second,
        )
    else:
        settings = S3Settings(
            region=location.get("region"),
            endpoint=location.get("endpoint"),
            max_requests_per_second=max_requests_per_second,
        )
    return S3Bucket(plan_location(plan), settings)


def same_place(plan: Plan, origin: dict[str, str], location: str) -> str | None:
    """Why the tree at `origin` (`location` for messages) is not where `plan` was made for, or None when it is."""
    if plan.location is None:
        return f"the plan is for {plan.root}, not {location}"
    for name in ("provider", "bucket", "prefix", "account"):
        if origin.get(name) != plan.location.get(name):
            return f"the plan is for {plan.root}, not {location}"
    there, ours = plan.location.get("endpoint"), origin.get("endpoint")
    if (there or "").rstrip("/") != (ours or "").rstrip("/"):
        service = {"gcs": "Google", "azure": "Azure"}.get(plan.location.get("provider", ""), "AWS")
        return f"the plan is for {plan.root} at endpoint {there or service}, not at {ours or service}"
    return None


# -- quarantine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantine:
    """Where removed keys are kept: a local directory, or an `s3://BUCKET/PREFIX` (server-side copies), laid out
    as the `v2` tree."""

    directory: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Quarantine:
        if "://" in text and not text.startswith("s3://"):
            raise UsageError(f"--quarantine {text!r}: a local directory, or s3://BUCKET/PREFIX for a tree in S3")
        if not text.startswith("s3://"):
            return cls(directory=Path(text))
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        parts = [p for p in prefix.split("/") if p]
        if not bucket or any(p in (".", "..") for p in parts):
            raise UsageError(f"--quarantine {text!r}: expected s3://BUCKET/PREFIX")
        return cls(bucket=bucket, prefix="/".join(parts) + "/" if parts else "")

    def __str__(self) -> str:
        return str(self.directory) if self.directory is not None else f"s3://{self.bucket}/{self.prefix}"

    def check(self, location: S3Location) -> None:
        """Refuse a quarantine that is no directory, or inside the registry's prefix, or holding it (it would copy
        into what it removes), or a bucket outside S3 (GCS and Azure quarantine into a local directory)."""
        if self.bucket is not None and location.provider != "s3":
            raise UsageError(f"--quarantine {self}: a tree in {location.provider} quarantines into a local directory")
        if self.directory is not None:
            try:
                if self.directory.exists() and not self.directory.is_dir():
                    raise UsageError(f"{self.directory}: not a directory")
            except OSError as exc:
                raise UsageError(f"{self.directory}: {exc.strerror or exc}") from exc
        if self.bucket == location.bucket and (
            self.prefix.startswith(location.prefix) or location.prefix.startswith(self.prefix)
        ):
            raise UsageError(f"--quarantine {self}: it overlaps the registry's keys under {location}")

    def restore_command(self, location: S3Location, endpoint: str | None) -> str:
        if location.provider == "gcs":
            return f"gcloud storage cp --recursive {self.directory}/* gs://{location.bucket}/{location.prefix}"
        if location.provider == "azure":
            return (
                f"az storage blob upload-batch --source {self.directory} --destination {location.bucket} "
                f"--destination-path {location.prefix}"
            )
        flag = f" --endpoint-url {endpoint}" if endpoint else ""
        source = f"{self.directory}/" if self.directory is not None else f"s3://{self.bucket}/{self.prefix}"
        return f"aws s3 cp --recursive{flag} {source} s3://{location.bucket}/{location.prefix}"

    async def keep(self, bucket: S3Bucket, rels: Sequence[str]) -> None:
        """Copy the keys `rels` into the quarantine; a key gone meanwhile has nothing to keep."""
        if self.directory is not None:
            for rel, data in (await bucket.get_many_async(rels)).items():
                target = self.directory.joinpath(*rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            return
        assert self.bucket is not None
        jobs = [partial(asyncio.to_thread, bucket.copy_out, rel, self.bucket, self.prefix + rel) for rel in rels]
        await bucket.gather_limited(jobs)


# -- the remover ------------------------------------------------------------------------------


class S3Remover(Remover):
    """A plan's actions on its bucket, in DeleteObjects batches (S3), blob batches of conditional deletes (Azure,
    each key with `If-Match` on the ETag the plan saw) or one DELETE per key (GCS).

    On S3 and GCS deletes are not conditional (obstore's delete takes no
    `ifGenerationMatch`, and its GCS listing gives no generation): the keys
    are checked in a listing made since planning. On Azure a key written
    between that listing and its delete stays, and its action fails (a later
    apply finds it changed and skips it).

    The key ranges of each batch's actions are listed again right before it,
    or, where the applier hands over the fresh scan its vetoes were judged on
    (layer links and blobs), read in that scan's listing, made after
    the registry was left read-only: an action whose keys are not those
    planned (ETag, size, last-modified), or that holds a key added since, is
    not what the plan saw. A DeleteObjects
    request is retried with backoff (deleting a key already gone succeeds),
    and every request is paced by the bucket's rate limit. The deletes are
    obstore's bulk delete (`S3Bucket.delete`): the same signed store,
    connection pool, counters and limiter as every listing.
    """

    where = "in the bucket"

    def __init__(self, storage: S3Storage, quarantine: Quarantine | None = None) -> None:
        """Raises UsageError for a quarantine that overlaps the registry's keys."""
        super().__init__()
        self.storage = storage
        self.bucket = storage.bucket
        self.kept = quarantine
        if quarantine is not None:
            quarantine.check(self.bucket.location)
            restore = quarantine.restore_command(self.bucket.location, self.bucket.endpoint)
            self.quarantine = Quarantined(str(quarantine), copied=True, restore=restore)

    def _refuse(self, plan: Plan) -> None:
        why = same_place(plan, self.storage.origin, self.storage.location)
        if why is not None:
            raise PlanError(why)
        for i, action in enumerate(plan.actions):
            if action.precondition.objects is None:
                raise PlanError(f"action #{i}: a plan for object storage lists the keys of each action")

    def fresh(self) -> S3Storage:
        return S3Storage(self.bucket, self.storage.cache)  # a new listing: the last one is stale

    def batches(self, items: Sequence[Item]) -> list[list[Item]]:
        """Consecutive actions whose keys fit REQUESTS_PER_BATCH DeleteObjects requests (an action with more keys
        goes alone)."""
        out: list[list[Item]] = []
        current: list[Item] = []
        count = 0
        for i, action in items:
            n = max(1, len(action.precondition.objects or ()))
            if current and count + n > DELETE_BATCH * REQUESTS_PER_BATCH:
                out.append(current)
                current, count = [], 0
            current.append((i, action))
            count += n
        if current:
            out.append(current)
        return out

    # -- what the targets are now ---------------------------------------------------------

    def look(
        self, plan: Plan, actions: Sequence[Action], scanned: Storage | None = None
    ) -> list[Found | StorageError | None]:
        if isinstance(scanned, S3Storage) and scanned.bucket is self.bucket:
            # The listing the vetoes were judged on: listing the same keys again tells nothing the scan did not.
            keys, listed = scanned.listed(), scanned.objects()
        else:
            listed = self._list(actions)
            keys = sorted(listed)
        multipart = self.bucket.multipart_uploads() if any(a.op in MULTIPART_OPS for a in actions) else []
        out: list[Found | StorageError | None] = []
        for action in actions:
            present = {
                rel: listed[rel]
                for _, first, last in action.spans()
                for rel in keys[bisect_left(keys, first) : bisect_right(keys, last)]
            }
            unlisted = tuple(Unlisted(u.path, u.upload_id, u.bytes) for u in multipart if action.owns(u.path))
            if not present and not unlisted:
                out.append(None)
                continue
            changed = _changed(action, present)
            pre = action.precondition
            if changed is None and isinstance(pre, UploadPrecondition):
                # An upload aborted already (by a run that was interrupted, or the registry's purge) is no change.
                planned = {u.upload_id: u.bytes for u in pre.multipart or ()}
                if any(planned.get(u.upload_id) != u.bytes for u in unlisted):
                    changed = RECEIVED_DATA
            out.append(Found({rel: info.size for rel, info in present.items()}, changed, unlisted))
        return out

    def _list(self, actions: Sequence[Action]) -> dict[str, ObjectInfo]:
        """The keys now in the ranges the actions own, from fresh listings (one range per container)."""
        ranges: dict[str, tuple[str, str]] = {}
        for action in actions:
            for container, first, last in action.spans():
                low, high = ranges.get(container, (first, last))
                ranges[container] = (min(low, first), max(high, last))
        blobs = f"{path_for(Blobs())}/"
        jobs = [
            partial(
                self.bucket.list_range_async,
                container,
                low,
                high,
                uniform=container.startswith(blobs) or container.endswith(_DIGEST_CONTAINERS),
            )
            for container, (low, high) in ranges.items()
        ]
        fresh: dict[str, ObjectInfo] = {}
        for found in self.bucket.run(self.bucket.gather_limited(jobs)):
            fresh.update(found)
        return fresh

    # -- removing ---------------------------------------------------------------------------

    def remove(self, approved: Sequence[tuple[Action, Found]]) -> list[StorageError | None]:
        keys = [rel for _, found in approved for rel in sorted(found.paths)]
        if self.kept is not None:
            self.bucket.run(self.kept.keep(self.bucket, keys))
        for _, found in approved:
            for upload in found.unlisted:
                self.bucket.abort_upload(upload.path, upload.upload_id)
        if not keys:
            return [None] * len(approved)
        if self.bucket.provider.s3_api:
            self.bucket.delete(keys)  # DeleteObjects: no condition per key; the listing since planning is the check
            return [None] * len(approved)
        # Each key with the ETag the plan saw (and the fresh listing found again): changed since, it stays.
        etags = {
            rel: (action.precondition.objects or {})[rel].etag for action, found in approved for rel in found.paths
        }
        left = self.bucket.delete_unchanged(etags)
        errors: list[StorageError | None] = []
        for _, found in approved:
            changed = sorted(left.intersection(found.paths))
            errors.append(StorageError(f"{changed[0]} {CHANGED_SINCE_LISTED}") if changed else None)
        return errors


def _changed(action: Action, present: dict[str, ObjectInfo]) -> str | None:
    """Why the keys present now are not those planned, or None when each is one of them, unchanged."""
    planned = action.precondition.objects or {}
    for rel, info in sorted(present.items()):
        want = planned.get(rel)
        if want is None:
            return f"{rel} was added since planning"
        if want.etag != info.etag or want.size != info.size or want.last_modified != info.last_modified:
            return f"{rel} changed since planning (ETag, size or last-modified)"
    return None


__all__ = ["Quarantine", "S3Remover", "bucket_of", "plan_location", "same_place"]
