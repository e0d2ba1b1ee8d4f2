"""Plans and their apply on a tree in an S3 bucket: keys and their ETags as preconditions, DeleteObjects in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from storage_audit.cleanup.apply import DATA_OPS, UNCERTAIN, ApplyOptions, Outcome, _Applier, _Journal, journal_path
from storage_audit.cleanup.plan import OPS, Action, Op, Plan, PlanError
from storage_audit.core.errors import StorageError, UsageError
from storage_audit.core.manifest import LIST_KINDS
from storage_audit.core.paths import REPOSITORY_PARTS, Blobs, RepositoryPart, parent, path_for
from storage_audit.inventory.tables import Inventory
from storage_audit.storage.bucket import (
    DELETE_BATCH,
    V2,
    MultipartUpload,
    ObjectInfo,
    S3Bucket,
    S3Location,
    S3NotFound,
    S3Settings,
    clean_etag,
)
from storage_audit.storage.s3 import ManifestCache, S3Storage

LIST_CHUNK = 1000
_LAST = "\U0010ffff"
# How many path components above a file action's path its container lies: `<container>/sha256/<hex>/link`.
_FILE_DEPTH = {Op.REMOVE_TAG_HISTORY: 3, Op.REMOVE_REVISION: 3, Op.REMOVE_LAYER_LINK: 3}
_DIR_OPS = (Op.REMOVE_TAG, Op.REMOVE_BLOB, Op.REMOVE_UPLOAD)
_DIGEST_CONTAINERS = ("/_manifests/revisions", "/_layers", "/index")
MULTIPART_OPS = (Op.REMOVE_UPLOAD, Op.REMOVE_REPOSITORY)
"""Ops whose keys may include an upload's data, an incomplete multipart upload that listings do not show."""


# -- what each action owns ----------------------------------------------------------


def _up(path: str, levels: int) -> str:
    for _ in range(levels):
        path = parent(path)
    return path


def spans(action: Action) -> list[tuple[str, str, str]]:
    """(container, first, last): the key ranges (relative to `v2`) that hold every key `action` may remove.

    A directory's range ends with its `/`: a tag is never a prefix of another (`v1/` is not `v1.0/`).
    """
    op, path = Op(action.op), action.path
    if op in _FILE_DEPTH:
        return [(_up(path, _FILE_DEPTH[op]), path, path)]
    if op is Op.REMOVE_BLOB:
        return [(_up(path, 2), path + "/", path + "/" + _LAST)]
    if op in _DIR_OPS:
        return [(parent(path), path + "/", path + "/" + _LAST)]
    # A repository owns its three parts, never a repository nested in it.
    parts = [path_for(RepositoryPart(action.repository or "", part)) for part in REPOSITORY_PARTS]
    return [(part, part + "/", part + "/" + _LAST) for part in parts]


def owns(action: Action, rel: str) -> bool:
    """Whether the key `rel` is one that `action` removes."""
    return any(first <= rel <= last for _, first, last in spans(action))


def _objects(action: Action) -> dict[str, dict[str, Any]]:
    found = action.precondition.get("objects")
    return found if isinstance(found, dict) else {}


def _multipart(action: Action) -> dict[str, int]:
    found = action.precondition.get("multipart")
    if not isinstance(found, list):
        return {}
    return {u["upload_id"]: u["bytes"] for u in found}


# -- planning -------------------------------------------------------------------------


def add_preconditions(plan: Plan, storage: S3Storage) -> Plan:
    """`plan` with its location, and each action's keys as listed (ETag, size, last-modified) as preconditions.

    An upload's data is an incomplete multipart upload, invisible to listings:
    its upload ids and bytes are recorded as well.
    """
    files = storage.tree.files
    keys = storage.tree.keys
    multipart: dict[str, list[dict[str, Any]]] = {}
    if any(a.op in MULTIPART_OPS for a in plan.actions):
        for upload in storage.bucket.multipart_uploads():
            multipart.setdefault(upload.path, []).append({"upload_id": upload.upload_id, "bytes": upload.bytes})
    actions = []
    for action in plan.actions:
        objects: dict[str, Any] = {}
        for _, first, last in spans(action):
            for rel in _between(keys, first, last):
                info = files[rel]
                if info.etag is not None:  # not the stand-in for a multipart upload's data
                    when = info.last_modified.isoformat()
                    objects[rel] = {"etag": info.etag, "size": info.size, "last_modified": when}
        extra: dict[str, Any] = {"objects": objects}
        if action.op == Op.REMOVE_UPLOAD:
            extra["multipart"] = multipart.get(f"{action.path}/data", [])
        actions.append(replace(action, precondition={**action.precondition, **extra}))
    return replace(plan, actions=actions, location=dict(storage.origin))


