"""Deletion plans: retention rules applied to an inventory, as an ordered, reviewable list of actions."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import humanize
import numpy as np
import pandas as pd
from packaging.version import InvalidVersion, Version
from wcmatch import glob as wcglob

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
from storage_audit.core import durations
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
    label: str = ""
    """How reasons name the rule (`rule ci/**`, from a policy file); empty: the one-run options' names."""
    path_globs: bool = False
    """`repositories` are path globs (`*` within one path segment, `**` across them), not fnmatch's."""
    keep_unselected: bool = True
    """Whether the tags the rule does not select (matching no only_tags, or a keep_tags pattern) stay by this rule;
    a policy file's rule keeps only the tags it selects, and a tag stays if any rule keeps it."""
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
        if not self.label:  # the one-run options: the plan document as it always was
            for key in ("label", "path_globs", "keep_unselected"):
                del doc[key]
        return doc


@dataclass(frozen=True)
class Retention:
    """What a plan applies: rules, each a Policy over its repositories, of which a tag stays if any rule that
    applies to its repository keeps it (an untagged manifest goes only where every such rule deletes untagged
    manifests); repositories no rule applies to are left alone. The one-run options are one rule.

    `min_age` is the grace period of blobs and uploads (each rule has its own for tags and manifests);
    `uploads_older_than` and `prune_empty_repositories` act in the repositories the rules apply to.
    """

    rules: tuple[Policy, ...]
    min_age: timedelta = timedelta(hours=1)
    uploads_older_than: timedelta | None = None
    prune_empty_repositories: bool = False
    age_from: AgeFrom = AgeFrom.PUSH
    source: str | None = None
    """The policy file the rules were read from; None for the one-run options."""

    @classmethod
    def of(cls, policy: Policy) -> Retention:
        """The one-run options as a retention of one rule."""
        return cls(
            (policy,), policy.min_age, policy.uploads_older_than, policy.prune_empty_repositories, policy.age_from
        )

    def tag_rules(self) -> bool:
        """Whether any rule can delete tags."""
        return any(r.tag_rules() or not r.keep_unselected for r in self.rules)

    def in_scope(self, repositories: pd.Series) -> pd.Series:
        """Whether some rule applies to each repository."""
        out = pd.Series(False, index=repositories.index)
        for rule in self.rules:
            out |= _in_scope(repositories, rule)
        return out

    def to_json(self) -> dict[str, Any]:
        if self.source is None and len(self.rules) == 1:
            return self.rules[0].to_json()
        return {
            "policy_file": self.source,
            "min_age": self.min_age.total_seconds(),
            "uploads_older_than": None if self.uploads_older_than is None else self.uploads_older_than.total_seconds(),
            "prune_empty_repositories": self.prune_empty_repositories,
            "age_from": self.age_from.value,
            "rules": [r.to_json() for r in self.rules],
        }


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
    decision: Decision | None = field(default=None, repr=False, compare=False)
    """The verdict on every tag and revision the actions come from (not written in the plan): what --explain shows."""

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


LOCATION_FIELDS = {"provider", "bucket", "prefix", "region", "account", "endpoint"}
_SCHEME = {"s3": "s3", "gcs": "gs", "azure": "az"}


def _check_location(root: Any, location: Any) -> None:
    """A plan for object storage names its bucket and prefix twice, in `root` and in `location`: they must agree."""
    from storage_audit.storage.bucket import V2, S3Location, parse_bucket_url

    if not isinstance(location, dict) or not set(location) <= LOCATION_FIELDS:
        raise PlanError("the plan's location must be an object of provider, bucket, prefix, region, account, endpoint")
    bucket, prefix = location.get("bucket", ""), location.get("prefix", "")
    provider = location.get("provider", "s3")
    if provider not in _SCHEME:
        raise PlanError(f"the plan's location names an unknown provider {provider!r}")
    if not all(isinstance(v, str) for v in location.values()):
        raise PlanError("the plan's location holds strings only")
    if provider == "s3" and "region" not in location:
        raise PlanError("the plan's location needs a bucket, a prefix and a region, as strings")
    if provider == "azure" and "account" not in location:
        raise PlanError("the plan's location for Azure needs its account")
    scheme = _SCHEME[provider]
    if not isinstance(root, str) or not root.startswith(f"{scheme}://"):
        raise PlanError(f"a plan with a location must have a {scheme}:// root")
    try:
        parsed = parse_bucket_url(root)
        named = S3Location(bucket, prefix.removesuffix(f"{V2}/").strip("/"), scheme)
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


