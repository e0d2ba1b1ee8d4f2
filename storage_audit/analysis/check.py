"""Check a registry's storage for damage: every anomaly found, as findings of the fixed vocabulary, errors first."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import weakref
from dataclasses import dataclass
from datetime import UTC, timedelta
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Protocol

import humanize
import pandas as pd

from storage_audit.analysis.graph import HOLDING_REFS, Graph
from storage_audit.analysis.options import UPLOAD_AGE
from storage_audit.analysis.reach import reach_findings
from storage_audit.core.findings import SEVERITY, Finding, Kind, Severity
from storage_audit.core.manifest import IMAGE_CONFIGS
from storage_audit.core.paths import BlobData, Digest, InvalidPath, Repository, RevisionLink, UploadDir, path_for
from storage_audit.core.text import size
from storage_audit.core.view import View
from storage_audit.inventory.codes import CODE, CodedArray, Dictionary, codes_of
from storage_audit.inventory.frames import isin, pick
from storage_audit.inventory.tables import SCHEMA, Inventory, conform, frame
from storage_audit.storage.base import AccessError, LocalStorage, NotRegular, Storage, SymlinkRefused

if TYPE_CHECKING:
    from pandas._typing import MergeHow

BUFFER_BYTES = 1 << 20
"""Read size when hashing: one buffer per worker thread bounds the memory whatever the blob sizes."""
PROGRESS_BYTES = 16 * BUFFER_BYTES
"""Hashed bytes are reported in steps of this size, so that progress costs nothing next to hashing."""
MAX_TAGS_NAMED = 5

COLUMNS = list(SCHEMA["findings"])
KIND_ORDER = {kind.value: i for i, kind in enumerate(Kind)}
# Descriptor media types of layers and image configs: an index listing one of them lists no manifest.
_LAYER_TYPE = re.compile(r"\.image\.(?:rootfs|layer)\.")
_NONE = pd.DataFrame(columns=COLUMNS)
_LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52,}\b")


class HashProgress(Protocol):
    """Receives the progress of `--verify-digests`; the library never prints by itself."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class CheckOptions:
    """What to check: `verify_digests` hashes every blob with `workers` threads (0: one per CPU).

    An upload started more than `upload_age` before the inventory was taken is stale.
    """

    verify_digests: bool = False
    upload_age: timedelta = UPLOAD_AGE
    workers: int = 0
    progress: HashProgress | None = None
    storage: Storage | None = None
    """Where blob content is read by verify_digests (default: the directory `inv.root`)."""


# What the analyses found on a graph, per upload age: the summary, the page and the metrics of one command
# ask for the same findings, which are then worked out once.
_FOUND: weakref.WeakKeyDictionary[Graph, dict[timedelta, pd.DataFrame]] = weakref.WeakKeyDictionary()


def check(source: Graph | Inventory, options: CheckOptions | None = None) -> pd.DataFrame:
    """Every finding about an inventory's storage (or its graph's), in the findings columns, ordered by kind then path.

    The scan's findings, the reachability engine's, and those of the analyses
    below; with verify_digests, blob content is read (from `inv.root`) and hashed.
    This is the one place findings are worked out: every count of findings by
    severity (the report's summary, the HTML page, the metrics) is taken from it.
    """
    options = options or CheckOptions()
    graph = Graph.of(source)
    found = _FOUND.setdefault(graph, {})
    if options.upload_age not in found:
        found[options.upload_age] = _ordered(_analyses(graph, options.upload_age))
    if not options.verify_digests:
        # A frame of its own: what a caller adds to it stays out of the next caller's answer.
        return found[options.upload_age].copy(deep=False)
    inv = graph.inv
    hashed = _frame(verify_digests(options.storage or inv.root, inv.blobs, options.workers, options.progress))
    return _ordered([found[options.upload_age], hashed])