class _Keys:
    """A fresh listing, in order: the keys an action owns are found by bisection, not by a scan of them all."""

    def __init__(self, found: dict[str, ObjectInfo]) -> None:
        self.found = found
        self.keys = sorted(found)

    def owned(self, action: Action) -> dict[str, ObjectInfo]:
        return {rel: self.found[rel] for _, first, last in spans(action) for rel in _between(self.keys, first, last)}


def _between(keys: list[str], first: str, last: str) -> list[str]:
    from bisect import bisect_left, bisect_right

    return keys[bisect_left(keys, first) : bisect_right(keys, last)]


# -- reading a plan -------------------------------------------------------------------


def check_plan(plan: Plan) -> None:
    """Refuse a plan whose preconditions name a key its action does not own, or are malformed; raises PlanError."""
    for i, action in enumerate(plan.actions):
        objects = action.precondition.get("objects")
        if not isinstance(objects, dict):
            raise PlanError(f"action #{i}: a plan for object storage lists the keys of each action")
        for rel, info in objects.items():
            if not isinstance(rel, str) or any(p in ("", ".", "..") for p in rel.split("/")) or not owns(action, rel):
                raise PlanError(f"action #{i} ({action.op} {action.path}) may not touch the key {rel!r}")
            if not isinstance(info, dict) or set(info) != {"etag", "size", "last_modified"}:
                raise PlanError(f"action #{i}: the precondition of {rel!r} needs exactly etag, size and last_modified")
            if not isinstance(info["etag"], str) or type(info["size"]) is not int or info["size"] < 0:
                raise PlanError(f"action #{i}: the precondition of {rel!r} has a bad etag or size")
            try:
                datetime.fromisoformat(info["last_modified"])
            except (TypeError, ValueError) as exc:
                raise PlanError(f"action #{i}: the precondition of {rel!r} has a bad last_modified") from exc
        multipart = action.precondition.get("multipart", [])
        if (
            (action.op != Op.REMOVE_UPLOAD and "multipart" in action.precondition)
            or not isinstance(multipart, list)
            or not all(
                isinstance(u, dict)
                and set(u) == {"upload_id", "bytes"}
                and isinstance(u["upload_id"], str)
                and type(u["bytes"]) is int
                for u in multipart
            )
        ):
            raise PlanError(f"action #{i}: malformed multipart uploads in its precondition")


def plan_location(plan: Plan) -> S3Location:
    """The bucket and rootdirectory the plan was made for."""
    assert plan.location is not None
    prefix = plan.location["prefix"]
    return S3Location(plan.location["bucket"], prefix.removesuffix(f"{V2}/").strip("/"))


def same_place(plan: Plan, storage: S3Storage) -> str | None:
    """Why `storage` is not where `plan` was made for (bucket, prefix, endpoint), or None when it is."""
    assert plan.location is not None
    here = storage.origin
    for name in ("bucket", "prefix"):
        if here.get(name) != plan.location.get(name):
            return f"the plan is for {plan.root}, not {storage.location}"
    there, ours = plan.location.get("endpoint"), here.get("endpoint")
    if (there or "").rstrip("/") != (ours or "").rstrip("/"):
        return f"the plan is for {plan.root} at endpoint {there or 'AWS'}, not at {ours or 'AWS'}"
    return None


def bucket_of(plan: Plan, max_requests_per_second: float | None) -> S3Bucket:
    """The plan's own bucket, reached at its endpoint and region with the credentials of the environment."""
    assert plan.location is not None
    settings = S3Settings(
        region=plan.location.get("region"),
        endpoint=plan.location.get("endpoint"),
        max_requests_per_second=max_requests_per_second,
    )
    return S3Bucket(plan_location(plan), settings)