PATH_GLOB_FLAGS = wcglob.GLOBSTAR | wcglob.DOTGLOB | wcglob.NEGATE
"""Path globs as a shell with globstar reads them: `*` and `?` stay within a path segment, `**` crosses them;
a pattern that starts with `!` takes what it matches away from what the others match."""


def path_glob_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether the repository `name` matches the path globs `patterns` (`ci/**`, `team/*/app`, `!ci/tmp/**`):
    one of them, and none of those written with `!`."""
    return bool(wcglob.globmatch(name, list(patterns), flags=PATH_GLOB_FLAGS))


def _in_scope(repositories: pd.Series, policy: Policy) -> pd.Series:
    if not policy.repositories:
        return pd.Series(True, index=repositories.index)
    if not policy.path_globs:
        return _matches(repositories, policy.repositories, glob=True)
    names = repositories.unique()
    hits = {n for n in names if path_glob_matches(n, policy.repositories)}
    return repositories.isin(hits)


_duration = durations.written


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


def tag_ages(tags: pd.DataFrame, policy: Policy | Retention, created: Mapping[str, pd.Timestamp] | None) -> pd.Series:
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


def _ago(now: pd.Timestamp, when: pd.Series, rows: pd.Series) -> pd.Series:
    """How long before `now` each time of `rows` is, in words (`40 days`, `3 hours`); empty elsewhere."""
    out = pd.Series("", index=when.index, dtype="string")
    picked = (now - when[rows]).map(
        lambda d: "" if pd.isna(d) else humanize.naturaldelta(d.to_pytimedelta(), months=False)
    )
    out[picked.index] = picked.astype("string")
    return out


def _rule_verdict(
    tags: pd.DataFrame, rule: Policy, now: pd.Timestamp, ages: pd.Series
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """One rule's word on every tag: whether it applies (its repositories), whether it deletes the tag, and why
    it keeps or deletes it. What the grace period, `latest` and unknown ages protect is ranked out here and kept
    by the combination (`tag_verdicts`)."""
    scope = _in_scope(tags["repository"], rule)
    selected = pd.Series(True, index=tags.index)
    if rule.only_tags:
        selected &= _matches(tags["tag"], rule.only_tags)
    excluded = _matches(tags["tag"], rule.keep_tags) if rule.keep_tags else pd.Series(False, index=tags.index)
    selected &= ~excluded
    protected = tags["digest"].isna() | tags["pushed_at"].isna() | ages.isna()
    if rule.keep_latest and not rule.names_latest():
        protected |= tags["tag"] == LATEST
    # The grace period protects a push in progress: it counts from the push, whatever the age is taken from.
    protected |= ~(tags["pushed_at"] < now - rule.min_age).fillna(False)
    cand = scope & selected & ~protected
    file_rule = bool(rule.label)
    reasons = pd.Series("", index=tags.index, dtype="string")
    deletes = pd.Series(False, index=tags.index)
    verb = "pushed" if rule.age_from is AgeFrom.PUSH else "built"
    if rule.tag_rules():
        deletes = cand.copy()
        beyond_text = pd.Series("", index=tags.index, dtype="string")
        if rule.keep_last is not None:
            # Rank among the tags the rule may delete: what the grace period and `latest` keep comes on top of N.
            rank = newest_first(tags[cand], ages).groupby("repository").cumcount()
            ranks = pd.Series(-1, index=tags.index, dtype="int64")
            ranks[rank.index] = rank.to_numpy()
            within = cand & (ranks < rule.keep_last)
            deletes &= ~within
            shown = (ranks + 1).astype("string")
            if file_rule:
                reasons = reasons.mask(within, f"{rule.label} keep_last {rule.keep_last} (rank " + shown + ")")
                beyond_text = f"{rule.label} keep_last {rule.keep_last}: rank " + shown
            else:
                reasons = reasons.mask(within, f"--keep-last {rule.keep_last} (rank " + shown + ")")
                beyond_text = "tag " + tags["tag"] + f" beyond --keep-last {rule.keep_last}"
        if rule.older_than is not None:
            recent = cand & ~(ages < now - rule.older_than).fillna(False)
            ago = _ago(now, ages, cand)
            span = _duration(rule.older_than)
            if file_rule:
                keep = f"{rule.label} keep_within {span} ({verb} " + ago + " ago)"
                old = f"{verb} " + ago + f" ago, over keep_within {span}"
                old_text = beyond_text.where(beyond_text == "", beyond_text + ", ") + old
                old_text = old_text.where(beyond_text != "", f"{rule.label} " + old)
            else:
                when = ages.dt.strftime("%Y-%m-%d %H:%M").astype("string")
                keep = f"{verb} " + when + f" UTC, within --older-than {span}"
                older = "tag " + tags["tag"] + f" {verb} " + when + f" UTC, before --older-than {span}"
                old_text = beyond_text.where(beyond_text != "", older)
            reasons = reasons.mask(recent & (reasons == ""), keep)
            deletes &= ~recent
            reasons = reasons.mask(deletes, old_text)
        else:
            reasons = reasons.mask(deletes, beyond_text)
    else:
        reasons = reasons.mask(cand, f"{rule.label} keep: always" if file_rule else "no rule deletes tags")
    unselected = scope & ~selected
    if rule.keep_unselected:
        reasons = reasons.mask(unselected & excluded, "matches --keep-tag")
        reasons = reasons.mask(unselected & ~excluded, "matches no --only-tag")
    else:
        deletes |= unselected
        reasons = reasons.mask(unselected & excluded, f"{rule.label}: its tags exclude it")
        reasons = reasons.mask(unselected & ~excluded, f"{rule.label}: its tags do not include it")
    return scope, deletes & scope, reasons


def tag_verdicts(inv: Inventory, retention: Retention, now: pd.Timestamp, ages: pd.Series) -> pd.DataFrame:
    """Every tag of the repositories some rule applies to (`touched`), whether the plan deletes it, and why.

    A tag stays if any rule that applies to its repository keeps it, and whatever protects it: an unknown age,
    the grace period (the longest of those rules'), `latest` unless such a rule names it; then a tag that
    shares its manifest with a tag that stays stays with it.
    """
    tags = inv.tags
    touched = pd.Series(False, index=tags.index)
    every_deletes = pd.Series(True, index=tags.index)
    deleting = pd.Series("", index=tags.index, dtype="string")
    keeping = pd.Series("", index=tags.index, dtype="string")
    grace = pd.Series(pd.Timedelta(0), index=tags.index)
    guards_latest = pd.Series(False, index=tags.index)
    names_latest = pd.Series(False, index=tags.index)
    for rule in retention.rules:
        scope, deletes, reasons = _rule_verdict(tags, rule, now, ages)
        if not scope.any():
            continue
        touched |= scope
        every_deletes &= deletes | ~scope
        keeping = keeping.mask(scope & ~deletes & (keeping == "") & (reasons != ""), reasons)
        joined = deleting.where(deleting == "", deleting + "; ") + reasons
        deleting = deleting.mask(scope & deletes, joined)
        grace = grace.mask(scope & (grace < pd.Timedelta(rule.min_age)), pd.Timedelta(rule.min_age))
        guards_latest |= scope & rule.keep_latest
        names_latest |= scope & rule.names_latest()
    undated = tags["digest"].isna() | tags["pushed_at"].isna() | ages.isna()
    fresh = ~(tags["pushed_at"] < now - grace).fillna(False)
    latest = (tags["tag"] == LATEST) & guards_latest & ~names_latest
    deleted = touched & every_deletes & ~undated & ~fresh & ~latest
    reason = keeping.copy()
    graced = touched & ~deleted & fresh
    reason = reason.mask(graced, "pushed " + _ago(now, tags["pushed_at"], graced) + " ago, in the grace period")
    reason = reason.mask(touched & latest, LATEST)
    unknown = "its image has no readable created time" if retention.age_from is AgeFrom.CREATED else "no push time"
    reason = reason.mask(touched & undated, unknown)
    reason = reason.mask(touched & tags["digest"].isna(), "names no manifest")
    # A tag goes only with every other tag of its manifest: one that stays keeps the others.
    staying = tags[~deleted].sort_values("tag").drop_duplicates(["repository", "digest"])
    keeper = tags[["repository", "digest"]].merge(
        staying[["repository", "digest", "tag"]], on=["repository", "digest"], how="left"
    )["tag"]
    keeper.index = tags.index
    shares = deleted & keeper.notna()
    deleted &= ~shares
    reason = reason.mask(shares, "shares its digest with " + keeper.astype("string"))
    reason = reason.mask(deleted, deleting)
    return pd.DataFrame({"touched": touched, "deleted": deleted, "reason": reason.fillna("")}, index=tags.index)


def reset_times(inv: Inventory, policy: Policy | Retention) -> list[str]:
    """Repositories in scope where more than half of the tags, naming 3 manifests or more, were pushed in one
    second: rather a copy or a restore that reset the mtimes than pushes, so push times say nothing there."""
    retention = policy if isinstance(policy, Retention) else Retention.of(policy)
    tags = inv.tags.dropna(subset=["pushed_at", "digest"])
    tags = tags[retention.in_scope(tags["repository"])]
    if tags.empty:
        return []
    second = tags["pushed_at"].dt.floor("s")
    counts = tags.groupby([tags["repository"], second]).agg(n=("tag", "size"), manifests=("digest", "nunique"))
    totals = tags.groupby("repository")["tag"].size()
    counts = counts.reset_index()
    share = counts["n"] / counts["repository"].map(totals)
    hits = counts[(share > RESET_SHARE) & (counts["manifests"] >= RESET_MANIFESTS)]
    return sorted(set(hits["repository"]))


@dataclass
class Decision:
    """What the rules decide, which the plan's actions and --explain both come from.

    tags: per tag of the inventory, `touched` (a rule applies to its repository), `deleted` and `reason`;
    over `graph.present`: `in_scope`, `candidate` (the rules would remove it), `kept` (it stays: not a
    candidate, or reached from what stays), `delete_untagged` and `cutoff` (pushed before it, a revision may
    go) of its repository's rules; `removed_blobs`: rows of the inventory's blobs the plan removes.
    """

    retention: Retention
    now: pd.Timestamp
    tags: pd.DataFrame
    in_scope: np.ndarray
    candidate: np.ndarray
    kept: np.ndarray
    delete_untagged: np.ndarray
    cutoff: pd.Series
    keep_referrers: np.ndarray
    removed_blobs: pd.DataFrame
    reached_before: np.ndarray
    """Over `graph.present`: some tag reached it before the plan (itself, an index or a subject it has)."""

    @property
    def deleted_tags(self) -> pd.DataFrame:
        return self.tags[self.tags["deleted"]]


def make_plan(
    source: Graph | Inventory,
    policy: Policy | Retention,
    now: datetime,
    storage: Storage | None = None,
    created: Mapping[str, pd.Timestamp] | None = None,
) -> Plan:
    """Apply `policy` (the one-run options, or the rules of a policy file) to an inventory or its graph (as of
    `now`) and list the removals it implies, in apply order.

    `storage` is the tree the inventory was scanned from: where that is read
    from a listing (a bucket), the plan records where it is, and each action's
    keys as listed become part of its precondition. `created` is each manifest's
    `created` time, which the rules judge tags by with `age_from` created: a tag
    whose manifest has none is kept.
    """
    retention = policy if isinstance(policy, Retention) else Retention.of(policy)
    graph = Graph.of(source)
    inv = graph.inv
    refuse_if_uncertain(inv)
    listing = None if storage is None else storage.listing()
    if "bucket" in inv.origin and listing is None:
        raise ValueError("a plan for a tree in object storage needs the listing it was scanned from")
    ages = tag_ages(inv.tags, retention, created)
    decision = decide(graph, retention, now, ages)
    actions = _planned(graph, decision, ages)
    if listing is not None:
        actions = [_with_keys(action, listing) for action in actions]
    location = None if listing is None else dict(listing.origin)
    plan = Plan(
        root=inv.root,
        created_at=now,
        policy=retention.to_json(),
        actions=actions,
        location=location,
        decision=decision,
    )
    plan.held_back = _held_back(graph, retention, now, actions, ages)
    if retention.tag_rules():
        if retention.age_from is AgeFrom.PUSH:
            plan.reset_times = reset_times(inv, retention)
        else:
            considered = retention.in_scope(inv.tags["repository"]) & inv.tags["digest"].notna()
            plan.undated = int((considered & ages.isna()).sum())
    return plan


def _revision_settings(
    present: pd.DataFrame, retention: Retention, now: pd.Timestamp
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series]:
    """Per present revision, from the rules applying to its repository: whether one applies; whether untagged
    manifests go (every rule says so); whether referrers of kept images stay (one rule says so); and the time
    it must be pushed before to go (each rule's grace period, and its --older-than)."""
    n = len(present)
    in_scope = np.zeros(n, dtype=bool)
    untagged = np.ones(n, dtype=bool)
    referrers = np.zeros(n, dtype=bool)
    cutoff = pd.Series(pd.Timestamp.max.tz_localize("UTC"), index=present.index)
    for rule in retention.rules:
        scope = _in_scope(present["repository"], rule).to_numpy()
        in_scope |= scope
        untagged &= ~scope | rule.delete_untagged
        referrers |= scope & rule.keep_referrers
        limit = now - rule.min_age
        if rule.older_than is not None:
            limit = min(limit, now - rule.older_than)
        cutoff = cutoff.mask(scope & (cutoff > limit).to_numpy(), limit)
    referrers |= ~in_scope
    return in_scope, untagged & in_scope, referrers, cutoff


def _reached(graph: Graph, roots: np.ndarray, keep_referrers: np.ndarray) -> np.ndarray:
    """What `roots` keep, through referrers where their repository's rules keep them (reach stays within a
    repository, so the two closures combine row by row)."""
    if keep_referrers.all():
        return graph.reached(roots, True)
    if not keep_referrers.any():
        return graph.reached(roots, False)
    return np.where(keep_referrers, graph.reached(roots, True), graph.reached(roots, False))


def decide(graph: Graph, retention: Retention, now: datetime, ages: pd.Series) -> Decision:
    """The verdict of `retention` on every tag, revision and blob of `graph`, as of `now`."""
    inv = graph.inv
    ts_now = pd.Timestamp(now)
    present = graph.present
    verdicts = tag_verdicts(inv, retention, ts_now, ages)
    remaining_tags = inv.tags[~verdicts["deleted"]]
    in_scope, delete_untagged, keep_referrers, cutoff = _revision_settings(present, retention, ts_now)

    reached_after = _reached(graph, graph.tagged(remaining_tags), keep_referrers)
    reached_before = _reached(graph, graph.tagged(), keep_referrers)
    candidate = np.where(delete_untagged, ~reached_after, reached_before & ~reached_after)
    candidate &= in_scope
    candidate &= (present["pushed_at"] < cutoff).fillna(False).to_numpy()
    # Whatever stays keeps its children and referrers, even when the rules named them.
    kept = _reached(graph, ~candidate, keep_referrers)

    grace = ts_now - retention.min_age
    marked = graph.marked(kept, protect=True, tags=remaining_tags)
    blobs = inv.blobs
    removed_blobs = blobs[~marked & (blobs["mtime"] < grace)]
    return Decision(
        retention,
        ts_now,
        verdicts,
        in_scope,
        candidate,
        kept,
        delete_untagged,
        cutoff,
        keep_referrers,
        removed_blobs,
        reached_before,
    )


def _planned(graph: Graph, decision: Decision, ages: pd.Series) -> list[Action]:
    """The plan's actions: what the rules decided or, for the one-run options with a collector, what that stock
    collector deletes (see `_collector_actions`)."""
    rules = decision.retention.rules
    if len(rules) == 1 and rules[0].collector is not None:
        return _collector_actions(graph, rules[0], decision)
    return _actions(graph, decision)


def _actions(graph: Graph, decision: Decision) -> list[Action]:
    """The removals `decision` implies, in apply order, with what the inventory saw of each as its precondition."""
    inv = graph.inv
    retention = decision.retention
    deleted_tags = inv.tags[decision.tags["deleted"]].assign(reason=decision.deleted_tags["reason"])
    remaining_tags = inv.tags[~decision.tags["deleted"]]
    kept = decision.kept
    removed_revisions = graph.present[~kept]
    removed_blobs = decision.removed_blobs
    grace = decision.now - retention.min_age

    actions: list[Action] = []
    actions += _tag_actions(deleted_tags)
    actions += _history_actions(inv, deleted_tags, removed_revisions)
    actions += _revision_actions(inv, removed_revisions, remaining_tags, decision.reached_before[~kept])
    actions += _layer_link_actions(inv, removed_blobs)
    actions += _blob_actions(removed_blobs)
    actions += _upload_actions(inv, retention, decision.now, grace)
    if retention.prune_empty_repositories:
        actions += _repository_actions(inv, retention, graph.present[kept], remaining_tags, actions, grace)
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


def _collector_actions(graph: Graph, policy: Policy, decision: Decision) -> list[Action]:
    """What that stock collector deletes (less what the grace period holds back), each action that storage-audit's
    own rules would not take marked `refused` with why: apply's vetoes refuse those. `decision` is what the same
    rules decide by storage-audit's own reckoning (the collector plays no part in it)."""
    assert policy.collector is not None
    conflicts = collector_conflicts(policy)
    if conflicts:
        raise UsageError(f"--gc-compatible plans as the stock collector deletes: it takes no {', '.join(conflicts)}")
    inv = graph.inv
    grace = decision.now - policy.min_age
    present = graph.present
    stock = graph.reach(ReachOptions(delete_untagged=policy.delete_untagged, collector=policy.collector))
    old = (present["pushed_at"] < grace).fillna(False).to_numpy()
    # What the grace period holds back keeps what it holds, as a revision the collector keeps does.
    held_back = ~stock.kept & ~old
    marked = stock.marked | graph.marked(held_back, protect=False)
    removed_revisions = present[~stock.kept & old]
    blobs = inv.blobs
    removed_blobs = blobs[~marked & (blobs["mtime"] < grace)]

    taken = {a.path for a in _actions(graph, decision)}
    kept = decision.kept
    why = _Refusals(graph, present[kept], graph.marked(kept, protect=False), policy.collector)

    collector = (
        f"registry {policy.collector}'s `garbage-collect{' --delete-untagged' if policy.delete_untagged else ''}`"
    )
    actions: list[Action] = []
    # The tag history of a manifest that stays is left alone: no veto guards it, and no pull reads it.
    actions += [a for a in _history_actions(inv, inv.tags.iloc[0:0], removed_revisions) if a.path in taken]
    for action in _revision_actions(inv, removed_revisions, inv.tags, np.zeros(len(removed_revisions), dtype=bool)):
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


def _held_back(
    graph: Graph, retention: Retention, now: datetime, planned: list[Action], ages: pd.Series
) -> dict[str, int]:
    """What the rules would remove but the grace period keeps: the removals of the plan the same rules
    make without a grace period, less this plan's. Planned again only when something is that new."""
    inv = graph.inv
    longest = max([retention.min_age, *(r.min_age for r in retention.rules)])
    grace = pd.Timestamp(now) - longest
    times = (inv.tags["pushed_at"], inv.revisions["pushed_at"], inv.blobs["mtime"], inv.uploads["started_at"])
    if longest <= timedelta(0) or not any(bool((t >= grace).any()) for t in times):
        return dict.fromkeys(HELD_BACK_OPS, 0)
    ungraced = replace(
        retention,
        min_age=timedelta(0),
        rules=tuple(replace(r, min_age=timedelta(0)) for r in retention.rules),
    )
    again = _planned(graph, decide(graph, ungraced, now, ages), ages)
    held = {}
    for key, op in HELD_BACK_OPS.items():
        kept = {a.path for a in planned if a.op == op}
        held[key] = sum(1 for a in again if a.op == op and a.path not in kept)
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
    inv: Inventory, removed: pd.DataFrame, remaining_tags: pd.DataFrame, reached_before: np.ndarray
) -> list[Action]:
    was_tagged = set(zip(remaining_tags["repository"], remaining_tags["digest"], strict=True))
    ranked = removed.assign(_rank=revision_ranks(inv, removed["target"]), reached_before=reached_before)
    ordered = ranked.sort_values(["_rank", "repository", "digest"])
    actions = []
    for r in ordered.itertuples(index=False):
        if (r.repository, r.digest) in was_tagged:  # pragma: no cover - closure keeps tagged revisions
            continue
        reason = revision_reason(bool(r.reached_before))
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


def revision_reason(reached_before: bool) -> str:
    """Why a revision the plan removes goes: only the tags the plan deletes reached it, or no tag did (its
    repository's rules delete untagged manifests)."""
    return "no remaining tag reaches it" if reached_before else "untagged: no tag reaches it"


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


def _upload_actions(inv: Inventory, policy: Retention, now: pd.Timestamp, grace: pd.Timestamp) -> list[Action]:
    if policy.uploads_older_than is None:
        return []
    uploads = inv.uploads[policy.in_scope(inv.uploads["repository"])]
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
    policy: Retention,
    kept: pd.DataFrame,
    remaining_tags: pd.DataFrame,
    planned: list[Action],
    grace: pd.Timestamp,
) -> list[Action]:
    removed_uploads = {a.path for a in planned if a.op == Op.REMOVE_UPLOAD}
    repos = inv.repositories[policy.in_scope(inv.repositories["repository"])]["repository"]
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
    "Retention",
    "collector_conflicts",
    "decide",
    "make_plan",
    "newest_first",
    "reset_times",
    "revision_ranks",
    "tag_ages",
    "version_key",
]
