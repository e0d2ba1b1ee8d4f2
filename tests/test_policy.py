"""Policy files (`plan --policy`) and `plan --explain` on registries pushed through the reference registry's API.

Push times are set on the tag links with os.utime relative to a pinned clock. Every expected verdict is computed
here from the rules as the README states them, by a model of a few loops (and, for zot's `retention` and
GitLab's clean-up policies, by models of those tools' own rules), never by the code under test; the plan then
has to say the same, --explain has to equal the plan, and a plan applied has to leave every kept tag pullable.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storage_audit.analysis.graph import Graph
from tests.conftest import cli, fixtures_built
from tests.registry_harness import Client, Pushed, Registry, require_registry, sha256
from tests.s3_harness import RegistryInBucket, SeaweedS3, raw_keys, s3_registry
from tests.test_plan_apply import V2, apply_cli, copy_tree, keys, pull_verified, tag_link

NOW = fixtures_built() + timedelta(minutes=1)
DAY = 86400
TOP = Path(__file__).resolve().parents[1]
DEMO = TOP / "fixtures" / "demo"
EXAMPLE = TOP / "docs" / "examples" / "retention.yaml"

# (repository, tag): days since its push. Tags of one image share a digest: build-5 and latest, v1.9 and stable.
AGES = {
    ("ci/app", "build-1"): 40,
    ("ci/app", "build-2"): 30,
    ("ci/app", "build-3"): 20,
    ("ci/app", "build-4"): 10,
    ("ci/app", "build-5"): 2,
    ("ci/app", "latest"): 2,
    ("ci/app", "pr-7"): 50,
    ("ci/tools/lint", "v1"): 60,
    ("ci/tools/lint", "v2"): 5,
    ("team/a/app", "v1.9"): 90,
    ("team/a/app", "stable"): 90,
    ("team/a/app", "v1.10"): 60,
    ("team/a/app", "v2.0"): 10,
    ("team/a/app", "multi-1"): 80,
    ("team/a/b/app", "old"): 100,
    ("other", "x"): 300,
    ("other", "latest"): 300,
}
SAME_IMAGE = {("ci/app", "latest"): "build-5", ("team/a/app", "stable"): "v1.9"}


@dataclass
class World:
    root: Path
    digests: dict[tuple[str, str], str]
    untagged: str
    """A manifest of ci/app pushed by digest alone."""
    signature: str
    """A signature (untagged) of team/a/app's v1.10."""
    children: list[str]
    """The platforms of team/a/app's multi-1."""
    scratch: Path
    media_types: dict[tuple[str, str], str] = field(default_factory=dict)

    def copy(self, name: str, ages: dict[tuple[str, str], float] | None = None) -> Path:
        """A copy, every mtime 200 days old but the tag links, aged as `ages` (default AGES) says."""
        root = copy_tree(self.root, self.scratch / name)
        stamp = (NOW - timedelta(days=200)).timestamp()
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in filenames + dirnames:
                os.utime(os.path.join(dirpath, entry), (stamp, stamp), follow_symlinks=False)
        for (repo, tag), days in (ages or AGES).items():
            when = (NOW - timedelta(days=days)).timestamp()
            os.utime(tag_link(root / V2, repo, tag), (when, when))
        return root


def push_world(reg: Client) -> tuple[dict[tuple[str, str], Pushed], Pushed, Pushed, list[Pushed]]:
    rng = random.Random("storage-audit-policy")

    def image(repo: str, tags: tuple[str, ...] = (), arch: str = "amd64") -> Pushed:
        layers = [rng.randbytes(96)]
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(layers[0])]}}
        return reg.image(repo, layers, config, oci=True, tags=tags)

    pushed: dict[tuple[str, str], Pushed] = {}
    for repo, tag in AGES:
        if (repo, tag) in SAME_IMAGE or tag == "multi-1":
            continue
        same = [t for (r, t), of in SAME_IMAGE.items() if r == repo and of == tag]
        image_pushed = image(repo, (tag, *same))
        for name in (tag, *same):
            pushed[(repo, name)] = image_pushed
    children = [image("team/a/app", arch=arch) for arch in ("amd64", "arm64")]
    pushed[("team/a/app", "multi-1")] = reg.index(
        "team/a/app", [(children[0], "linux/amd64"), (children[1], "linux/arm64")], tags=("multi-1",)
    )
    untagged = image("ci/app")
    signature = reg.artifact(
        "team/a/app",
        pushed[("team/a/app", "v1.10")],
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"signature of v1.10",
        "application/vnd.dev.cosign.simplesigning.v1+json",
    )
    return pushed, untagged, signature, children


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_registry()
    base = tmp_path_factory.mktemp("policy")
    with Registry(base / "root") as reg:
        pushed, untagged, signature, children = push_world(reg)
    yield World(
        base / "root",
        {k: p.digest for k, p in pushed.items()},
        untagged.digest,
        signature.digest,
        [c.digest for c in children],
        base / "copies",
        {k: p.media_type for k, p in pushed.items()},
    )
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def pinned(pin_clock: Callable[[datetime], datetime]) -> None:
    pin_clock(NOW)