# -- quarantine -----------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantine:
    """Where removed keys are kept: a local directory, or an `s3://BUCKET/PREFIX` (server-side copies), laid out
    as the `v2` tree."""

    directory: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Quarantine:
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
        """Refuse a quarantine inside the registry's prefix, or holding it (it would copy into what it removes)."""
        if self.bucket == location.bucket and (
            self.prefix.startswith(location.prefix) or location.prefix.startswith(self.prefix)
        ):
            raise UsageError(f"--quarantine {self}: it overlaps the registry's keys under {location}")

    def restore_command(self, location: S3Location, endpoint: str | None) -> str:
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
        source = bucket.location

        def copy(rel: str) -> None:
            try:
                bucket._call(
                    "copy",
                    "copy_object",
                    Bucket=self.bucket,
                    Key=self.prefix + rel,
                    CopySource={"Bucket": source.bucket, "Key": source.key(rel)},
                )
            except S3NotFound:
                return

        await bucket.gather_limited([partial(asyncio.to_thread, copy, rel) for rel in rels])


# -- applying -------------------------------------------------------------------------


@dataclass
class _Chosen:
    index: int
    action: Action
    keys: list[str]
    uploads: list[str]
    freed: int


class S3Applier(_Applier):
    """The apply of a plan on its bucket: the phases of the local apply, each carried out in DeleteObjects batches.

    Right before each batch, the key ranges of its actions are listed again: an
    action whose keys are not those planned (ETag, size, last-modified), or
    that holds a key added since, is skipped. A batch is retried with backoff
    (deleting a key that is already gone succeeds), and every request is
    paced by the bucket's rate limit.

    The DeleteObjects requests are obstore's bulk delete (`S3Bucket.delete`),
    not botocore's: the same signed store, connection pool, counters and
    limiter as every listing, and a key the server refuses fails the request,
    so the whole batch is sent again, which S3 allows. botocore serves only
    what obstore lacks: multipart uploads and copies to a quarantine bucket.
    """

    def __init__(
        self,
        plan: Plan,
        options: ApplyOptions,
        journal: _Journal,
        log: Callable[[str], None],
        bucket: S3Bucket,
        cache: ManifestCache | None,
        quarantine: Quarantine | None,
    ) -> None:
        super().__init__(plan, options, journal, log, storage=S3Storage(bucket, cache))
        self.batched = True
        self.last_inventory: Inventory | None = None
        self.bucket = bucket
        self.cache = cache
        self.quarantine = quarantine

    def _fresh_inventory(self) -> Inventory | None:
        self.storage = S3Storage(self.bucket, self.cache)  # a new listing: the last one is stale
        inv = super()._fresh_inventory()
        self.last_inventory = inv
        return inv

    def _by_rank(self, items: list[tuple[int, Action]]) -> list[list[tuple[int, Action]]]:
        """Revisions in the plan's order, split into referrers, indexes and images, never one batch of two kinds.

        A DeleteObjects request removes its keys in no set order: an index and
        its child in one request could leave the index without its child.
        """
        inv = self.last_inventory
        if inv is None:
            return [items]
        kinds = inv.manifests.set_index("digest")
        subject, kind = kinds["subject"].to_dict(), kinds["kind"].to_dict()

        def rank(action: Action) -> int:
            target = action.precondition.get("link")
            if subject.get(target) is not None and not pd.isna(subject.get(target)):
                return 0
            return 1 if kind.get(target) in LIST_KINDS else 2

        groups: list[list[tuple[int, Action]]] = []
        for item in items:
            if not groups or rank(groups[-1][-1][1]) != rank(item[1]):
                groups.append([])
            groups[-1].append(item)
        return groups

    def run(self) -> Outcome:
        by_op: dict[Op, list[tuple[int, Action]]] = {op: [] for op in OPS}
        for i, action in enumerate(self.plan.actions):
            if i not in self.journal.done:
                by_op[Op(action.op)].append((i, action))
        self._phase(by_op[Op.REMOVE_TAG])
        self._phase(by_op[Op.REMOVE_TAG_HISTORY])
        if by_op[Op.REMOVE_REVISION]:
            protected = self._reached_now({(a.repository, a.digest) for _, a in by_op[Op.REMOVE_REVISION]})

            def reached(action: Action) -> str | None:
                if protected is None:
                    return UNCERTAIN
                if (action.repository, action.digest) in protected:
                    return "a tag or a remaining manifest reaches it now"
                return None

            for group in self._by_rank(by_op[Op.REMOVE_REVISION]):
                self._phase(group, reached)
        if by_op[Op.REMOVE_LAYER_LINK] or by_op[Op.REMOVE_BLOB]:
            fresh = self._fresh_inventory()
            held = None if fresh is None else self._held_now(fresh)

            def link_held(action: Action) -> str | None:
                if held is None:
                    return UNCERTAIN
                if action.precondition.get("link") in held:
                    return "a manifest present now references its blob"
                return None

            self._phase(by_op[Op.REMOVE_LAYER_LINK], link_held)
            linked = None if fresh is None else self._layer_linked_now(fresh)

            def blob_held(action: Action) -> str | None:
                if held is None or linked is None:
                    return UNCERTAIN
                if action.digest in held:
                    return "a manifest present now references it"
                if action.digest in linked:
                    return "a layer link to it was added since planning (a push in progress?)"
                return None

            self._phase(by_op[Op.REMOVE_BLOB], blob_held)
        self._phase(by_op[Op.REMOVE_UPLOAD])
        self._phase(by_op[Op.REMOVE_REPOSITORY], repository=True)
        if not self.options.dry_run:
            self.journal.finish(complete=not self.outcome.failed)
        return self.outcome

    # -- one phase --------------------------------------------------------------

    def _phase(
        self,
        items: list[tuple[int, Action]],
        veto: Callable[[Action], str | None] = lambda _a: None,
        repository: bool = False,
    ) -> None:
        for batch in _batches(items):
            try:
                fresh = _Keys(self._list(batch))
                uploads = self._uploads_now() if any(a.op in MULTIPART_OPS for _, a in batch) else []
                chosen = []
                for i, action in batch:
                    pick = self._decide(i, action, fresh, uploads, veto, repository)
                    if pick is not None:
                        chosen.append(pick)
                self._remove_batch(chosen)
            except StorageError as exc:
                for i, action in batch:
                    if not self._settled(i):
                        self.outcome.failed.append((action, str(exc)))
                        self.log(f"failed {action.path}: {exc}")
            if not self.options.dry_run:
                self.journal.sync()

    def _settled(self, index: int) -> bool:
        settled = [a for a in self.outcome.done + self.outcome.gone] + [a for a, _ in self.outcome.skipped]
        return any(a is self.plan.actions[index] for a in settled)

    def _list(self, batch: list[tuple[int, Action]]) -> dict[str, ObjectInfo]:
        """The keys now in the ranges the batch's actions own, from fresh listings (one range per container)."""
        ranges: dict[str, tuple[str, str]] = {}
        for _, action in batch:
            for container, first, last in spans(action):
                low, high = ranges.get(container, (first, last))
                ranges[container] = (min(low, first), max(high, last))

        async def all_ranges() -> list[dict[str, ObjectInfo]]:
            jobs = [partial(self._list_range, c, lo, hi) for c, (lo, hi) in ranges.items()]
            return await self.bucket.gather_limited(jobs)

        fresh: dict[str, ObjectInfo] = {}
        for found in self.bucket.run(all_ranges()):
            fresh.update(found)
        return fresh

    async def _list_range(self, container: str, first: str, last: str) -> dict[str, ObjectInfo]:
        """Every key from `first` to `last` under `container`.

        Below a container of digests (blobs, revisions, layer links, a tag's
        index), every name has the same length and alphabet, so the order of
        keys is the same whether a server sorts them as strings (S3) or as
        paths, name by name (SeaweedFS): the listing starts just before
        `first` (start-after) and stops after `last`. Tag names and upload ids
        vary in length and may hold `.` or `-`, which sort before `/`: their
        containers are listed whole.
        """
        import obstore

        location = self.bucket.location
        ordered = container.startswith(f"{path_for(Blobs())}/") or container.endswith(_DIGEST_CONTAINERS)
        # After `first` less its last character: a server may skip a whole "directory" named by the offset.
        start = first.rstrip("/")[:-1]
        offset = location.prefix + start if ordered and start.startswith(container + "/") else None
        found: dict[str, ObjectInfo] = {}
        try:
            stream = obstore.list(self.bucket.store, location.prefix + container, offset=offset, chunk_size=LIST_CHUNK)
            while True:
                await self.bucket.limiter.wait()
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
                self.bucket.counters.add("list")
                done = False
                for meta in chunk:
                    rel = location.relative(meta["path"])
                    if rel > last and ordered:
                        done = True
                        break
                    if rel >= first:
                        found[rel] = ObjectInfo(meta["size"], meta["last_modified"], clean_etag(meta["e_tag"]))
                if done:
                    break
        except StorageError:
            raise
        except Exception as exc:
            raise self.bucket._error(f"listing {container!r} failed", exc) from exc
        return found

    def _decide(
        self,
        index: int,
        action: Action,
        fresh: _Keys,
        multipart: list[MultipartUpload],
        veto: Callable[[Action], str | None],
        repository: bool,
    ) -> _Chosen | None:
        present = fresh.owned(action)
        uploads = {u.upload_id: u.bytes for u in multipart if owns(action, u.path)}
        if not present and not uploads:
            self._settle(index, action, "gone")
            return None
        why = veto(action)
        if why is None and repository:
            busy = [rel for rel in present if not rel.startswith(f"{action.path}/_layers/")]
            if busy or uploads:
                why = "it holds tags, manifests or uploads now"
        if why is None:
            why = _changed(action, present)
        # An upload aborted already (by a run that was interrupted, or the registry's purge) is no change.
        planned = _multipart(action)
        if why is None and action.op == Op.REMOVE_UPLOAD and any(planned.get(u) != n for u, n in uploads.items()):
            why = "it received data since planning"
        if why is not None:
            self._settle(index, action, "skipped", why)
            return None
        freed = sum(info.size for info in present.values()) + sum(uploads.values())
        return _Chosen(index, action, sorted(present), sorted(uploads), freed if action.op in DATA_OPS else 0)

    def _uploads_now(self) -> list[MultipartUpload]:
        """The incomplete multipart uploads under the prefix now, with their bytes."""
        return self.bucket.run(self.bucket.multipart_uploads_async())

    def _remove_batch(self, chosen: list[_Chosen]) -> None:
        if not chosen:
            return
        if not self.options.dry_run:
            keys = [k for c in chosen for k in c.keys]
            if self.quarantine is not None:
                self.bucket.run(self.quarantine.keep(self.bucket, keys))
            for c in chosen:
                for upload_id in c.uploads:
                    self._abort(f"{c.action.path}/data", upload_id)
            if keys:
                self.bucket.delete(keys)
        for c in chosen:
            self._settle(c.index, c.action, "done", freed=c.freed)

    def _abort(self, rel: str, upload_id: str) -> None:
        location = self.bucket.location
        try:
            key = location.key(rel)
            self.bucket._call(
                "abort_upload", "abort_multipart_upload", Bucket=location.bucket, Key=key, UploadId=upload_id
            )
        except S3NotFound:
            return  # aborted already, by an earlier run or the registry's purge