def _analyses(graph: Graph, upload_age: timedelta) -> list[pd.DataFrame]:
    inv = graph.inv
    tag_needs = tag_blobs(graph)
    return [
        inv.findings,
        _frame(reach_findings(graph, graph.reach())),
        missing_blobs(graph, tag_needs),
        index_findings(graph, tag_needs),
        size_mismatches(inv),
        stale_uploads(inv, upload_age),
        empty_repositories(inv),
    ]


def _ordered(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The findings of `parts` in the findings columns, each once, ordered by kind, then path and repository."""
    found_parts = [p for p in parts if not p.empty]
    # One cast at the end: casting each small part costs more than finding it.
    found = conform("findings", pd.concat(found_parts, ignore_index=True)) if found_parts else frame("findings")
    found = found.drop_duplicates(ignore_index=True)
    rank = found["kind"].map(KIND_ORDER).astype("int64")
    order = found.assign(_rank=rank).sort_values(["_rank", "path", "repository"], kind="stable").index
    return found.loc[order].reset_index(drop=True)


def severity_counts(findings: pd.DataFrame) -> dict[str, int]:
    """Findings per severity, every severity present, worst first: {"error": n, "warning": n, "info": n}."""
    counts = findings["severity"].value_counts()
    return {sev.value: int(counts.get(sev.value, 0)) for sev in Severity}


def worst_severity(counts: dict[str, int]) -> str:
    """The worst severity with a finding in `counts` (error, then warning, then info), or "none"."""
    return next((sev.value for sev in Severity if counts.get(sev.value)), "none")


def _join(left: pd.DataFrame, right: pd.DataFrame, on: list[str], how: MergeHow = "inner", **kw: Any) -> pd.DataFrame:
    """`left.merge(right, on=on, how=how)`, key columns coded against one dictionary joined on their codes.

    pandas joins an extension column through an index of its values, which makes every digest's string:
    seconds and hundreds of megabytes on a million blobs. A null joins a null, as in pandas' own merge.
    """
    coded: dict[str, Dictionary] = {}
    for col in on:
        a, b = codes_of(left[col]), codes_of(right[col])
        if a is not None and b is not None and a[1].same(b[1]):
            left = left.assign(**{col: a[0]})
            right = right.assign(**{col: b[0]})
            coded[col] = a[1]
    out = left.merge(right, on=on, how=how, **kw)
    for col, dictionary in coded.items():
        out[col] = pd.Series(CodedArray(out[col].to_numpy().astype(CODE), dictionary), index=out.index)
    return out


def _frame(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([f.row() for f in findings], columns=COLUMNS)


def _rows(kind: Kind, rows: pd.DataFrame) -> pd.DataFrame:
    """Findings of one kind from a frame of repository, path, digest and detail columns."""
    out = rows[["repository", "path", "digest", "detail"]].assign(kind=kind.value, severity=SEVERITY[kind].value)
    return out[COLUMNS]


def _blob_path(digest: str) -> str:
    return path_for(BlobData(Digest.parse(digest)))


def _blob_rows(
    kind: Kind, repository: pd.Series, blobs: pd.Series, digest: pd.Series, details: list[str]
) -> pd.DataFrame:
    """Findings of one kind located at blobs' data files."""
    paths = [_blob_path(d) for d in blobs]
    frame = pd.DataFrame({"repository": repository, "path": paths, "digest": digest, "detail": details})
    return _rows(kind, frame)


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


def _named(repository: str, tags: list[str]) -> str:
    shown = ", ".join(f"{repository}:{tag}" for tag in tags[:MAX_TAGS_NAMED])
    more = len(tags) - MAX_TAGS_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


# -- what a pull of each tag reads ------------------------------------------


def tag_manifests(graph: Graph) -> pd.DataFrame:
    """(repository, tag, manifest): every manifest a pull of the tag may read, its target and index children."""
    tags = graph.inv.tags.dropna(subset=["digest"])[["repository", "tag", "digest"]].drop_duplicates(ignore_index=True)
    found = graph.content_closure(tags["digest"])
    root = found["root"].to_numpy()
    # Columns keep their dtypes (digests and names as codes): joins on them then never make a string.
    return pd.DataFrame(
        {"repository": pick(tags["repository"], root), "tag": pick(tags["tag"], root), "manifest": found["digest"]}
    )


def tag_blobs(graph: Graph) -> pd.DataFrame:
    """(repository, tag, manifest, blob): each blob a pull of the tag reads, and the manifest that needs it."""
    manifests = tag_manifests(graph)
    refs = graph.inv.references
    refs = refs[isin(refs["ref_type"], HOLDING_REFS)][["manifest", "digest"]].rename(columns={"digest": "blob"})
    own = manifests.assign(blob=manifests["manifest"])
    return pd.concat([own, _join(manifests, refs, ["manifest"])], ignore_index=True).drop_duplicates(ignore_index=True)


def _failing_tags(tag_needs: pd.DataFrame, wanted: pd.DataFrame, on: str) -> list[list[str]]:
    """For each row of `wanted` (repository and `on` columns), the sorted tags whose pulls read that `on`."""
    pairs = tag_needs[["repository", on, "tag"]].drop_duplicates()
    keys = wanted[["repository", on]].reset_index(drop=True).reset_index()
    hits = _join(keys, pairs, ["repository", on]).sort_values("tag")
    tags: list[list[str]] = [[] for _ in range(len(wanted))]
    for position, tag in zip(hits["index"], hits["tag"], strict=True):
        tags[position].append(tag)
    return tags


# -- analyses -----------------------------------------------------------------


_ROLES = {"config": "config", "layer": "layer", "fslayer": "layer", "child": "child manifest"}


def _roles(roles: pd.Series) -> str:
    return " and ".join(sorted(set(roles)))


def missing_blobs(graph: Graph, tag_needs: pd.DataFrame) -> pd.DataFrame:
    """missing-blob: a tag's target, a linked revision's manifest, or a blob a present manifest references has no data.

    One finding per repository and blob, naming the tags whose pulls now fail.
    """
    inv, present = graph.inv, graph.present
    stored = inv.blobs["digest"]
    tags = inv.tags.dropna(subset=["digest"])
    revs = inv.revisions[inv.revisions["linked"]].dropna(subset=["target"])
    refs = inv.references[isin(inv.references["ref_type"], HOLDING_REFS)]
    referenced = _join(
        present[["repository", "target"]],
        refs[["manifest", "ref_type", "digest"]].rename(columns={"manifest": "target", "digest": "blob"}),
        ["target"],
    )
    needed = pd.concat(
        [
            pd.DataFrame({"repository": tags["repository"], "blob": tags["digest"], "role": "manifest"}),
            pd.DataFrame({"repository": revs["repository"], "blob": revs["target"], "role": "manifest"}),
            pd.DataFrame(
                {"repository": referenced["repository"], "blob": referenced["blob"], "role": referenced["ref_type"]}
            ),
        ],
        ignore_index=True,
    )
    gone = needed[~isin(needed["blob"], stored)]
    if gone.empty:
        return _NONE
    # References are named by role for the few found missing, not for all of them.
    gone = gone.assign(role=gone["role"].astype(object).map(lambda kind: _ROLES.get(kind, kind)))
    grouped = gone.groupby(["repository", "blob"], as_index=False).agg(role=("role", _roles))
    failing = _failing_tags(tag_needs, grouped, "blob")
    details = [
        f"{role} blob has no data; "
        + (f"pulls of {_named(repo, tags)} fail" if tags else "no tag needs it; pulls by digest fail")
        for repo, role, tags in zip(grouped["repository"], grouped["role"], failing, strict=True)
    ]
    return _blob_rows(Kind.MISSING_BLOB, grouped["repository"], grouped["blob"], grouped["blob"], details)


def index_findings(graph: Graph, tag_needs: pd.DataFrame) -> pd.DataFrame:
    """index-child-missing and index-lists-layer, over the children of every present index or manifest list."""
    inv, present = graph.inv, graph.present
    refs = inv.references
    children = refs[refs["ref_type"] == "child"][["manifest", "digest", "media_type", "platform", "position"]]
    kids = _join(
        present[["repository", "digest", "target"]],
        children.rename(columns={"manifest": "target", "digest": "child"}),
        ["target"],
    )
    if kids.empty:
        return _NONE
    linked = inv.revisions[inv.revisions["linked"]][["repository", "digest"]].rename(columns={"digest": "child"})
    marked = _join(kids, linked.drop_duplicates(), ["repository", "child"], how="left", indicator=True)
    absent = marked[marked["_merge"] == "left_only"].reset_index(drop=True)

    layer_refs = refs[isin(refs["ref_type"], ("config", "layer", "fslayer"))]["digest"]
    not_manifests = layer_refs[~isin(layer_refs, inv.manifests["digest"])]
    media = kids["media_type"].fillna("")
    layerish = kids[isin(media, IMAGE_CONFIGS) | media.str.contains(_LAYER_TYPE) | isin(kids["child"], not_manifests)]
    parts = [_children_missing(absent, tag_needs), _lists_layers(layerish.reset_index(drop=True))]
    found = [p for p in parts if not p.empty]
    return pd.concat(found, ignore_index=True) if found else _NONE


def _platform(platform: object) -> str:
    return f" ({platform})" if isinstance(platform, str) else ""


def _children_missing(absent: pd.DataFrame, tag_needs: pd.DataFrame) -> pd.DataFrame:
    if absent.empty:
        return _NONE
    failing = _failing_tags(tag_needs, absent.rename(columns={"target": "manifest"}), "manifest")
    details = [
        f"index {_short(index)} lists this manifest{_platform(plat)}, which has no revision link here; "
        + (f"pulls of {_named(repo, tags)} fail for it" if tags else "pulls of it through the index fail")
        for repo, index, plat, tags in zip(
            absent["repository"], absent["digest"], absent["platform"], failing, strict=True
        )
    ]
    rows = pd.DataFrame(
        {
            "repository": absent["repository"],
            "path": [
                path_for(RevisionLink(r, Digest.parse(c)))
                for r, c in zip(absent["repository"], absent["child"], strict=True)
            ],
            "digest": absent["child"],
            "detail": details,
        }
    )
    return _rows(Kind.INDEX_CHILD_MISSING, rows)


def _lists_layers(layerish: pd.DataFrame) -> pd.DataFrame:
    if layerish.empty:
        return _NONE
    details = [
        f"entry #{pos} names {child}{_platform(plat)}, "
        + (f"of layer or config type {mt}" if isinstance(mt, str) and mt else "a blob that is no manifest")
        + "; clients and garbage collectors expect manifests only"
        for child, plat, pos, mt in zip(
            layerish["child"], layerish["platform"], layerish["position"], layerish["media_type"], strict=True
        )
    ]
    return _blob_rows(Kind.INDEX_LISTS_LAYER, layerish["repository"], layerish["target"], layerish["digest"], details)


def size_mismatches(inv: Inventory) -> pd.DataFrame:
    """size-mismatch: a descriptor's size differs from the size of the blob it names; one finding per blob."""
    refs = inv.references.dropna(subset=["size"])[["manifest", "digest", "size"]]
    sized = _join(refs, inv.blobs[["digest", "size"]], ["digest"], suffixes=("_declared", "_disk"))
    bad = sized[sized["size_declared"] != sized["size_disk"]]
    if bad.empty:
        return _NONE
    bad = bad.sort_values(["digest", "manifest"])
    first = bad.groupby("digest", as_index=False).agg(
        manifest=("manifest", "first"),
        declared=("size_declared", "first"),
        disk=("size_disk", "first"),
        declarers=("manifest", "nunique"),
    )
    owners = inv.revisions.dropna(subset=["target"]).drop_duplicates("target").set_index("target")["repository"]
    details = [
        f"{disk:,} bytes on disk, but manifest {_short(m)} declares {declared:,}"
        + (f" ({n - 1} other manifests too)" if n > 1 else "")
        for m, declared, disk, n in zip(
            first["manifest"], first["declared"], first["disk"], first["declarers"], strict=True
        )
    ]
    rows = pd.DataFrame(
        {
            "repository": first["manifest"].map(owners),
            "path": [_blob_path(d) for d in first["digest"]],
            "digest": first["digest"],
            "detail": details,
        }
    )
    return _rows(Kind.SIZE_MISMATCH, rows)


def _upload_path(repository: str, upload_id: str) -> str:
    try:
        return path_for(UploadDir(repository, upload_id))
    except InvalidPath:
        # The registry names uploads by UUID; another name still needs a place in the report.
        return f"{path_for(Repository(repository))}/_uploads/{upload_id}"


def stale_upload_rows(inv: Inventory, upload_age: timedelta) -> pd.DataFrame:
    """The uploads (rows of `inv.uploads`) started more than `upload_age` before the scan, or with no start time."""
    scanned = pd.Timestamp(inv.scanned_at)
    if scanned.tzinfo is None:
        scanned = scanned.tz_localize(UTC)
    up = inv.uploads
    return up[up["started_at"].isna() | (up["started_at"] < scanned - upload_age)]


def stale_uploads(inv: Inventory, upload_age: timedelta) -> pd.DataFrame:
    """stale-upload: an upload started more than `upload_age` before the scan, or with no readable start time."""
    scanned = pd.Timestamp(inv.scanned_at)
    if scanned.tzinfo is None:
        scanned = scanned.tz_localize(UTC)
    stale = stale_upload_rows(inv, upload_age)
    if stale.empty:
        return _NONE
    details = [
        (
            f"upload without a readable startedat, never purged by the registry; {size(n)}"
            if pd.isna(started)
            else f"upload started {humanize.naturaldelta(scanned - started)} before the scan "
            f"({started:%Y-%m-%d %H:%M} UTC); {size(n)}"
        )
        for started, n in zip(stale["started_at"], stale["bytes"], strict=True)
    ]
    rows = pd.DataFrame(
        {
            "repository": stale["repository"],
            "path": [_upload_path(r, i) for r, i in zip(stale["repository"], stale["id"], strict=True)],
            "digest": None,
            "detail": details,
        }
    )
    return _rows(Kind.STALE_UPLOAD, rows)


def empty_repositories(inv: Inventory) -> pd.DataFrame:
    """empty-repository: a repository with no linked revision and no tag, still listed by the catalog."""
    active = pd.concat([inv.revisions[inv.revisions["linked"]]["repository"], inv.tags["repository"]])
    empty = inv.repositories[~isin(inv.repositories["repository"], active)]
    rows = pd.DataFrame(
        {
            "repository": empty["repository"],
            "path": [path_for(Repository(r)) for r in empty["repository"]],
            "digest": None,
            "detail": "repository with no linked revision and no tag; the catalog still lists it",
        }
    )
    return _rows(Kind.EMPTY_REPOSITORY, rows)


# -- blob content -------------------------------------------------------------


def verify_digests(
    v2: str | Storage, blobs: pd.DataFrame, workers: int = 0, progress: HashProgress | None = None
) -> list[Finding]:
    """digest-mismatch for every blob whose content does not hash to its name, read by `workers` threads.

    Threads suffice: hashlib and reads release the GIL on large buffers, so
    hashing runs on every core. Largest blobs go first, to finish together.
    """
    storage = v2 if isinstance(v2, Storage) else LocalStorage(v2)
    ordered = blobs.sort_values("size", ascending=False, kind="stable")
    queue: SimpleQueue[str] = SimpleQueue()
    for digest in ordered["digest"]:
        queue.put(digest)
    if progress is not None:
        progress.start(int(ordered["size"].sum()))
    found: list[Finding] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def work() -> None:
        buffer = bytearray(BUFFER_BYTES)
        while not stop.is_set():
            try:
                digest = queue.get_nowait()
            except Empty:
                return
            try:
                finding = _verify_blob(storage, digest, buffer, progress, stop)
            except BaseException as exc:  # handed to the calling thread, which raises it
                failures.append(exc)
                stop.set()
                return
            if finding is not None:
                found.append(finding)

    count = max(1, min(workers or os.cpu_count() or 1, len(ordered)))
    threads = [threading.Thread(target=work, name=f"verify-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        stop.set()
    if failures:
        raise failures[0]
    return found


def _verify_blob(
    storage: Storage, digest: str, buffer: bytearray, progress: HashProgress | None, stop: threading.Event
) -> Finding | None:
    parsed = Digest.parse(digest)
    rel = path_for(BlobData(parsed))
    hasher = hashlib.new(parsed.algorithm)
    pending = 0
    try:
        reader = storage.open_blob(rel)
        if reader is None:
            return Finding(Kind.UNREADABLE, rel, "cannot read: No such file or directory", digest=digest)
        with reader, memoryview(buffer) as view:
            while n := reader.readinto(buffer):
                hasher.update(view[:n])
                pending += n
                if pending >= PROGRESS_BYTES:
                    if progress is not None:
                        progress.advance(pending)
                    pending = 0
                    if stop.is_set():
                        return None
    except AccessError as exc:
        return _read_error(rel, digest, exc)
    finally:
        if progress is not None and pending:
            progress.advance(pending)
    actual = hasher.hexdigest()
    if actual == parsed.hex:
        return None
    return Finding(Kind.DIGEST_MISMATCH, rel, f"content hashes to {parsed.algorithm}:{actual}", digest=digest)


def _read_error(rel: str, digest: str, exc: AccessError) -> Finding:
    if isinstance(exc, SymlinkRefused):  # a symbolic link, put there since the scan
        return Finding(Kind.STRAY_FILE, rel, exc.reason, digest=digest)
    if isinstance(exc, NotRegular):
        return Finding(Kind.STRAY_FILE, rel, "blob data is not a regular file", digest=digest)
    return Finding(Kind.UNREADABLE, rel, exc.reason, digest=digest)


# -- how to show it -----------------------------------------------------------


def by_kind(findings: pd.DataFrame) -> pd.DataFrame:
    """One row per kind found: kind, severity, count, in vocabulary order."""
    counts = findings.groupby(["kind", "severity"], as_index=False, sort=False).size()
    counts = counts.rename(columns={"size": "count"}).astype({"count": "int64"})
    rank = counts["kind"].map(KIND_ORDER)
    return counts.assign(_rank=rank).sort_values("_rank").drop(columns="_rank").reset_index(drop=True)


def _shorten(text: pd.Series) -> pd.Series:
    return text.str.replace(_LONG_HEX, r"\1…", regex=True)


def views(findings: pd.DataFrame, table: bool = False) -> list[View]:
    """The findings as rows; for people, a count per kind, then one table per kind that fits 80 columns.

    In those tables each finding is its path over its detail, with long hex
    runs shortened: the whole path is in the csv and json formats.
    """
    if not table:
        return [View(findings, title="findings")]
    out = [View(by_kind(findings), title="findings by kind", total_columns=("count",))]
    cells = _shorten(findings["path"]) + "\n  " + _shorten(findings["detail"])
    for row in by_kind(findings).itertuples(index=False):
        rows = cells[findings["kind"] == row.kind]
        out.append(View(pd.DataFrame({"finding": rows}), title=f"{row.kind} ({row.severity}, {row.count})"))
    return out