# --------------------------------------------------------------------------
# The model: the README's rules, in loops


def glob_regex(glob: str) -> str:
    """A path glob as a regular expression: `**` any path, `*` and `?` within a segment."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(glob[i])
            i += 1
    return out


def repo_matches(repo: str, globs: list[str]) -> bool:
    positive = [g for g in globs if not g.startswith("!")]
    negative = [g[1:] for g in globs if g.startswith("!")]
    return any(re.fullmatch(glob_regex(g), repo) for g in positive) and not any(
        re.fullmatch(glob_regex(g), repo) for g in negative
    )


def tag_selected(tag: str, rule: dict[str, Any]) -> bool:
    tags = rule.get("tags", {})

    def hit(pattern: str) -> bool:
        return re.search(pattern, tag) is not None if tags.get("regex") else fnmatch.fnmatchcase(tag, pattern)

    include = tags.get("include", [])
    return (not include or any(map(hit, include))) and not any(map(hit, tags.get("exclude", [])))


def version_order(tag: str) -> tuple[Any, ...]:
    """What the tests' tags sort by on equal push times: versions by number (none of them ties here)."""
    parts = re.findall(r"\d+", tag)
    return (1, tuple(int(p) for p in parts)) if tag.startswith("v") and parts else (0, tag)


def model(
    rules: list[dict[str, Any]], ages: dict[tuple[str, str], float], digests: dict[tuple[str, str], str]
) -> set[tuple[str, str]]:
    """The tags a policy file deletes, as the README says: a tag stays if any rule that applies to its repository
    keeps it (keep: always, keep_last N among the tags it selects, keep_within), `latest` unless a rule's include
    names it, what is newer than the grace period, and every tag of a manifest a staying tag names."""
    deleted = set()
    for repo in sorted({r for r, _ in ages}):
        applying = [r for r in rules if repo_matches(repo, r["repositories"])]
        if not applying:
            continue
        tags = [t for r, t in ages if r == repo]
        kept: set[str] = set()
        for rule in applying:
            min_age = rule.get("min_age_days", 0)
            names_latest = any("latest" in p for p in rule.get("tags", {}).get("include", []))
            selected = [t for t in tags if tag_selected(t, rule)]
            if "keep_last" not in rule and "keep_within_days" not in rule:
                kept |= set(selected)
                continue
            ranked = [t for t in selected if ages[(repo, t)] > min_age and (t != "latest" or names_latest)]
            ranked.sort(key=lambda t: (-ages[(repo, t)], version_order(t)), reverse=True)
            if "keep_last" in rule:
                kept |= set(ranked[: rule["keep_last"]])
            if "keep_within_days" in rule:
                kept |= {t for t in selected if ages[(repo, t)] <= rule["keep_within_days"]}
            kept |= {t for t in selected if ages[(repo, t)] <= min_age}
        names_latest = any("latest" in p for rule in applying for p in rule.get("tags", {}).get("include", []))
        if not names_latest:
            kept.add("latest")
        kept |= {t for t in tags if ages[(repo, t)] <= max(r.get("min_age_days", 0) for r in applying)}
        deleted |= {(repo, t) for t in tags if t not in kept}
    return safe(deleted, digests)


def safe(deleted: set[tuple[str, str]], digests: dict[tuple[str, str], str]) -> set[tuple[str, str]]:
    """Without the tags whose manifest a staying tag names."""
    staying = {(r, digests[(r, t)]) for (r, t) in digests if (r, t) not in deleted}
    return {(r, t) for (r, t) in deleted if (r, digests[(r, t)]) not in staying}


