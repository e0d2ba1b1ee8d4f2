"""Deletion plans: retention rules applied to an inventory, as an ordered, reviewable list of actions."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from packaging.version import InvalidVersion, Version

from storage_audit.analysis.graph import Graph, ReachOptions
from storage_audit.analysis.options import AgeFrom, Collector
from storage_audit.cleanup.action import (
    OP_SPEC,
    OPS,
    Action,
    BlobPrecondition,
    HistoryPrecondition,
    KeyState,
    LayerLinkPrecondition,
    Op,
    PendingUpload,
    PlanError,
    Precondition,
    RepositoryPrecondition,
    RevisionPrecondition,
    TagPrecondition,
    UploadPrecondition,
)
from storage_audit.core.errors import UncertainError, UsageError
from storage_audit.core.manifest import LIST_KINDS
from storage_audit.core.paths import (
    BlobDir,
    Digest,
    LayerLink,
    Repository,
    RevisionLink,
    TagDir,
    TagIndexLink,
    UploadDir,
    path_for,
)
from storage_audit.core.version import __version__
from storage_audit.inventory.frames import isin
from storage_audit.inventory.tables import Inventory

if TYPE_CHECKING:
    from storage_audit.storage.base import KeyListing, Storage

PLAN_FORMAT = "storage-audit-plan"
PLAN_VERSION = 1

# Findings that make the inventory too uncertain to delete anything from it.
BLOCKING_KINDS = ("bad-link", "unreadable", "corrupt-manifest")

LATEST = "latest"
"""The tag clients pull when they name none: kept unless a rule names it (see `names_latest`)."""
RESET_SHARE = 0.5
"""More than this share of a repository's tags pushed in one second, naming RESET_MANIFESTS manifests or more,
looks like a copy that reset the mtimes rather than one push."""
RESET_MANIFESTS = 3


class PlanRefused(UncertainError, RuntimeError):
    """The storage is in a state where planning deletions could lose data."""


@dataclass(frozen=True)
class Policy:
    """Retention rules. Tag rules apply when keep_last or older_than is set; everything is combinable."""

    delete_untagged: bool = False
    keep_last: int | None = None
    keep_tags: tuple[str, ...] = ()
    only_tags: tuple[str, ...] = ()
    older_than: timedelta | None = None
    repositories: tuple[str, ...] = ()
    uploads_older_than: timedelta | None = None
    prune_empty_repositories: bool = False
    min_age: timedelta = timedelta(hours=1)
    keep_referrers: bool = True
    keep_latest: bool = True
    """Keep the tag `latest` unless an --only-tag expression names it (see `names_latest`)."""
    age_from: AgeFrom = AgeFrom.PUSH
    collector: Collector | None = None
    """Plan exactly what that version of the stock `garbage-collect` (with `--delete-untagged` when
    `delete_untagged`) deletes, marking each action the rules above would not take as refused."""

    def tag_rules(self) -> bool:
        """Whether any rule deletes tags."""
        return self.keep_last is not None or self.older_than is not None

    def names_latest(self) -> bool:
        """Whether a rule names `latest` explicitly: an --only-tag expression that spells the word `latest` and
        matches the tag. A pattern that matches it by accident (`.`, `^l`) does not name it."""
        return any(LATEST in p and re.search(p, LATEST) is not None for p in self.only_tags)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["age_from"] = self.age_from.value
        doc["collector"] = None if self.collector is None else self.collector.value
        for key in ("older_than", "uploads_older_than", "min_age"):
            value = getattr(self, key)
            doc[key] = None if value is None else value.total_seconds()
        doc["keep_tags"] = list(self.keep_tags)
        doc["only_tags"] = list(self.only_tags)
        doc["repositories"] = list(self.repositories)
        return doc


@dataclass
class Plan:
    """The actions, in apply order; held_back counts what only the grace period kept out (per tags,
    manifests, blobs, uploads), said on stderr, not written in the plan."""

    root: str
    created_at: datetime
    policy: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=dict)
    reset_times: list[str] = field(default_factory=list)
    """Repositories whose tags look pushed all at once, as after a copy that reset mtimes; said on stderr."""
    undated: int = 0
    """Tags the rules would judge by their image's `created` time, kept because it could not be read."""
    location: dict[str, str] | None = None
    """Where a tree in object storage is (bucket, prefix, region, endpoint; never a credential); None on disk."""

    def totals(self) -> dict[str, Any]:
        frame = self.frame()
        by_op = frame.groupby("op")["bytes"].agg(["count", "sum"])
        by_repo = frame.fillna({"repository": ""}).groupby("repository")["bytes"].agg(["count", "sum"])
        return {
            "count": len(frame),
            "bytes": int(frame["bytes"].sum()),
            "by_op": {op: {"count": int(r["count"]), "bytes": int(r["sum"])} for op, r in by_op.iterrows()},
            "by_repository": {
                (repo or "(blob store)"): {"count": int(r["count"]), "bytes": int(r["sum"])}
                for repo, r in by_repo.iterrows()
            },
        }

    def frame(self) -> pd.DataFrame:
        columns = ["op", "path", "repository", "tag", "digest", "bytes", "reason", "refused"]
        rows = [[getattr(a, c) for c in columns] for a in self.actions]
        frame = pd.DataFrame(rows, columns=columns)
        frame["bytes"] = frame["bytes"].astype("int64")
        return frame

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "tool_version": __version__,
            "created_at": self.created_at.isoformat(),
            "root": self.root,
            **({"location": self.location} if self.location is not None else {}),
            "policy": self.policy,
            "totals": self.totals(),
            "actions": [a.to_json() for a in self.actions],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Plan:
        """Validate a plan document; raises PlanError naming the first problem."""
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise PlanError("not a storage-audit plan")
        if doc.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {doc.get('version')!r} is not {PLAN_VERSION}")
        root, actions = doc.get("root"), doc.get("actions")
        location = doc.get("location")
        if location is None and (not isinstance(root, str) or not root.startswith("/")):
            raise PlanError("the plan's root must be an absolute path")
        if location is not None:
            _check_location(root, location)
        assert isinstance(root, str)
        if not isinstance(actions, list):
            raise PlanError("the plan has no list of actions")
        try:
            created = datetime.fromisoformat(doc["created_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError("the plan has no valid created_at") from exc
        policy = doc.get("policy")
        if not isinstance(policy, dict):
            raise PlanError("the plan's policy must be an object")
        plan = cls(root=root, created_at=created, policy=policy, location=location)
        last = -1
        for i, item in enumerate(actions):
            action = Action.from_json(item, i)
            order = OPS.index(Op(action.op))
            if order < last:
                raise PlanError(f"action #{i} ({action.op}) is out of order")
            last = order
            plan.actions.append(action)
        return plan


LOCATION_FIELDS = {"bucket", "prefix", "region", "endpoint"}


def _check_location(root: Any, location: Any) -> None:
    """A plan for object storage names its bucket and prefix twice, in `root` and in `location`: they must agree."""
    from storage_audit.storage.bucket import V2, S3Location, parse_s3_url

    if not isinstance(location, dict) or not set(location) <= LOCATION_FIELDS:
        raise PlanError("the plan's location must be an object of bucket, prefix, region and endpoint")
    bucket, prefix = location.get("bucket", ""), location.get("prefix", "")
    if not all(isinstance(v, str) for v in location.values()) or "region" not in location:
        raise PlanError("the plan's location needs a bucket, a prefix and a region, as strings")
    if not isinstance(root, str) or not root.startswith("s3://"):
        raise PlanError("a plan with a location must have an s3:// root")
    try:
        parsed = parse_s3_url(root)
        named = S3Location(bucket, prefix.removesuffix(f"{V2}/").strip("/"))
    except UsageError as exc:
        raise PlanError(f"the plan's location: {exc}") from exc
    if parsed != named or named.prefix != prefix:
        raise PlanError(f"the plan's root {root} and its location {bucket}/{prefix} disagree")


def _matches(values: pd.Series, patterns: Iterable[str], glob: bool = False) -> pd.Series:
    patterns = list(patterns)
    out = pd.Series(False, index=values.index)
    for pattern in patterns:
        if glob:
            out |= values.map(lambda v, p=pattern: fnmatch.fnmatchcase(v, p)).astype(bool)
        else:
            search = re.compile(pattern).search
            out |= values.map(lambda v, s=search: s(v) is not None).astype(bool)
    return out


def _in_scope(repositories: pd.Series, policy: Policy) -> pd.Series:
    if not policy.repositories:
        return pd.Series(True, index=repositories.index)
    return _matches(repositories, policy.repositories, glob=True)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def refuse_if_uncertain(inv: Inventory) -> None:
    """Raise PlanRefused when findings mean the inventory may not know every reference."""
    blocking = inv.findings[isin(inv.findings["kind"], BLOCKING_KINDS)]
    if len(blocking):
        first = blocking.iloc[0]
        found = "1 finding leaves" if len(blocking) == 1 else f"{len(blocking):,} findings such as this leave"
        raise PlanRefused(
            f"{first['kind']} at {first['path'] or '.'}: {found} references unknown; "
            "run `storage-audit check` and repair them before planning deletions"
        )


def tag_ages(tags: pd.DataFrame, policy: Policy, created: Mapping[str, pd.Timestamp] | None) -> pd.Series:
    """Each tag's age for the rules, as a time: its push (the link's mtime), or its image's `created` time
    (null where that could not be read)."""
    if policy.age_from is AgeFrom.PUSH:
        return tags["pushed_at"]
    known = created or {}
    times = [known.get(d) if isinstance(d, str) else None for d in tags["digest"]]
    return pd.Series(times, index=tags.index, dtype="datetime64[ns, UTC]")


def version_key(tag: str) -> tuple[int, Version] | tuple[int]:
    """A tag as a version where it reads as one (`v1.10` after `v1.9`, `2.0rc1` before `2.0`), so that versions
    sort above names that are none. packaging's versions (PEP 440, which also reads a leading `v` and `-rc1`)
    cover the usual release tags; any other tag falls back to its name."""
    try:
        return (1, Version(tag))
    except InvalidVersion:
        return (0,)


def newest_first(tags: pd.DataFrame, ages: pd.Series) -> pd.DataFrame:
    """`tags` from the newest: by age, then by version, then by name (the later first)."""
    keys = {i: (ages[i], version_key(t), t) for i, t in zip(tags.index, tags["tag"], strict=True)}
    return tags.loc[sorted(tags.index, key=keys.__getitem__, reverse=True)]


def _tag_deletions(inv: Inventory, policy: Policy, now: pd.Timestamp, ages: pd.Series) -> pd.DataFrame:
    """Tags the policy deletes, with a reason each."""
    tags = inv.tags.assign(reason=pd.Series(pd.NA, index=inv.tags.index, dtype="string"))
    if not policy.tag_rules():
        return tags.iloc[0:0]
    cand = _in_scope(tags["repository"], policy) & tags["digest"].notna() & tags["pushed_at"].notna() & ages.notna()
    if policy.only_tags:
        cand &= _matches(tags["tag"], policy.only_tags)
    if policy.keep_tags:
        cand &= ~_matches(tags["tag"], policy.keep_tags)
    if policy.keep_latest and not policy.names_latest():
        cand &= tags["tag"] != LATEST
    # The grace period protects a push in progress: it counts from the push, whatever the age is taken from.
    cand &= tags["pushed_at"] < now - policy.min_age
    reasons = pd.Series("", index=tags.index, dtype="string")
    if policy.keep_last is not None:
        # Rank among the tags the rules let us consider: what they keep, the grace period
        # included, is kept on top of the N.
        rank = newest_first(tags[cand], ages).groupby("repository").cumcount()
        beyond = pd.Series(False, index=tags.index)
        beyond[rank.index] = rank >= policy.keep_last
        cand &= beyond
        reasons = "tag " + tags["tag"] + f" beyond --keep-last {policy.keep_last}"
    if policy.older_than is not None:
        cand &= ages < now - policy.older_than
        verb = " pushed " if policy.age_from is AgeFrom.PUSH else " built "
        when = ages.dt.strftime("%Y-%m-%d %H:%M").astype("string")
        older = "tag " + tags["tag"] + verb + when + f" UTC, before --older-than {_duration(policy.older_than)}"
        reasons = reasons.where(reasons != "", older)
    # A tag goes only with every other tag of its manifest: one that stays keeps the others.
    staying = set(zip(tags["repository"][~cand], tags["digest"][~cand], strict=True))
    alone = [(r, d) not in staying for r, d in zip(tags["repository"], tags["digest"], strict=True)]
    cand &= pd.Series(alone, index=tags.index, dtype=bool)
    return tags[cand].assign(reason=reasons[cand])


def reset_times(inv: Inventory, policy: Policy) -> list[str]:
    """Repositories in scope where more than half of the tags, naming 3 manifests or more, were pushed in one
    second: rather a copy or a restore that reset the mtimes than pushes, so push times say nothing there."""
    tags = inv.tags.dropna(subset=["pushed_at", "digest"])
    tags = tags[_in_scope(tags["repository"], policy)]
    if tags.empty:
        return []
    second = tags["pushed_at"].dt.floor("s")
    counts = tags.groupby([tags["repository"], second]).agg(n=("tag", "size"), manifests=("digest", "nunique"))
    totals = tags.groupby("repository")["tag"].size()
    counts = counts.reset_index()
    share = counts["n"] / counts["repository"].map(totals)
    hits = counts[(share > RESET_SHARE) & (counts["manifests"] >= RESET_MANIFESTS)]
    return sorted(set(hits["repository"]))


def make_plan(
    source: Graph | Inventory,
    policy: Policy,
    now: datetime,
    storage: Storage | None = None,
    created: Mapping[str, pd.Timestamp] | None = None,
) -> Plan:
    """Apply `policy` to an inventory or its graph (as of `now`) and list the removals it implies, in apply order.

    `storage` is the tree the inventory was scanned from: where that is read
    from a listing (a bucket), the plan records where it is, and each action's
    keys as listed become part of its precondition. `created` is each manifest's
    `created` time, which the rules judge tags by with `age_from` created: a tag
    whose manifest has none is kept.
    """
    graph = Graph.of(source)
    inv = graph.inv
    refuse_if_uncertain(inv)
    listing = None if storage is None else storage.listing()
    if "bucket" in inv.origin and listing is None:
        raise ValueError("a plan for a tree in object storage needs the listing it was scanned from")
    ages = tag_ages(inv.tags, policy, created)
    actions = _actions(graph, policy, now, ages)
    if listing is not None:
        actions = [_with_keys(action, listing) for action in actions]
    location = None if listing is None else dict(listing.origin)
    plan = Plan(root=inv.root, created_at=now, policy=policy.to_json(), actions=actions, location=location)
    plan.held_back = _held_back(graph, policy, now, actions, ages)
    if policy.tag_rules():
        if policy.age_from is AgeFrom.PUSH:
            plan.reset_times = reset_times(inv, policy)
        else:
            considered = _in_scope(inv.tags["repository"], policy) & inv.tags["digest"].notna()
            plan.undated = int((considered & ages.isna()).sum())
    return plan


def _actions(graph: Graph, policy: Policy, now: datetime, ages: pd.Series) -> list[Action]:
    """The removals `policy` implies, in apply order, with what the inventory saw of each as its precondition."""
    if policy.collector is not None:
        return _collector_actions(graph, policy, now, ages)
    inv = graph.inv
    ts_now = pd.Timestamp(now)
    grace = ts_now - policy.min_age
    present = graph.present
    deleted_tags = _tag_deletions(inv, policy, ts_now, ages)
    remaining_tags = inv.tags.drop(index=deleted_tags.index)

    reached_after = graph.reached(graph.tagged(remaining_tags), policy.keep_referrers)
    if policy.delete_untagged:
        candidate = ~reached_after
    else:
        reached_before = graph.reached(graph.tagged(), policy.keep_referrers)
        candidate = reached_before & ~reached_after
    candidate &= _in_scope(present["repository"], policy).to_numpy()
    candidate &= (present["pushed_at"] < grace).fillna(False).to_numpy()
    if policy.older_than is not None:
        candidate &= (present["pushed_at"] < ts_now - policy.older_than).fillna(False).to_numpy()
    # Whatever stays keeps its children and referrers, even when the rules named them.
    kept = graph.reached(~candidate, policy.keep_referrers)
    removed_revisions = present[~kept]

    marked = graph.marked(kept, protect=True, tags=remaining_tags)
    blobs = inv.blobs
    removed_blobs = blobs[~marked & (blobs["mtime"] < grace)]

    actions: list[Action] = []
    actions += _tag_actions(deleted_tags)
    actions += _history_actions(inv, deleted_tags, removed_revisions)
    actions += _revision_actions(inv, removed_revisions, remaining_tags, policy)
    actions += _layer_link_actions(inv, removed_blobs)
    actions += _blob_actions(removed_blobs)
    actions += _upload_actions(inv, policy, ts_now, grace)
    if policy.prune_empty_repositories:
        actions += _repository_actions(inv, policy, present[kept], remaining_tags, actions, grace)
    return actions


COLLECTOR_CONFLICTS = {
    "keep_last": "--keep-last",
    "older_than": "--older-than",
    "repositories": "--repository",
    "uploads_older_than": "--uploads-older-than",
    "prune_empty_repositories": "--prune-empty-repositories",
}
"""Rules the stock collector has no equivalent of: a plan `--gc-compatible` takes none of them."""
REFUSED = "apply refuses it"


def collector_conflicts(policy: Policy) -> list[str]:
    """The options of `policy` that a plan as the stock collector would delete cannot take."""
    defaults = Policy()
    return [flag for name, flag in COLLECTOR_CONFLICTS.items() if getattr(policy, name) != getattr(defaults, name)]


def _collector_actions(graph: Graph, policy: Policy, now: datetime, ages: pd.Series) -> list[Action]:
    """What that stock collector deletes (less what the grace period holds back), each action that storage-audit's
    own rules would not take marked `refused` with why: apply's vetoes refuse those."""
    assert policy.collector is not None
    conflicts = collector_conflicts(policy)
    if conflicts:
        raise UsageError(f"--gc-compatible plans as the stock collector deletes: it takes no {', '.join(conflicts)}")
    inv = graph.inv
    grace = pd.Timestamp(now) - policy.min_age
    present = graph.present
    stock = graph.reach(ReachOptions(delete_untagged=policy.delete_untagged, collector=policy.collector))
    old = (present["pushed_at"] < grace).fillna(False).to_numpy()
    # What the grace period holds back keeps what it holds, as a revision the collector keeps does.
    held_back = ~stock.kept & ~old
    marked = stock.marked | graph.marked(held_back, protect=False)
    removed_revisions = present[~stock.kept & old]
    blobs = inv.blobs
    removed_blobs = blobs[~marked & (blobs["mtime"] < grace)]

    safe_policy = replace(policy, collector=None)
    safe = _actions(graph, safe_policy, now, ages)
    taken = {a.path for a in safe}
    removed_safe = {(a.repository, a.digest) for a in safe if a.op is Op.REMOVE_REVISION}
    kept = np.array(
        [k not in removed_safe for k in zip(present["repository"], present["digest"], strict=True)], dtype=bool
    )
    staying = present[kept]
    why = _Refusals(graph, staying, graph.marked(kept, protect=False), policy.collector)

    collector = (
        f"registry {policy.collector}'s `garbage-collect{' --delete-untagged' if policy.delete_untagged else ''}`"
    )
    actions: list[Action] = []
    # The tag history of a manifest that stays is left alone: no veto guards it, and no pull reads it.
    actions += [a for a in _history_actions(inv, inv.tags.iloc[0:0], removed_revisions) if a.path in taken]
    for action in _revision_actions(inv, removed_revisions, inv.tags, safe_policy):
        refused = None if action.path in taken else why.revision(action)
        actions.append(replace(action, reason=f"{collector} deletes it", refused=refused))
    for action in _layer_link_actions(inv, removed_blobs):
        refused = None if action.path in taken else f"its blob stays: {REFUSED}"
        actions.append(replace(action, refused=refused))
    for action in _blob_actions(removed_blobs):
        refused = None if action.path in taken else why.blob(action)
        actions.append(replace(action, reason=f"{collector} deletes it: it marks no reference to it", refused=refused))
    return actions


class _Refusals:
    """Why storage-audit keeps what the stock collector deletes, for the `refused` of a plan's actions."""

    def __init__(self, graph: Graph, staying: pd.DataFrame, marked_by_kept: np.ndarray, collector: Collector) -> None:
        # Registry 2.8 deletes every untagged child of a tagged index: distribution issue #3178, fixed in 3.
        self.issue = " (distribution #3178)" if collector is Collector.V2_8 else ""
        children = graph.children
        parents = staying[["repository", "target"]].rename(columns={"target": "manifest"})
        listed = parents.merge(children, on="manifest")
        self.parent = {
            (r, d): m for r, m, d in zip(listed["repository"], listed["manifest"], listed["digest"], strict=True)
        }
        manifests = graph.inv.manifests
        with_subject = manifests[manifests["subject"].notna()]
        self.subject = dict(zip(with_subject["digest"], with_subject["subject"], strict=True))
        self.held = set(graph.inv.blobs["digest"][marked_by_kept])

    def revision(self, action: Action) -> str:
        parent = self.parent.get((action.repository, action.digest))
        if parent is not None:
            return f"child of index {parent}, which stays{self.issue}: {REFUSED}"
        subject = self.subject.get(action.digest or "")
        if subject is not None:
            return f"referrer (signature, SBOM, attestation) of {subject}, which stays: {REFUSED}"
        return f"a tag or a manifest that stays reaches it: {REFUSED}"

    def blob(self, action: Action) -> str:
        if action.digest in self.held:
            return f"a manifest that stays references it: {REFUSED}"
        return (
            f"a broken reference (a dangling tag, a deleted index child) names it, should it be pushed again: {REFUSED}"
        )


def _with_keys(action: Action, listing: KeyListing) -> Action:
    """`action` with its keys as listed (ETag, size, last-modified) in its precondition; for an upload, also its
    data's incomplete multipart uploads, which listings do not show."""
    objects = {}
    for _, first, last in action.spans():
        for rel, info in listing.between(first, last):
            if info.etag is not None:  # not the stand-in for a multipart upload's data
                objects[rel] = KeyState(info.etag, info.size, info.last_modified)
    pre: Precondition = replace(action.precondition, objects=objects)
    if isinstance(pre, UploadPrecondition):
        pending = listing.unlisted.get(f"{action.path}/data", ())
        pre = replace(pre, multipart=tuple(PendingUpload(upload_id, size) for upload_id, size in pending))
    return replace(action, precondition=pre)


HELD_BACK_OPS = {
    "tags": "remove-tag",
    "manifests": "remove-revision",
    "blobs": "remove-blob",
    "uploads": "remove-upload",
}


def _held_back(graph: Graph, policy: Policy, now: datetime, planned: list[Action], ages: pd.Series) -> dict[str, int]:
    """What the rules would remove but the grace period keeps: the removals of the plan the same rules
    make without a grace period, less this plan's. Planned again only when something is that new."""
    inv = graph.inv
    grace = pd.Timestamp(now) - policy.min_age
    times = (inv.tags["pushed_at"], inv.revisions["pushed_at"], inv.blobs["mtime"], inv.uploads["started_at"])
    if policy.min_age <= timedelta(0) or not any(bool((t >= grace).any()) for t in times):
        return dict.fromkeys(HELD_BACK_OPS, 0)
    ungraced = _actions(graph, replace(policy, min_age=timedelta(0)), now, ages)
    held = {}
    for key, op in HELD_BACK_OPS.items():
        kept = {a.path for a in planned if a.op == op}
        held[key] = sum(1 for a in ungraced if a.op == op and a.path not in kept)
    return held


def _tag_actions(deleted: pd.DataFrame) -> list[Action]:
    return [
        Action(
            Op.REMOVE_TAG,
            path_for(TagDir(r.repository, r.tag)),
            r.reason,
            TagPrecondition(current=r.digest),
            repository=r.repository,
            tag=r.tag,
            digest=r.digest,
        )
        for r in deleted.sort_values(["repository", "tag"]).itertuples(index=False)
    ]


def _history_actions(inv: Inventory, deleted_tags: pd.DataFrame, removed: pd.DataFrame) -> list[Action]:
    history = inv.tag_history.merge(removed[["repository", "digest"]], on=["repository", "digest"])
    gone = deleted_tags[["repository", "tag"]].assign(_gone=True)
    history = history.merge(gone, on=["repository", "tag"], how="left")
    history = history[history["_gone"].isna()]  # a removed tag takes its history with it
    return [
        Action(
            Op.REMOVE_TAG_HISTORY,
            path_for(TagIndexLink(r.repository, r.tag, Digest.parse(r.digest))),
            f"history entry of tag {r.tag} for a manifest this plan removes",
            HistoryPrecondition(link=r.digest),
            repository=r.repository,
            tag=r.tag,
            digest=r.digest,
        )
        for r in history.sort_values(["repository", "tag", "digest"]).itertuples(index=False)
    ]


def revision_ranks(inv: Inventory, targets: pd.Series) -> np.ndarray:
    """The rank in which revisions naming `targets` are removed: 0 for a referrer, 1 for an index, 2 for an image.

    Referrers first, then indexes, then images: interrupted anywhere, no
    remaining index misses a child and no remaining artifact misses its subject.
    """
    kinds = inv.manifests.set_index("digest")
    is_referrer = targets.map(kinds["subject"]).notna()
    is_index = isin(targets.map(kinds["kind"]).fillna(""), LIST_KINDS)
    return np.where(is_referrer, 0, np.where(is_index, 1, 2))


def _revision_actions(
    inv: Inventory, removed: pd.DataFrame, remaining_tags: pd.DataFrame, policy: Policy
) -> list[Action]:
    was_tagged = set(zip(remaining_tags["repository"], remaining_tags["digest"], strict=True))
    ranked = removed.assign(_rank=revision_ranks(inv, removed["target"]))
    ordered = ranked.sort_values(["_rank", "repository", "digest"])
    actions = []
    for r in ordered.itertuples(index=False):
        if (r.repository, r.digest) in was_tagged:  # pragma: no cover - closure keeps tagged revisions
            continue
        reason = "untagged: no tag reaches it" if policy.delete_untagged else "no remaining tag reaches it"
        actions.append(
            Action(
                Op.REMOVE_REVISION,
                path_for(RevisionLink(r.repository, Digest.parse(r.digest))),
                reason,
                RevisionPrecondition(link=r.target),
                repository=r.repository,
                digest=r.digest,
            )
        )
    return actions


def _layer_link_actions(inv: Inventory, removed_blobs: pd.DataFrame) -> list[Action]:
    links = inv.layer_links.dropna(subset=["target"])
    doomed = isin(links["target"], removed_blobs["digest"])
    missing = ~isin(links["target"], inv.blobs["digest"])
    rows = links[doomed | missing].assign(missing=missing[doomed | missing])
    return [
        Action(
            Op.REMOVE_LAYER_LINK,
            path_for(LayerLink(r.repository, Digest.parse(r.digest))),
            "its blob is gone" if r.missing else "its blob is removed by this plan",
            LayerLinkPrecondition(link=r.target),
            repository=r.repository,
            digest=r.digest,
        )
        for r in rows.sort_values(["repository", "digest"]).itertuples(index=False)
    ]


def _blob_actions(removed: pd.DataFrame) -> list[Action]:
    return [
        Action(
            Op.REMOVE_BLOB,
            path_for(BlobDir(Digest.parse(r.digest))),
            "orphan: no kept manifest references it",
            BlobPrecondition(size=int(r.size), mtime_ns=int(r.mtime.value)),
            digest=r.digest,
            bytes=int(r.size),
        )
        for r in removed.sort_values("digest").itertuples(index=False)
    ]


def _upload_actions(inv: Inventory, policy: Policy, now: pd.Timestamp, grace: pd.Timestamp) -> list[Action]:
    if policy.uploads_older_than is None:
        return []
    uploads = inv.uploads[_in_scope(inv.uploads["repository"], policy)]
    cutoff = min(now - policy.uploads_older_than, grace)
    # An upload without `startedat` is never purged by the registry: it is stale by definition.
    stale = uploads["started_at"].isna() | (uploads["started_at"] < cutoff)
    actions = []
    for r in uploads[stale].itertuples(index=False):
        started = None if pd.isna(r.started_at) else r.started_at.isoformat()
        when = "without startedat" if started is None else f"started {r.started_at:%Y-%m-%d %H:%M} UTC"
        actions.append(
            Action(
                Op.REMOVE_UPLOAD,
                path_for(UploadDir(r.repository, r.id)),
                f"upload {when}, before --uploads-older-than {_duration(policy.uploads_older_than)}",
                UploadPrecondition(bytes=int(r.bytes), started_at=started),
                repository=r.repository,
                bytes=int(r.bytes),
            )
        )
    return actions


def _repository_actions(
    inv: Inventory,
    policy: Policy,
    kept: pd.DataFrame,
    remaining_tags: pd.DataFrame,
    planned: list[Action],
    grace: pd.Timestamp,
) -> list[Action]:
    removed_uploads = {a.path for a in planned if a.op == Op.REMOVE_UPLOAD}
    repos = inv.repositories[_in_scope(inv.repositories["repository"], policy)]["repository"]
    busy = set(kept["repository"]) | set(remaining_tags["repository"])
    # Fresh layer links may be a push in progress (blobs go up before their manifest).
    fresh = inv.repositories["layers_changed_at"] >= grace
    busy |= set(inv.repositories[fresh.fillna(False)]["repository"])
    for r in inv.uploads.itertuples(index=False):
        if path_for(UploadDir(r.repository, r.id)) not in removed_uploads:
            busy.add(r.repository)
    changed = inv.repositories.set_index("repository")["layers_changed_at"]
    return [
        Action(
            Op.REMOVE_REPOSITORY,
            path_for(Repository(name)),
            "empty: no tag, manifest or upload is left in it",
            RepositoryPrecondition(layers_changed_at=None if pd.isna(changed[name]) else int(changed[name].value)),
            repository=name,
        )
        for name in sorted(set(repos) - busy)
    ]


__all__ = [
    "OPS",
    "OP_SPEC",
    "Action",
    "Op",
    "Plan",
    "PlanError",
    "PlanRefused",
    "Policy",
    "collector_conflicts",
    "make_plan",
    "newest_first",
    "reset_times",
    "revision_ranks",
    "tag_ages",
    "version_key",
]
