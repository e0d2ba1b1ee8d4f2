"""Read when images were built: the `created` time of their config blobs, through the storage layer's safe reader."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from storage_audit.core.manifest import LIST_KINDS, MAX_MANIFEST_BYTES
from storage_audit.core.paths import BlobData, Digest, path_for
from storage_audit.inventory.tables import Inventory
from storage_audit.storage.base import AccessError, NotRegular, Storage, SymlinkRefused

MAX_CONFIG_BYTES = MAX_MANIFEST_BYTES
"""A config bigger than this is not read (its time stays unknown): the registry itself caps manifests there, and
the same cap lets object storage read and cache configs as it does manifests."""


def created_times(storage: Storage, inv: Inventory, manifests: Iterable[str]) -> dict[str, pd.Timestamp]:
    """The `created` time of each of `manifests` that has one: an image's from its config blob, an index's the
    newest of its children's. A manifest left out has none that could be read (no config, unreadable, too big,
    no or a bad `created`)."""
    wanted = list(dict.fromkeys(manifests))
    kinds = dict(zip(inv.manifests["digest"], inv.manifests["kind"], strict=True))
    refs = inv.references
    children: dict[str, list[str]] = {}
    for manifest, child in zip(
        refs["manifest"][refs["ref_type"] == "child"], refs["digest"][refs["ref_type"] == "child"], strict=True
    ):
        children.setdefault(manifest, []).append(child)
    configs = refs[refs["ref_type"] == "config"]
    config_of = dict(zip(configs["manifest"], configs["digest"], strict=True))

    images: set[str] = set()
    seen: set[str] = set()
    todo = list(wanted)
    while todo:  # an index may list an index: walk down to the images, once each
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        if kinds.get(digest) in LIST_KINDS:
            todo += children.get(digest, [])
        elif digest in config_of:
            images.add(digest)
    built = _read_created(storage, {config_of[d] for d in images})

    times: dict[str, pd.Timestamp] = {}

    def of(digest: str, path: frozenset[str]) -> pd.Timestamp | None:
        if digest in times:
            return times[digest]
        if kinds.get(digest) in LIST_KINDS:
            if digest in path:
                return None  # a cycle of indexes: no time from it
            found = [t for c in children.get(digest, []) if (t := of(c, path | {digest})) is not None]
            when = max(found) if found else None
        else:
            when = built.get(config_of.get(digest, ""))
        if when is not None:
            times[digest] = when
        return when

    for digest in wanted:
        of(digest, frozenset())
    return {d: times[d] for d in wanted if d in times}


def _read_created(storage: Storage, configs: set[str]) -> dict[str, pd.Timestamp]:
    """Config digest -> its `created` time, for each config blob that is a regular file with a valid one."""
    items = sorted(configs)
    paths = [path_for(BlobData(Digest.parse(d))) for d in items]
    # Object storage fetches them at once (and its cache keeps them, by digest); a local tree ignores this.
    storage.prefetch(paths)
    out: dict[str, pd.Timestamp] = {}
    for digest, rel in zip(items, paths, strict=True):
        try:
            small = storage.read_small(rel, MAX_CONFIG_BYTES, stat=False)
        except (AccessError, NotRegular, SymlinkRefused):
            continue
        if small is None or len(small.data) > MAX_CONFIG_BYTES:
            continue
        when = _created(small.data)
        if when is not None:
            out[digest] = when
    return out


def _created(data: bytes) -> pd.Timestamp | None:
    """The config's `created` time (RFC 3339) in UTC, or None when it has none that parses."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    value = doc.get("created") if isinstance(doc, dict) else None
    if not isinstance(value, str):
        return None
    try:
        when = pd.Timestamp(value)
    except (ValueError, OverflowError):
        return None
    if pd.isna(when) or when.tzinfo is None:
        return None  # RFC 3339 always says its offset: without one, the time is not the image's
    return when.tz_convert("UTC")


__all__ = ["MAX_CONFIG_BYTES", "created_times"]