def yaml_rules(rules: list[dict[str, Any]]) -> str:
    """The policy file of the model's rules (durations in days)."""
    out = []
    for rule in rules:
        item = {k: v for k, v in rule.items() if not k.endswith("_days")}
        if "keep_within_days" in rule:
            item["keep_within"] = f"{rule['keep_within_days']}d"
        item["min_age"] = f"{rule.get('min_age_days', 0)}d"
        out.append(item)
    return json.dumps({"rules": out}, indent=2)  # JSON is YAML


def plan_with(root: Path, policy: str, *extra: str) -> tuple[Path, dict[str, Any]]:
    path = root.parent / f"{root.name}.policy.yaml"
    path.write_text(policy)
    out = root.parent / f"{root.name}.plan.json"
    ran = cli("plan", root, "--policy", path, "-o", out, "-q", *extra)
    assert ran.exit_code == 0, ran.output
    return out, json.loads(out.read_text())


def removed_tags(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return keys(doc, "remove-tag", "repository", "tag")


def explained(root: Path, policy_path: Path, *extra: str) -> list[dict[str, Any]]:
    ran = cli("plan", root, "--policy", policy_path, "--explain", "-f", "json", "-q", *extra)
    assert ran.exit_code == 0, ran.output
    rows: list[dict[str, Any]] = json.loads(ran.stdout)
    return rows


def assert_explain_equals_plan(root: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """--explain's deletions are the plan's: its deleted tags the remove-tag actions, its deleted revisions
    (no tag) the remove-revision actions."""
    rows = explained(root, root.parent / f"{root.name}.policy.yaml")
    deleted = [r for r in rows if r["verdict"] == "deleted"]
    assert {(r["repository"], r["tag"]) for r in deleted if r["tag"]} == removed_tags(doc)
    assert {(r["repository"], r["digest"]) for r in deleted if not r["tag"]} == keys(
        doc, "remove-revision", "repository", "digest"
    )
    assert all(r["reason"] for r in rows)
    return rows


# --------------------------------------------------------------------------
# Each rule kind alone, then combined

CASES: dict[str, list[dict[str, Any]]] = {
    "keep_last": [{"repositories": ["ci/**"], "keep_last": 2}],
    "keep_within": [{"repositories": ["ci/**"], "keep_within_days": 25}],
    "glob include and exclude": [
        {"repositories": ["ci/*"], "tags": {"include": ["build-*", "pr-*"], "exclude": ["build-1"]}, "keep_last": 1}
    ],
    "regex include": [
        {"repositories": ["team/*/app"], "tags": {"include": [r"^v\d+\.\d+$"], "regex": True}, "keep_last": 1},
        {"repositories": ["team/*/app"], "tags": {"include": ["stable"]}, "keep": "always"},
    ],
    "keep always": [{"repositories": ["**"], "keep": "always"}],
    "latest named": [{"repositories": ["other"], "tags": {"include": ["latest", "x"]}, "keep_within_days": 1}],
    "latest not named": [{"repositories": ["other"], "tags": {"include": ["*"]}, "keep_within_days": 1}],
    "grace period": [{"repositories": ["ci/app"], "keep_last": 1, "min_age_days": 3}],
    "default rule": [
        {"repositories": ["ci/**"], "keep_last": 1},
        {"repositories": ["**"], "keep_within_days": 35},
    ],
    "negated default": [
        {"repositories": ["ci/**"], "keep_last": 1},
        {"repositories": ["**", "!ci/**"], "keep": "always"},
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_each_rule_alone_and_combined_as_the_model_says(world: World, case: str) -> None:
    rules = CASES[case]
    root = world.copy(case.replace(" ", "-"))
    _, doc = plan_with(root, yaml_rules(rules))
    expected = model(rules, AGES, world.digests)
    assert removed_tags(doc) == expected, case
    assert_explain_equals_plan(root, doc)


@pytest.mark.slow
def test_repository_globs_keep_to_their_segments(world: World) -> None:
    root = world.copy("segments")
    # team/*/app is team/a/app, not team/a/b/app; ci/* is ci/app, not ci/tools/lint.
    _, doc = plan_with(root, yaml_rules([{"repositories": ["team/*/app", "ci/*"], "keep_last": 0}]))
    repos = {r for r, _ in removed_tags(doc)}
    assert repos == {"team/a/app", "ci/app"}
    _, doc = plan_with(root, yaml_rules([{"repositories": ["team/**"], "keep_last": 0}]))
    assert {r for r, _ in removed_tags(doc)} == {"team/a/app", "team/a/b/app"}


@pytest.mark.slow
def test_untagged_manifests_and_referrers(world: World) -> None:
    root = world.copy("untagged")
    # Every rule applying must delete untagged manifests for one to go.
    _, doc = plan_with(root, yaml_rules([{"repositories": ["ci/**"], "keep": "always", "delete_untagged": True}]))
    assert removed_tags(doc) == set()
    assert keys(doc, "remove-revision", "digest") == {(world.untagged,)}
    _, doc = plan_with(
        root,
        yaml_rules(
            [
                {"repositories": ["ci/**"], "keep": "always", "delete_untagged": True},
                {"repositories": ["**"], "keep": "always"},
            ]
        ),
    )
    assert keys(doc, "remove-revision", "digest") == set()
    # The signature of a kept image stays, unless every rule lets referrers go.
    team = {"repositories": ["team/**"], "keep": "always", "delete_untagged": True}
    _, doc = plan_with(root, yaml_rules([team]))
    assert keys(doc, "remove-revision", "digest") == set()
    _, doc = plan_with(root, yaml_rules([{**team, "keep_referrers": False}]))
    assert keys(doc, "remove-revision", "digest") == {(world.signature,)}
    # v1.10 deleted: its signature goes with it; multi-1 deleted: its platforms go with it.
    gone = {"repositories": ["team/a/app"], "tags": {"include": ["v2.0", "stable"]}, "keep": "always"}
    out, doc = plan_with(root, yaml_rules([gone]))
    assert removed_tags(doc) == {("team/a/app", "v1.10"), ("team/a/app", "multi-1")}
    revisions = {d for (d,) in keys(doc, "remove-revision", "digest")}
    assert {world.signature, *world.children, world.digests[("team/a/app", "v1.10")]} <= revisions
    rows = assert_explain_equals_plan(root, doc)
    why = {(r["tag"] or r["digest"]): r["reason"] for r in rows}
    assert why["v1.9"] == "shares its digest with stable"
    assert why["stable"] == "rule team/a/app keep: always"
    assert why["multi-1"] == "rule team/a/app: its tags do not include it"
    applied_and_pulled(world, root, out, doc)


def applied_and_pulled(world: World, root: Path, out: Path, doc: dict[str, Any]) -> None:
    """Apply; the registry on the result serves exactly the tags not removed, each whole, digests verified."""
    code, _, err = apply_cli(out)
    assert code == 0, err
    kept = set(AGES) - removed_tags(doc)
    with Registry(root) as reg:
        for repo in sorted({r for r, _ in AGES}):
            assert sorted(reg.tags(repo)) == sorted(t for r, t in kept if r == repo), repo
        assert [p for repo, tag in sorted(kept) for p in pull_verified(reg, repo, tag)] == []
        for repo, tag in kept:
            head = reg.request(
                "HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": world.media_types[(repo, tag)]}
            )
            assert head.headers.get("docker-content-digest") == world.digests[(repo, tag)]
    assert cli("check", root, "-q").exit_code == 0


@pytest.mark.slow
def test_a_combined_policy_applied_leaves_every_kept_tag_pullable(world: World) -> None:
    rules = [
        {"repositories": ["ci/**"], "tags": {"include": ["build-*"]}, "keep_last": 2, "delete_untagged": True},
        {"repositories": ["ci/**"], "keep_within_days": 15},
        {"repositories": ["team/*/app"], "tags": {"include": [r"^v\d"], "regex": True}, "keep_last": 1},
        {"repositories": ["other"], "tags": {"include": ["latest"]}, "keep_last": 0},
    ]
    root = world.copy("combined")
    out, doc = plan_with(root, yaml_rules(rules))
    assert removed_tags(doc) == model(rules, AGES, world.digests)
    assert ("other", "latest") in removed_tags(doc) and ("ci/app", "latest") not in removed_tags(doc)
    rows = assert_explain_equals_plan(root, doc)
    why = {(r["repository"], r["tag"]): r["reason"] for r in rows if r["tag"]}
    assert why[("ci/app", "build-5")] == "rule ci/** #1 keep_last 2 (rank 1)"
    assert why[("ci/app", "latest")] == "latest"
    assert why[("ci/tools/lint", "v2")] == "rule ci/** #2 keep_within 15d (pushed 5 days ago)"
    assert why[("ci/app", "pr-7")].startswith("rule ci/** #1: its tags do not include it; rule ci/** #2 pushed 50")
    assert why[("other", "x")] == "rule other: its tags do not include it"
    applied_and_pulled(world, root, out, doc)


# --------------------------------------------------------------------------
# zot's `retention` and GitLab's clean-up policies, as the README maps them


ZOT = {
    "dryRun": False,
    "delay": "24h",
    "policies": [
        {
            "repositories": ["ci/**"],
            "deleteReferrers": False,
            "deleteUntagged": True,
            "keepTags": [
                {"patterns": ["build-.*"], "mostRecentlyPushedCount": 2},
                {"patterns": ["pr-.*", "v.*"], "pushedWithin": f"{24 * 15}h"},
            ],
        },
        {"repositories": ["team/**"], "keepTags": [{"patterns": ["v2.*", "stable"]}]},
        {"repositories": ["**"], "keepTags": [{"patterns": [".*"]}]},
    ],
}
ZOT_POLICY = """\
rules:
  - repositories: ["ci/**"]
    tags: {include: ["build-.*"], regex: true}
    keep_last: 2
    delete_untagged: true
  - repositories: ["ci/**"]
    tags: {include: ["pr-.*", "v.*"], regex: true}
    keep_within: 15d
    delete_untagged: true
  - repositories: ["team/**"]
    tags: {include: ["v2.*", "stable"], regex: true}
    keep: always
  - repositories: ["**", "!ci/**", "!team/**"]
    tags: {include: [".*"], regex: true}
    keep: always
"""


def zot_deleted(config: dict[str, Any], ages: dict[tuple[str, str], float]) -> set[tuple[str, str]]:
    """zot's rules (pkg/retention): the first policy whose repositories match applies; a tag belongs to the first
    of its keepTags whose patterns match it, and stays when one of that entry's rules keeps it (the N most
    recently pushed of the tags that belong to it, those pushed within a time; no rule: all of them)."""
    deleted = set()
    for repo in sorted({r for r, _ in ages}):
        policy = next((p for p in config["policies"] if repo_matches(repo, p["repositories"])), None)
        tags = [t for r, t in ages if r == repo]
        if policy is None or not policy.get("keepTags"):
            continue
        retained: set[str] = set()
        for i, keep in enumerate(policy["keepTags"]):
            earlier = [p for k in policy["keepTags"][:i] for p in k["patterns"]]
            group = [
                t
                for t in tags
                if any(re.search(p, t) for p in keep["patterns"]) and not any(re.search(p, t) for p in earlier)
            ]
            if "mostRecentlyPushedCount" not in keep and "pushedWithin" not in keep:
                retained |= set(group)
            if "mostRecentlyPushedCount" in keep:
                newest = sorted(group, key=lambda t: ages[(repo, t)])
                retained |= set(newest[: keep["mostRecentlyPushedCount"]])
            if "pushedWithin" in keep:
                hours = int(keep["pushedWithin"].removesuffix("h"))
                retained |= {t for t in group if ages[(repo, t)] * 24 <= hours}
        deleted |= {(repo, t) for t in tags if t not in retained}
    return deleted


GITLAB = {"enabled": True, "cadence": "1d", "keep_n": 2, "older_than": "14d", "name_regex": "build-.*|pr-.*",
          "name_regex_keep": "build-1"}  # fmt: skip
GITLAB_POLICY = """\
rules:
  - repositories: ["ci/**"]
    tags: {include: ['^(?:build-.*|pr-.*)$'], exclude: ['^(?:build-1)$'], regex: true}
    keep_last: 2
    keep_within: 14d
  - repositories: ["ci/**"]
    tags: {exclude: ['^(?:build-.*|pr-.*)$'], regex: true}
    keep: always
  - repositories: ["ci/**"]
    tags: {include: ['^(?:build-1)$'], regex: true}
    keep: always
"""


def gitlab_deleted(policy: dict[str, Any], ages: dict[tuple[str, str], float]) -> set[tuple[str, str]]:
    """GitLab's clean-up: of each repository's tags but `latest`, those whose whole name matches name_regex and
    not name_regex_keep, newest first, less the first keep_n, less those newer than older_than, are deleted."""
    days = int(policy["older_than"].removesuffix("d"))
    deleted = set()
    for repo in sorted({r for r, _ in ages}):
        tags = [t for r, t in ages if r == repo and t != "latest"]
        candidates = [
            t for t in tags if re.fullmatch(policy["name_regex"], t) and not re.fullmatch(policy["name_regex_keep"], t)
        ]
        candidates.sort(key=lambda t: ages[(repo, t)])
        deleted |= {(repo, t) for t in candidates[policy["keep_n"] :] if ages[(repo, t)] > days}
    return deleted


@pytest.mark.slow
def test_zot_retention_written_as_the_readme_says(world: World) -> None:
    root = world.copy("zot")
    _, doc = plan_with(root, ZOT_POLICY + "min_age: 0s\n")
    # No tag here is named `latest` where zot would delete it: `other` keeps all its tags by the default policy.
    assert removed_tags(doc) == safe(zot_deleted(ZOT, AGES), world.digests)
    assert removed_tags(doc) == {
        ("ci/app", "build-1"),
        ("ci/app", "build-2"),
        ("ci/app", "build-3"),
        ("ci/app", "pr-7"),
        ("ci/tools/lint", "v1"),
        ("team/a/app", "v1.10"),
        ("team/a/app", "multi-1"),
        ("team/a/b/app", "old"),
    }
    assert keys(doc, "remove-revision", "digest") >= {(world.untagged,)}
    assert_explain_equals_plan(root, doc)


@pytest.mark.slow
def test_gitlab_cleanup_policy_written_as_the_readme_says(world: World) -> None:
    root = world.copy("gitlab")
    _, doc = plan_with(root, GITLAB_POLICY + "min_age: 0s\n")
    only_ci = {k: v for k, v in AGES.items() if k[0].startswith("ci/")}
    assert removed_tags(doc) == safe(gitlab_deleted(GITLAB, only_ci), world.digests)
    assert removed_tags(doc) == {("ci/app", "build-2"), ("ci/app", "build-3"), ("ci/app", "pr-7")}
    assert_explain_equals_plan(root, doc)


# --------------------------------------------------------------------------
# --explain


@pytest.mark.slow
def test_explain_equals_the_plan_and_builds_one_graph(world: World) -> None:
    root = world.copy("explain")
    policy = yaml_rules([{"repositories": ["**"], "keep_last": 1, "delete_untagged": True}])
    _, doc = plan_with(root, policy)
    before = Graph.builds
    rows = assert_explain_equals_plan(root, doc)
    assert Graph.builds - before == 1
    by_key = {(r["repository"], r["tag"] or r["digest"]): r for r in rows}
    # A deleted tag frees its exclusive bytes (as report --by tag says), a kept one nothing.
    report = json.loads(cli("report", root, "--by", "tag", "-f", "json", "-q").stdout)
    exclusive = {(r["repository"], r["tag"]): r["exclusive_bytes"] for r in report}
    for (repo, tag), row in by_key.items():
        if row["tag"]:
            assert row["frees_bytes"] == (exclusive[(repo, tag)] if row["verdict"] == "deleted" else 0)
    # The children of a kept index and the referrers of a kept image say so.
    kept_children = [r for r in rows if not r["tag"] and r["verdict"] == "kept"]
    assert all(r["reason"].startswith(("child of", "referrer of")) for r in kept_children), kept_children
    csv = cli("plan", root, "--policy", root.parent / "explain.policy.yaml", "--explain", "-f", "csv", "-q")
    assert csv.exit_code == 0 and csv.stdout.splitlines()[0] == "repository,tag,digest,verdict,reason,frees_bytes"
    assert len(csv.stdout.splitlines()) == len(rows) + 1


def after_demo(pin_clock: Callable[[datetime], datetime]) -> None:
    """The clock a minute after the demo tree's newest file (its files are as new as the checkout)."""
    newest = max(p.lstat().st_mtime for p in DEMO.rglob("*"))
    pin_clock(datetime.fromtimestamp(newest, UTC) + timedelta(minutes=1))


@pytest.mark.slow
def test_explain_with_the_one_run_options_on_the_demo(pin_clock: Callable[[datetime], datetime]) -> None:
    after_demo(pin_clock)
    ran = cli("plan", DEMO, "--keep-last", "1", "--min-age", "0s", "--explain", "-f", "json", "-q")
    assert ran.exit_code == 0, ran.output
    rows = json.loads(ran.stdout)
    plan = json.loads(cli("plan", DEMO, "--keep-last", "1", "--min-age", "0s", "-q").stdout)
    assert {(r["repository"], r["tag"]) for r in rows if r["verdict"] == "deleted" and r["tag"]} == removed_tags(plan)
    assert {r["reason"] for r in rows if r["tag"] == "latest"} == {"latest"}
    assert any(r["reason"] == "--keep-last 1 (rank 1)" for r in rows)


@pytest.mark.slow
def test_report_html_has_the_retention_section_of_explain(
    tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    after_demo(pin_clock)
    page = tmp_path / "report.html"
    ran = cli("report", DEMO, "-f", "html", "-o", page, "--policy", EXAMPLE, "-q")
    assert ran.exit_code == 0, ran.output
    text = page.read_text()
    section = text[text.index('<section id="section-retention">') :]
    section = section[: section.index("</section>")]
    rows = explained(DEMO, EXAMPLE)
    assert f'data-total="{len(rows)}"' in section
    for row in rows:
        assert f'data-value="{row["reason"]}"' in section
    assert "--policy" in section and "--explain" in section
    refused = cli("report", DEMO, "--policy", EXAMPLE)
    assert refused.exit_code == 2 and "--format html" in refused.stderr


# --------------------------------------------------------------------------
# Validation and refusals


BAD = """\
rules:
  - repositories: ["ci/**", "a**"]
    tags: {include: ["(x"], regex: true, colour: red}
    keep_last: ten
    keep_within: 14 days
    delete_untagged: maybe
  - repos: ["x"]
  - repositories: ["**"]
    keep: always
    keep_last: 3
    min_age: 1y
extra: 1
"""


def test_every_mistake_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    ran = cli("plan", DEMO, "--policy", path)
    assert ran.exit_code == 2
    assert "Traceback" not in ran.output
    lines = [line for line in ran.stderr.splitlines() if line.startswith(f"{path}:")]
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == [2, 3, 3, 4, 5, 6, 7, 7, 9, 11, 12], ran.stderr
    for word in ("a**", "'(x'", "colour", "ten", "14 days", "maybe", "repos", "keep: always", "1y", "extra"):
        assert word in ran.stderr, word
    assert "11 mistakes" in ran.stderr


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("rules: [", 1, "not YAML"),
        ("rules:\n  - repositories: x\n    keep_last: true\n", 3, "whole number"),
        ("rules:\n  - repositories: ['!ci/**']\n", 2, "only !"),
        ("rules:\n  - repositories: ['ci/[a']\n", 2, "unclosed"),
        ("rules:\n  - keep_last: 1\n", 2, "names no repositories"),
        ("rules: []\n", 1, "one rule or more"),
        ("", 1, "empty"),
        ("rules:\n  - repositories: [x]\n    tags: {include: ['a['], regex: false}\n", 3, "not a glob"),
        ("rules:\n  - repositories: [x]\n    keep_within: 5\n", 3, "duration"),
    ],
)
def test_a_mistake_and_its_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    ran = cli("plan", DEMO, "--policy", path)
    assert ran.exit_code == 2 and f"{path}:{line}: " in ran.stderr and words in ran.stderr, ran.stderr


def test_policy_refuses_the_one_run_rules_and_takes_the_rest(tmp_path: Path) -> None:
    ran = cli("plan", DEMO, "--policy", EXAMPLE, "--keep-last", "3", "--older-than", "1d")
    assert ran.exit_code == 2 and "--keep-last, --older-than cannot be added" in ran.stderr
    for extra in (["--min-age", "0s"], ["--only-tag", "x"], ["--no-keep-latest"], ["--repository", "a"]):
        assert cli("plan", DEMO, "--policy", EXAMPLE, *extra).exit_code == 2, extra
    ran = cli("plan", DEMO, "--policy", EXAMPLE, "--uploads-older-than", "0s", "--prune-empty-repositories", "-q")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["policy"]["policy_file"] == str(EXAMPLE)
    missing = cli("plan", DEMO, "--policy", tmp_path / "none.yaml")
    assert missing.exit_code == 2 and "--policy" in missing.stderr
    assert cli("plan", DEMO, "--explain", "-f", "sh").exit_code == 2
    assert cli("plan", DEMO, "-f", "csv").exit_code == 2


def test_path_globs() -> None:
    from storage_audit.cleanup.plan import path_glob_matches

    assert path_glob_matches("ci/a/b", ["ci/**"])
    assert not path_glob_matches("ci/a/b", ["ci/*"])
    assert path_glob_matches("team/x/app", ["team/*/app"])
    assert not path_glob_matches("team/x/y/app", ["team/*/app"])
    assert path_glob_matches("team/x/y/app", ["team/**/app"])
    assert path_glob_matches("other", ["**", "!ci/**"]) and not path_glob_matches("ci/a", ["**", "!ci/**"])


# --------------------------------------------------------------------------
# In object storage


@pytest.mark.slow
def test_a_policy_on_a_bucket(
    s3_server: SeaweedS3, s3_root: str, tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    """Pushed into the bucket by the registry's s3 driver, one push after another (their times a second apart
    at most, so ranks fall to versions); the plan, --explain, apply and pulls as on disk."""
    require_registry()
    rng = random.Random("storage-audit-policy-s3")
    pushed: dict[tuple[str, str], Pushed] = {}
    with s3_registry(s3_server, s3_root) as reg:
        for repo, tag in [("ci/app", t) for t in ("v1", "v2", "v3")] + [("team/a/app", "v1"), ("other", "x")]:
            layers = [rng.randbytes(80)]
            config = {"architecture": "amd64", "os": "linux"}
            pushed[(repo, tag)] = reg.image(repo, layers, config, oci=True, tags=(tag,))
        untagged = reg.image("ci/app", [rng.randbytes(80)], {"architecture": "arm64", "os": "linux"}, oci=True)
    bucket = RegistryInBucket(s3_server, s3_root)
    pin_clock(max(e["LastModified"] for e in raw_keys(s3_server, bucket.prefix).values()) + timedelta(seconds=1))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent(
            """\
            min_age: 0s
            rules:
              - repositories: ["ci/*"]
                keep_last: 1
                delete_untagged: true
              - repositories: ["team/**"]
                tags: {include: ["nothing"]}
                keep: always
            """
        )
    )
    env = s3_server.environment()
    out = tmp_path / "plan.json"
    ran = cli("plan", bucket.url, "--policy", policy, "--no-cache", "-o", out, "-q", env=env)
    assert ran.exit_code == 0, ran.output
    doc = json.loads(out.read_text())
    assert removed_tags(doc) == {("ci/app", "v1"), ("ci/app", "v2"), ("team/a/app", "v1")}
    assert (untagged.digest,) in keys(doc, "remove-revision", "digest")
    ran = cli("plan", bucket.url, "--policy", policy, "--no-cache", "--explain", "-f", "json", "-q", env=env)
    assert ran.exit_code == 0, ran.output
    rows = json.loads(ran.stdout)
    deleted = [r for r in rows if r["verdict"] == "deleted"]
    assert {(r["repository"], r["tag"]) for r in deleted if r["tag"]} == removed_tags(doc)
    assert {(r["repository"], r["digest"]) for r in deleted if not r["tag"]} == keys(
        doc, "remove-revision", "repository", "digest"
    )
    ran = cli("apply", out, "-y", "--no-cache", env=env)
    assert ran.exit_code == 0, ran.output
    tag_keys = {k.removeprefix(bucket.prefix) for k in raw_keys(s3_server, bucket.prefix) if "/_manifests/tags/" in k}
    assert {
        k.split("/_manifests/tags/")[0] + ":" + k.split("/")[-3] for k in tag_keys if k.endswith("current/link")
    } == {
        "repositories/ci/app:v3",
        "repositories/other:x",
    }
    # (SeaweedFS keeps the emptied tag folders, which the registry's s3 driver lists: ask for the tags themselves.)
    with s3_registry(s3_server, s3_root) as reg:
        assert not any(reg.manifest_exists(r, t) for r, t in (("ci/app", "v1"), ("ci/app", "v2"), ("team/a/app", "v1")))
        assert pull_verified(reg, "ci/app", "v3") == [] and pull_verified(reg, "other", "x") == []
        assert not reg.manifest_exists("ci/app", pushed[("ci/app", "v1")].digest)


# --------------------------------------------------------------------------
# The README


@pytest.mark.slow
def test_the_readme_shows_the_example_policy_and_its_explanation(pin_clock: Callable[[datetime], datetime]) -> None:
    readme = (TOP / "README.md").read_text()
    section = readme[readme.index("## Retention policies in a file") :]
    assert "```yaml\n" + EXAMPLE.read_text() + "```" in section
    pasted = section[section.index("```text\n") :]
    pasted = pasted[: pasted.index("\n```\n")]
    shown = []
    for line in pasted.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 6 and cells[3] in ("kept", "deleted"):
            shown.append((cells[0], cells[1], cells[2], cells[3], cells[4]))
    after_demo(pin_clock)
    rows = explained(DEMO, EXAMPLE)
    assert shown == [(r["repository"], r["tag"], r["digest"][:19], r["verdict"], r["reason"]) for r in rows]