def apply_s3_plan(
    plan: Plan,
    plan_hash: str,
    plan_path: Path,
    options: ApplyOptions,
    storage: S3Storage,
    quarantine: Quarantine | None = None,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Carry out `plan` on `storage`'s bucket, which must be the one it was made for; resumes from the journal.

    Raises PlanError for another bucket, prefix or endpoint, and UsageError for a
    quarantine that overlaps the registry's keys.
    """
    why = same_place(plan, storage)
    if why is not None:
        raise PlanError(why)
    if quarantine is not None:
        quarantine.check(storage.bucket.location)
    journal = _Journal(journal_path(plan_path, plan_hash), plan_hash, len(plan.actions), enabled=not options.dry_run)
    journal.open(plan_hash)
    applier = S3Applier(plan, options, journal, log or (lambda _line: None), storage.bucket, storage.cache, quarantine)
    return applier.run()


def _changed(action: Action, present: dict[str, ObjectInfo]) -> str | None:
    """Why the keys present now are not those planned, or None when each is one of them, unchanged."""
    planned = _objects(action)
    for rel, info in sorted(present.items()):
        want = planned.get(rel)
        if want is None:
            return f"{rel} was added since planning"
        when = datetime.fromisoformat(want["last_modified"])
        if want["etag"] != info.etag or want["size"] != info.size or when != info.last_modified:
            return f"{rel} changed since planning (ETag, size or last-modified)"
    return None


def _batches(items: Iterable[tuple[int, Action]]) -> list[list[tuple[int, Action]]]:
    """Consecutive actions whose keys fit one DeleteObjects request (an action with more keys goes alone)."""
    out: list[list[tuple[int, Action]]] = []
    current: list[tuple[int, Action]] = []
    count = 0
    for i, action in items:
        n = max(1, len(_objects(action)))
        if current and count + n > DELETE_BATCH:
            out.append(current)
            current, count = [], 0
        current.append((i, action))
        count += n
    if current:
        out.append(current)
    return out


__all__ = [
    "Quarantine",
    "S3Applier",
    "add_preconditions",
    "apply_s3_plan",
    "bucket_of",
    "check_plan",
    "owns",
    "same_place",
    "spans",
]
