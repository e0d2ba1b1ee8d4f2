"""Deletion plans and their apply: the plan document, every policy rule, the formats, and a safe, resumable apply.

The first part works on the shipped fixtures (fast); the second pushes
registries through the reference registry's HTTP API, applies plans to them,
and pulls what must remain from a registry restarted on the result.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from packaging.version import InvalidVersion, Version

from storage_audit import __version__
from storage_audit.analysis.check import check as check_storage
from storage_audit.analysis.reach import HOLDING_REFS, ReachOptions, present_revisions, reach
from storage_audit.cleanup.apply import apply_plan, journal_path, read_plan
from storage_audit.cleanup.plan import OPS, Action, Plan
from storage_audit.cleanup.removers import plan_storage, remover_for
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import BROKEN, FIXTURES, cli, fixtures_built, unpack
from tests.registry_harness import (
    COSIGN_SIGNATURE,
    COSIGN_SIMPLESIGNING,
    MANIFEST_ACCEPT,
    SPDX_SBOM,
    Client,
    Ledger,
    Pushed,
    Registry,
    canonical_json,
    garbage_collect,
    parse_gc_output,
    require_registry,
    sha256,
)

V2 = Path("docker/registry/v2")
DAY = 86400
NOW = fixtures_built() + timedelta(minutes=1)
"""When plans of the fixture trees are made (the clock is pinned there): the trees' times are set relative to it.

It is just after the fixtures were built, so before any run of the tests: a file a test changes after
planning has a newer mtime than the plan, as one changed by a client would."""
ACTION_FIELDS = {"op", "path", "repository", "tag", "digest", "bytes", "reason", "precondition"}
"""The fields of an action; a plan made --gc-compatible adds `refused` where apply refuses one."""


# --------------------------------------------------------------------------
# Looking at trees


def files(v2: Path) -> dict[str, tuple[int, int]]:
    """Every file (and symlink) under `v2`: relative path -> (size, mtime_ns), never following links."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(v2):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, v2)] = (st.st_size, st.st_mtime_ns)
    return out


def contents(v2: Path) -> dict[str, bytes]:
    return {rel: (v2 / rel).read_bytes() for rel in files(v2)}


def directories(v2: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), v2) for d, names, _ in os.walk(v2) for n in names}


def ns_before_now(seconds: float) -> int:
    """NOW less `seconds`, in nanoseconds since the epoch."""
    return int((NOW.timestamp() - seconds) * 1e9)


def age_tree(root: Path, seconds: float) -> None:
    """Set every mtime under `root` to `seconds` before NOW, as if the whole registry had been pushed then."""
    when = ns_before_now(seconds)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(when, when), follow_symlinks=False)


def set_age(path: Path, seconds: float) -> None:
    when = ns_before_now(seconds)
    os.utime(path, ns=(when, when))


def copy_tree(src: Path, dest: Path) -> Path:
    """A copy with the same mtimes (plans record them as preconditions)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def tag_link(v2: Path, repo: str, tag: str) -> Path:
    return v2 / "repositories" / repo / "_manifests" / "tags" / tag / "current" / "link"


# --------------------------------------------------------------------------
# Running the command line


def make_plan(root: Path, *policy: str, out: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`storage-audit plan ROOT POLICY... -o OUT`; returns the plan file and its document."""
    out = out or root.parent / f"{root.name}.plan.json"
    code, stdout, stderr = cli("plan", root, *policy, "-o", out, "-q")
    assert code == 0, stderr
    assert stdout == ""
    return out, json.loads(out.read_text())


def write_plan(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def retarget(doc: dict[str, Any], root: Path, path: Path) -> Path:
    """The same plan for an identical copy of the tree at `root`."""
    return write_plan({**doc, "root": str((root / V2).resolve())}, path)


def apply_cli(plan: Path, *extra: str | Path) -> tuple[int, str, str]:
    return cli("apply", plan, "--yes", *extra)


def actions(doc: dict[str, Any], op: str | None = None) -> list[dict[str, Any]]:
    return [a for a in doc["actions"] if op is None or a["op"] == op]


def keys(doc: dict[str, Any], op: str, *fields: str) -> set[tuple[Any, ...]]:
    return {tuple(a[f] for f in fields) for a in actions(doc, op)}


def digests(doc: dict[str, Any], op: str) -> set[str]:
    return {a["digest"] for a in actions(doc, op)}


# --------------------------------------------------------------------------
# Invariants


def broken_invariants(v2: Path) -> list[str]:
    """What an apply must never leave: a tag without its manifest, a manifest without its blobs, check errors."""
    inv = scan(LocalStorage(v2))
    present = present_revisions(inv)
    live = set(zip(present["repository"], present["digest"], strict=True))
    problems = [
        f"tag {r}:{t} names {d}, which is no present revision"
        for r, t, d in zip(inv.tags["repository"], inv.tags["tag"], inv.tags["digest"], strict=True)
        if (r, d) not in live
    ]
    stored = set(inv.blobs["digest"])
    refs = inv.references[inv.references["ref_type"].isin(HOLDING_REFS)]
    needed = present.merge(refs.rename(columns={"manifest": "target"}), on="target")
    problems += [
        f"{r}@{m} needs blob {b}, which is gone"
        for r, m, b in zip(needed["repository"], needed["digest_x"], needed["digest_y"], strict=True)
        if b not in stored
    ]
    found = check_storage(inv)
    problems += [
        f"check: {k} at {p}" for k, p in found[found["severity"] == "error"][["kind", "path"]].itertuples(index=False)
    ]
    return problems


# --------------------------------------------------------------------------
# Fixture trees, aged so that the default grace period does not hide anything


@pytest.fixture
def aged(tmp_path: Path, pin_clock: Callable[[datetime], datetime]) -> Callable[..., Path]:
    """Unpack a fixture registry with every mtime 30 days before NOW, the time of the clock; returns its root."""
    pin_clock(NOW)

    def make(name: str, where: str = "") -> Path:
        root = unpack(FIXTURES / f"{name}.tar.gz", tmp_path / (where or name))
        age_tree(root, 30 * DAY)
        return root

    return make


# The broadest policy: every op but remove-repository occurs in `basic` with it (nothing there is left empty).
BROAD: tuple[str, ...] = ("--keep-last", "1", "--delete-untagged", "--uploads-older-than", "0s")
BROAD += ("--prune-empty-repositories", "--min-age", "0s")


@pytest.fixture(scope="module")
def broad_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The aged `basic` tree and its BROAD plan, planned once for the module."""
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path_factory.mktemp("broad") / "basic")
    age_tree(root, 30 * DAY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_AUDIT_NOW", NOW.isoformat())
        return root, make_plan(root, *BROAD)[1]


@pytest.fixture
def planned(broad_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """A copy of the aged `basic` tree of its own, and the BROAD plan for it: (root, plan file, plan document)."""
    template, doc = broad_template
    root = copy_tree(template, tmp_path / "basic")
    plan = retarget(json.loads(json.dumps(doc)), root, tmp_path / "basic.plan.json")
    return root, plan, json.loads(plan.read_text())


def test_plan_document_fields_totals_and_order(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    _, doc = make_plan(root, *BROAD)
    assert doc["format"] == "storage-audit-plan"
    assert doc["version"] == 1
    assert doc["tool_version"] == __version__
    created = datetime.fromisoformat(doc["created_at"])
    assert created == NOW and created.utcoffset() == timedelta(0)
    assert doc["root"] == str((root / V2).resolve())
    assert doc["policy"] == {
        "delete_untagged": True,
        "keep_last": 1,
        "keep_tags": [],
        "only_tags": [],
        "older_than": None,
        "repositories": [],
        "uploads_older_than": 0.0,
        "prune_empty_repositories": True,
        "min_age": 0.0,
        "keep_latest": True,
        "age_from": "push",
        "collector": None,
        "keep_referrers": True,
    }
    acts = doc["actions"]
    assert {a["op"] for a in acts} >= set(OPS) - {"remove-repository"}
    for a in acts:
        assert set(a) == ACTION_FIELDS
        assert a["reason"] and isinstance(a["precondition"], dict) and a["precondition"]
        Action.from_json(a, 0).spec()  # the path is of the kind its op allows, and names what its fields say
    order = [OPS.index(a["op"]) for a in acts]
    assert order == sorted(order)
    # Read and written again, a plan is the same document: its typed preconditions hold exactly what it says.
    assert json.dumps(Plan.from_json(doc).to_json(), indent=2) == json.dumps(doc, indent=2)
    # Within an op, a stable order: the plan is reviewed and diffed by people.
    for op in OPS:
        paths = [a["path"] for a in actions(doc, op)]
        assert len(paths) == len(set(paths))
    totals = doc["totals"]
    assert totals["count"] == len(acts)
    assert totals["bytes"] == sum(a["bytes"] for a in acts)
    for op in {a["op"] for a in acts}:
        mine = actions(doc, op)
        assert totals["by_op"][op] == {"count": len(mine), "bytes": sum(a["bytes"] for a in mine)}
    for repo, total in totals["by_repository"].items():
        mine = [a for a in acts if (a["repository"] or "(blob store)") == repo]
        assert total == {"count": len(mine), "bytes": sum(a["bytes"] for a in mine)}
    assert sum(t["count"] for t in totals["by_repository"].values()) == len(acts)
    blob_bytes = {a["digest"]: a["bytes"] for a in actions(doc, "remove-blob")}
    sizes = dict(zip(*[scan(LocalStorage(root / V2)).blobs[c] for c in ("digest", "size")], strict=True))
    assert blob_bytes == {d: sizes[d] for d in blob_bytes}


def test_default_grace_period_plans_nothing_in_a_fresh_tree(
    tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    pin_clock(NOW)
    root = unpack(FIXTURES / "basic.tar.gz", tmp_path / "fresh")
    # Pushed a second ago; an upload's start time is in its `startedat` file, not in an mtime.
    for started in root.glob("docker/registry/v2/repositories/**/_uploads/*/startedat"):
        started.write_text((NOW - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    age_tree(root, 1)
    everything = ("--delete-untagged", "--keep-last", "0", "--uploads-older-than", "0s", "--prune-empty-repositories")
    _, doc = make_plan(root, *everything)
    assert doc["actions"] == []
    assert doc["totals"]["count"] == 0 and doc["totals"]["bytes"] == 0
    _, doc = make_plan(root, *everything, "--min-age", "0s")
    assert {a["op"] for a in doc["actions"]} >= {"remove-tag", "remove-revision", "remove-blob", "remove-upload"}


def test_keep_last_ranks_tags_by_push_time(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    for tag, days in (("1.0", 10), ("1.1", 9), ("1.2", 8), ("latest", 7)):
        set_age(tag_link(v2, "team/app", tag), days * DAY)
    inv = scan(LocalStorage(v2))
    tagged = dict(zip(zip(inv.tags["repository"], inv.tags["tag"], strict=True), inv.tags["digest"], strict=True))
    _, doc = make_plan(root, "--keep-last", "1", "--min-age", "0s")
    # `latest` is kept aside, so the last one is 1.2; tools/multi's two tags tie on push time: v2 is the higher.
    assert keys(doc, "remove-tag", "repository", "tag") == {
        ("team/app", "1.0"),
        ("team/app", "1.1"),
        ("tools/multi", "v1"),
    }
    assert all(
        a["precondition"] == {"current": tagged[(a["repository"], a["tag"])]} for a in actions(doc, "remove-tag")
    )
    gone = {tagged[("team/app", "1.0")], tagged[("team/app", "1.1")]}
    assert keys(doc, "remove-revision", "repository", "digest") >= {("team/app", d) for d in gone}
    # `latest` stays, but its history entries of removed manifests go.
    assert keys(doc, "remove-tag-history", "repository", "tag", "digest") == {("team/app", "latest", d) for d in gone}
    # Without --delete-untagged, manifests that were untagged before are left alone.
    _, doc = make_plan(root, "--keep-last", "2", "--min-age", "0s")
    assert keys(doc, "remove-tag", "repository", "tag") == {("team/app", "1.0")}
    assert keys(doc, "remove-revision", "repository", "digest") == {("team/app", tagged[("team/app", "1.0")])}

    _, doc = make_plan(root, "--keep-last", "1", "--keep-tag", r"^1\.0$", "--min-age", "0s")
    assert keys(doc, "remove-tag", "repository", "tag") == {("team/app", "1.1"), ("tools/multi", "v1")}
    _, doc = make_plan(root, "--keep-last", "0", "--only-tag", r"^1\.", "--min-age", "0s")
    # 1.2 names `latest`'s manifest: it stays with it.
    assert keys(doc, "remove-tag", "repository", "tag") == {("team/app", t) for t in ("1.0", "1.1")}
    assert keys(doc, "remove-revision", "digest") == {(d,) for d in gone}


@pytest.mark.slow
def test_older_than_and_repository_glob(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    for tag, days in (("1.0", 10), ("1.1", 9), ("1.2", 8), ("latest", 7)):
        set_age(tag_link(v2, "team/app", tag), days * DAY)
    _, doc = make_plan(root, "--older-than", "200h", "--repository", "team/app", "--min-age", "0s")
    assert keys(doc, "remove-tag", "repository", "tag") == {("team/app", "1.0"), ("team/app", "1.1")}
    assert all("before --older-than 200h" in a["reason"] for a in actions(doc, "remove-tag"))
    scoped = [a for a in doc["actions"] if a["op"] not in ("remove-layer-link", "remove-blob")]
    assert {a["repository"] for a in scoped} == {"team/app"}  # not team/app/server, nested in it

    # A manifest pushed after the cut-off survives --older-than even when nothing tags it any more.
    tagged = scan(LocalStorage(v2)).tags.set_index(["repository", "tag"])["digest"]
    revision = v2 / "repositories/team/app/_manifests/revisions" / tagged[("team/app", "1.1")].replace(":", "/")
    set_age(revision / "link", DAY)
    _, doc = make_plan(root, "--older-than", "200h", "--repository", "team/app", "--min-age", "0s")
    assert keys(doc, "remove-revision", "digest") == {(tagged[("team/app", "1.0")],)}

    _, doc = make_plan(root, "--delete-untagged", "--repository", "tools/*", "--min-age", "0s")
    assert not actions(doc, "remove-revision")  # tools/multi has no untagged manifest
    _, doc = make_plan(root, "--delete-untagged", "--repository", "team/*", "--min-age", "0s")
    assert {a["repository"] for a in actions(doc, "remove-revision")} == {"team/app/server"}


def test_uploads_older_than(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    _, doc = make_plan(root, "--uploads-older-than", "0s", "--min-age", "0s")
    (upload,) = actions(doc, "remove-upload")
    assert upload["repository"] == "team/app/server" and upload["bytes"] == 77
    assert upload["precondition"]["started_at"]
    _, doc = make_plan(root, "--uploads-older-than", "3650d", "--min-age", "0s")
    assert not actions(doc, "remove-upload")
    # Without `startedat` the registry never purges an upload: it is stale whatever its age.
    (root / V2 / upload["path"] / "startedat").unlink()
    _, doc = make_plan(root, "--uploads-older-than", "3650d", "--min-age", "0s")
    (upload,) = actions(doc, "remove-upload")
    assert upload["precondition"]["started_at"] is None
    _, doc = make_plan(root, "--uploads-older-than", "3650d", "--repository", "tools/*", "--min-age", "0s")
    assert not actions(doc, "remove-upload")


def test_prune_empty_repositories(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    policy = ("--delete-untagged", "--keep-last", "0", "--uploads-older-than", "0s", "--min-age", "0s")
    plan, doc = make_plan(root, *policy, "--repository", "team/app/server", "--prune-empty-repositories")
    (last,) = actions(doc, "remove-repository")
    assert doc["actions"][-1] == last and last["repository"] == "team/app/server"
    without = make_plan(root, *policy, "--repository", "team/app/server", out=root.parent / "without.json")[1]
    assert not actions(without, "remove-repository")
    before = files(v2)
    assert apply_cli(plan)[0] == 0
    assert not (v2 / "repositories/team/app/server").exists()
    # The repository holding it keeps everything of its own.
    own = {p for p in before if p.startswith("repositories/team/app/_")}
    removed = {p for p in own if any(p.startswith(a["path"]) for a in doc["actions"])}
    assert removed and own - removed <= set(files(v2))


def test_apply_when_no_tag_is_left(aged: Callable[..., Path]) -> None:
    """The re-checks before removing manifests and blobs look at a tree whose last tag this apply removed."""
    root = aged("referrers")
    v2 = root / V2
    policy = ("--delete-untagged", "--keep-last", "0", "--min-age", "0s")
    plan, doc = make_plan(root, *policy, "--prune-empty-repositories")
    assert keys(doc, "remove-repository", "repository") == {("signed/app",)}
    assert apply_cli(plan)[0] == 0
    # Parents that were only the path to it go too; the repositories directory stays.
    assert (v2 / "repositories").is_dir() and not (v2 / "repositories/signed").exists()
    assert files(v2) == {}  # every blob was the repository's only


def test_grace_period_protects_recent_manifests_blobs_and_tags(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    untagged = "sha256:ede8c6442cf3af5adfc9813652ec30a9e17db9612f03650e69a2359602eab586"
    revision = v2 / "repositories/team/app/server/_manifests/revisions" / untagged.replace(":", "/") / "link"
    fresh_blob = b"pushed 90 seconds ago, its manifest is on its way"
    data = v2 / "blobs/sha256" / sha256(fresh_blob)[7:9] / sha256(fresh_blob)[7:] / "data"
    data.parent.mkdir(parents=True)
    data.write_bytes(fresh_blob)
    set_age(revision, 90)
    set_age(data, 90)
    set_age(tag_link(v2, "tools/multi", "v1"), 90)
    _, doc = make_plan(root, "--delete-untagged", "--keep-last", "0")
    assert untagged not in digests(doc, "remove-revision")
    assert untagged not in digests(doc, "remove-blob")  # held by a manifest that is kept
    assert sha256(fresh_blob) not in digests(doc, "remove-blob")
    assert ("tools/multi", "v1") not in keys(doc, "remove-tag", "repository", "tag")
    assert ("tools/multi", "v2") in keys(doc, "remove-tag", "repository", "tag")
    _, doc = make_plan(root, "--delete-untagged", "--keep-last", "0", "--min-age", "1m")
    assert untagged in digests(doc, "remove-revision")
    assert sha256(fresh_blob) in digests(doc, "remove-blob")


def test_prune_empty_repositories_respects_the_grace_period(aged: Callable[..., Path]) -> None:
    """A push in progress: blobs uploaded (their `_layers` links written), the manifest not yet put."""
    root = aged("basic")
    v2 = root / V2
    layer = b"a layer uploaded seconds ago"
    digest = sha256(layer)
    data = v2 / "blobs/sha256" / digest[7:9] / digest[7:] / "data"
    data.parent.mkdir(parents=True)
    data.write_bytes(layer)
    link = v2 / "repositories/incoming/app/_layers/sha256" / digest[7:] / "link"
    link.parent.mkdir(parents=True)
    link.write_text(digest)
    (v2 / "repositories/incoming/app/_uploads").mkdir()
    for path in (data, link):
        set_age(path, 5)
    plan, doc = make_plan(root, "--prune-empty-repositories")
    assert not [a for a in doc["actions"] if a["repository"] == "incoming/app"], doc["actions"]
    assert apply_cli(plan)[0] == 0
    # The manifest PUT that follows needs this link, or it fails with BLOB_UNKNOWN.
    assert link.read_text() == digest


@pytest.mark.parametrize("name", ["basic", "multiarch", "referrers", "churn"])
def test_plan_blobs_are_the_engines_orphans_after_the_policy(aged: Callable[..., Path], name: str) -> None:
    root = aged(name)
    inv = scan(LocalStorage(root / V2))
    _, doc = make_plan(root, "--delete-untagged", "--min-age", "0s")
    assert not actions(doc, "remove-tag")
    orphans = set(reach(inv, ReachOptions(delete_untagged=True)).orphans["digest"])
    assert digests(doc, "remove-blob") == orphans
    dropped = reach(inv, ReachOptions(delete_untagged=True)).dropped_revisions
    assert keys(doc, "remove-revision", "repository", "digest") == set(
        zip(dropped["repository"], dropped["digest"], strict=True)
    )

    # Tag rules: the engine, run on the inventory without the removed tags and manifests, agrees.
    _, doc = make_plan(root, "--keep-last", "0", "--keep-tag", "^(latest|v1)$", "--min-age", "0s")
    gone_tags = keys(doc, "remove-tag", "repository", "tag")
    gone_revisions = keys(doc, "remove-revision", "repository", "digest")
    tags = inv.tags[[k not in gone_tags for k in zip(inv.tags["repository"], inv.tags["tag"], strict=True)]]
    revisions = inv.revisions.copy()
    gone = [k in gone_revisions for k in zip(revisions["repository"], revisions["digest"], strict=True)]
    revisions.loc[gone, "linked"] = False
    after = type(inv)(
        **{**inv.tables(), "tags": tags, "revisions": revisions}, root=inv.root, scanned_at=inv.scanned_at
    )
    assert digests(doc, "remove-blob") == set(reach(after, ReachOptions()).orphans["digest"])


# --------------------------------------------------------------------------
# Formats


@pytest.mark.slow
def test_sh_script_leaves_the_same_files_as_apply(aged: Callable[..., Path]) -> None:
    by_apply = aged("basic", "by-apply")
    by_sh = copy_tree(by_apply, by_apply.parent / "by-sh")
    policy = BROAD
    plan, doc = make_plan(by_apply, *policy)
    script = by_sh.parent / "plan.sh"
    code, _, err = cli("plan", by_sh, *policy, "--format", "sh", "-o", script, "-q")
    assert code == 0, err
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    assert len(re.findall(r"^if .*; then .*; else echo .* >&2; fi$", text, re.M)) == len(doc["actions"])
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" not in proc.stderr
    assert apply_cli(plan)[0] == 0
    assert contents(by_sh / V2) == contents(by_apply / V2)


@pytest.mark.slow
def test_sh_script_keeps_the_tags_directory_of_a_repository_it_keeps(aged: Callable[..., Path]) -> None:
    """garbage-collect --delete-untagged (2.8) aborts on a repository with manifests but no `_manifests/tags`."""
    root = aged("basic")
    script = root.parent / "plan.sh"
    code, _, err = cli("plan", root, "--keep-last", "0", "--min-age", "0s", "--format", "sh", "-o", script, "-q")
    assert code == 0, err
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=60)
    server = root / V2 / "repositories/team/app/server/_manifests"
    assert any((server / "revisions").rglob("link"))  # the untagged CI build stays
    assert (server / "tags").is_dir()


def test_http_format_lists_manifest_deletes(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    _, doc = make_plan(root, *BROAD)
    code, out, err = cli(
        "plan", root, *BROAD, "--format", "http", "--registry-url", "https://registry.example:5000/", "-q"
    )
    assert code == 0, err
    assert out.startswith("#!/bin/sh\n")
    assert "REGISTRY=https://registry.example:5000\n" in out
    deletes = re.findall(r"^delete_manifest (\S+) (sha256:[0-9a-f]{64})$", out, re.M)
    assert set(deletes) == keys(doc, "remove-revision", "repository", "digest")
    assert len(deletes) == len(actions(doc, "remove-revision"))
    assert "garbage-collect" in out and "restart the registry" in out
    code, out, err = cli("plan", root, "--format", "http")
    assert code == 2 and out == "" and "--registry-url" in err


# --------------------------------------------------------------------------
# Apply


def test_dry_run_changes_nothing(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, doc = planned
    v2 = root / V2
    before, dirs = files(v2), directories(v2)
    code, _, err = cli("apply", plan, "--dry-run")
    assert code == 0, err
    assert files(v2) == before and directories(v2) == dirs
    assert not journal_path(plan).exists()
    said = [line.removeprefix("would remove ") for line in err.splitlines() if line.startswith("would remove ")]
    assert [a["path"] for a in doc["actions"]] == said[: len(doc["actions"])]
    assert "would free" in err and "Restart the registry" not in err
    # A dry run does not count as having applied the plan.
    assert apply_cli(plan)[0] == 0
    assert files(v2) != before


def test_quarantine_keeps_the_layout_and_restores(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, doc = planned
    v2 = root / V2
    original = contents(v2)
    quarantine = root.parent / "quarantine"
    code, _, err = apply_cli(plan, "--quarantine", quarantine)
    assert code == 0, err
    kept, moved = contents(v2), contents(quarantine)
    assert moved and not set(kept) & set(moved)
    assert {**kept, **moved} == original
    for a in doc["actions"]:
        assert not (v2 / a["path"]).exists()
        assert (quarantine / a["path"]).exists()
    shutil.copytree(quarantine, v2, dirs_exist_ok=True)
    assert contents(v2) == original


@pytest.mark.slow
def test_quarantine_used_again_keeps_the_layout(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    """Restore from a quarantine, then apply a new plan into the same quarantine."""
    root, plan, _ = planned
    v2 = root / V2
    original = set(files(v2))
    quarantine = root.parent / "quarantine"
    assert apply_cli(plan, "--quarantine", quarantine)[0] == 0
    shutil.copytree(quarantine, v2, dirs_exist_ok=True)
    again, _ = make_plan(root, *BROAD, out=root.parent / "again.json")
    before = files(v2)
    code, _, err = apply_cli(again, "--quarantine", quarantine)
    if code == 2:
        assert files(v2) == before, "refused, yet deleted"
    else:
        assert code == 0, err
        assert set(files(quarantine)) <= original, sorted(set(files(quarantine)) - original)[:3]


TAMPERINGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {}


def tampering(fragment: str) -> Callable[[Callable[[dict[str, Any]], None]], Callable[[dict[str, Any]], None]]:
    def register(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        TAMPERINGS[fn.__name__.replace("_", "-")] = (fn, fragment)
        return fn

    return register


def _first(doc: dict[str, Any], op: str) -> dict[str, Any]:
    return next(a for a in doc["actions"] if a["op"] == op)


@tampering("not a relative path")
def dot_dot(doc: dict[str, Any]) -> None:
    a = _first(doc, "remove-revision")
    a["path"] = a["path"].replace("repositories/", "repositories/team/../", 1)


@tampering("not a relative path")
def absolute_path(doc: dict[str, Any]) -> None:
    a = _first(doc, "remove-blob")
    a["path"] = doc["root"] + "/" + a["path"]


@tampering("may not touch")
def blob_op_on_a_revision_link(doc: dict[str, Any]) -> None:
    revision, blob = _first(doc, "remove-revision"), _first(doc, "remove-blob")
    blob.update(path=revision["path"], digest=revision["digest"], repository=revision["repository"])


@tampering("may not touch")
def tag_op_on_a_repository(doc: dict[str, Any]) -> None:
    a = _first(doc, "remove-tag")
    a["path"] = f"repositories/{a['repository']}"


@tampering("does not match its path")
def repository_field_mismatch(doc: dict[str, Any]) -> None:
    action = _first(doc, "remove-revision")
    action["repository"] = "tools/multi" if action["repository"] != "tools/multi" else "team/app"


@tampering("does not match its path")
def digest_field_mismatch(doc: dict[str, Any]) -> None:
    blobs = actions(doc, "remove-blob")
    blobs[0]["digest"] = blobs[1]["digest"]


@tampering("unknown op")
def unknown_op(doc: dict[str, Any]) -> None:
    _first(doc, "remove-blob")["op"] = "remove-everything"


@tampering("out of order")
def out_of_order(doc: dict[str, Any]) -> None:
    blob = _first(doc, "remove-blob")
    doc["actions"].remove(blob)
    doc["actions"].insert(0, blob)


@tampering("malformed")
def unknown_field(doc: dict[str, Any]) -> None:
    _first(doc, "remove-blob")["follow_symlinks"] = True


@tampering("malformed")
def missing_reason(doc: dict[str, Any]) -> None:
    del _first(doc, "remove-blob")["reason"]


@tampering("")
def op_not_a_string(doc: dict[str, Any]) -> None:
    _first(doc, "remove-blob")["op"] = ["remove-blob"]


@tampering("non-negative")
def negative_bytes(doc: dict[str, Any]) -> None:
    _first(doc, "remove-blob")["bytes"] = -1


@tampering("precondition")
def precondition_not_an_object(doc: dict[str, Any]) -> None:
    _first(doc, "remove-blob")["precondition"] = "anything"


@tampering("")
def policy_not_an_object(doc: dict[str, Any]) -> None:
    doc["policy"] = "delete everything"


@tampering("absolute path")
def relative_root(doc: dict[str, Any]) -> None:
    doc["root"] = "docker/registry/v2"


@tampering("not a registry's v2 directory")
def root_elsewhere(doc: dict[str, Any]) -> None:
    doc["root"] = "/"


@tampering("not a storage-audit plan")
def not_a_plan(doc: dict[str, Any]) -> None:
    del doc["format"]


@tampering("version")
def future_version(doc: dict[str, Any]) -> None:
    doc["version"] = 2


@tampering("created_at")
def no_creation_time(doc: dict[str, Any]) -> None:
    doc["created_at"] = "yesterday"


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_plan_deletes_nothing_and_exits_2(planned: tuple[Path, Path, dict[str, Any]], name: str) -> None:
    root, plan, doc = planned
    v2 = root / V2
    mutate, fragment = TAMPERINGS[name]
    mutate(doc)
    write_plan(doc, plan)
    before = files(v2)
    code, out, err = apply_cli(plan)
    assert code == 2, err
    assert out == ""
    assert "refusing the plan, nothing was deleted" in err and fragment in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert files(v2) == before
    assert not journal_path(plan).exists()


def test_symlink_on_the_way_is_refused(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, _ = planned
    v2 = root / V2
    # The repository's `_layers` moves out of the tree and a link to it takes its place.
    elsewhere = root.parent / "elsewhere"
    shutil.move(str(v2 / "repositories/team/app/_layers"), elsewhere)
    (v2 / "repositories/team/app/_layers").symlink_to(elsewhere, target_is_directory=True)
    before, outside = files(v2), files(elsewhere)
    code, _, err = apply_cli(plan)
    assert code == 2
    assert "symbolic link" in err and "refusing the plan, nothing was deleted" in err
    assert files(v2) == before and files(elsewhere) == outside


def test_a_blob_a_present_manifest_references_is_skipped(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, doc = planned
    reference = copy_tree(root, root.parent / "reference")
    v2 = root / V2
    retarget(doc, reference, reference.parent / "reference.plan.json")
    inv = scan(LocalStorage(v2))
    tagged = inv.tags.set_index(["repository", "tag"])["digest"]
    refs = inv.references
    layer = refs[(refs["manifest"] == tagged[("tools/multi", "v2")]) & (refs["ref_type"] == "child")]["digest"].iloc[0]
    blob = inv.blobs.set_index("digest").loc[layer]
    extra = {
        "op": "remove-blob",
        "path": f"blobs/sha256/{layer[7:9]}/{layer[7:]}",
        "reason": "orphan: no kept manifest references it",
        "precondition": {"size": int(blob["size"]), "mtime_ns": int(blob["mtime"].value)},
        "repository": None,
        "tag": None,
        "digest": layer,
        "bytes": int(blob["size"]),
    }
    first = doc["actions"].index(_first(doc, "remove-blob"))
    doc["actions"].insert(first, extra)
    write_plan(doc, plan)
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert f"skipped {extra['path']}: a manifest present now references it" in err
    assert (v2 / extra["path"] / "data").is_file()
    # Everything else went as it would have without the extra action.
    assert apply_cli(reference.parent / "reference.plan.json")[0] == 0
    assert contents(v2) == contents(reference / V2)
    assert broken_invariants(v2) == []


def test_layer_links_of_a_blob_used_again_are_kept(aged: Callable[..., Path]) -> None:
    """Between plan and apply, a client pushes a manifest using a blob the plan saw orphaned."""
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, "--min-age", "0s")
    # The withdrawn release candidate is pushed again: its revision link and a tag come back.
    rc = "sha256:cce887860ab1659231a23d1a0b54dc221a16eb7204e1009e313d61c0d11ac51e"
    assert rc in digests(doc, "remove-blob")
    app_dir = v2 / "repositories/team/app/_manifests"
    (app_dir / "revisions/sha256" / rc[7:] / "link").write_text(rc)
    (app_dir / "tags/2.0-rc1/current").mkdir(parents=True)
    (app_dir / "tags/2.0-rc1/current/link").write_text(rc)
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert f"skipped blobs/sha256/{rc[7:9]}/{rc[7:]}" in err
    # The registry serves a blob of a repository only through the repository's `_layers` link.
    for link in actions(doc, "remove-layer-link"):
        if link["repository"] == "team/app":
            assert (v2 / link["path"]).is_file(), f"{link['path']} removed, yet 2.0-rc1 needs it"
    assert broken_invariants(v2) == []


def test_changed_targets_are_skipped_and_reported(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, doc = planned
    v2 = root / V2
    tags = scan(LocalStorage(v2)).tags.set_index(["repository", "tag"])["digest"]
    assert {("team/app", "1.1"), ("team/app", "1.0")} <= keys(doc, "remove-tag", "repository", "tag")
    # 1.1 is pushed again, naming 1.0's manifest (which the plan removes); a planned blob is rewritten.
    tag_link(v2, "team/app", "1.1").write_text(tags[("team/app", "1.0")])
    blob = _first(doc, "remove-blob")
    os.utime(v2 / blob["path"] / "data", ns=(ns_before_now(-60), ns_before_now(-60)))
    code, _, err = apply_cli(plan)
    assert code == 0, err
    tag_path = "repositories/team/app/_manifests/tags/1.1"
    assert f"skipped {tag_path}: changed since planning" in err
    assert tag_link(v2, "team/app", "1.1").read_text() == tags[("team/app", "1.0")]
    revision = f"repositories/team/app/_manifests/revisions/sha256/{tags[('team/app', '1.0')][7:]}/link"
    assert f"skipped {revision}: a tag or a remaining manifest reaches it now" in err
    assert (v2 / revision).is_file()
    assert f"skipped {blob['path']}: its data changed since planning" in err
    assert (v2 / blob["path"] / "data").is_file()
    assert re.search(r"; [1-9]\d* actions skipped", err)
    assert broken_invariants(v2) == []


def test_an_upload_that_grew_since_planning_is_skipped(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, "--uploads-older-than", "0s", "--min-age", "0s")
    (upload,) = actions(doc, "remove-upload")
    with open(v2 / upload["path"] / "data", "ab") as fh:
        fh.write(b"the client is still sending")
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert (v2 / upload["path"] / "data").is_file(), "an upload still receiving data was removed"
    assert f"skipped {upload['path']}" in err


def test_a_finished_plan_is_not_applied_twice(
    planned: tuple[Path, Path, dict[str, Any]], pin_clock: Callable[[datetime], datetime]
) -> None:
    root, plan, _ = planned
    pin_clock(NOW)  # the second plan below is made as of the same time as the first
    v2 = root / V2
    assert apply_cli(plan)[0] == 0
    journal = journal_path(plan)
    assert journal.is_file() and json.loads(journal.read_text().splitlines()[-1]) == {"finished": True}
    # Restoring the tree does not make the plan applicable again.
    after = files(v2)
    code, out, err = apply_cli(plan)
    assert code == 0 and out == ""
    assert "already applied" in err
    assert files(v2) == after
    # A journal of another plan is never taken for this one's.
    other, _ = make_plan(root, "--delete-untagged", "--min-age", "0s", out=root.parent / "other.json")
    shutil.copy(journal, journal_path(other))
    code, _, err = apply_cli(other)
    assert code == 2 and "belongs to another plan" in err
    assert files(v2) == after


def interrupted(plan: Path, after: int) -> int:
    """Apply `plan` in-process and interrupt it (as Ctrl-C would) after `after` removals; returns removals made."""
    loaded, digest = read_plan(plan)
    count = 0

    def log(line: str) -> None:
        nonlocal count
        if line.startswith("removed "):
            count += 1
            if count == after:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply_plan(loaded, digest, plan, remover_for(plan_storage(loaded)), log=log)
    return count


def test_a_torn_journal_line_does_not_stop_a_resume(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    """A crash (or power loss) while writing the journal can leave its last line cut short."""
    root, plan, doc = planned
    reference = copy_tree(root, root.parent / "reference")
    interrupted(plan, 3)
    with open(journal_path(plan), "a") as fh:
        fh.write('{"index": 3, "res')
    code, _, err = apply_cli(plan)
    assert code in (0, 2), err
    if code == 0:
        assert apply_cli(retarget(doc, reference, root.parent / "ref.json"))[0] == 0
        assert files(root / V2).keys() == files(reference / V2).keys()


def test_confirmation_prompt(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, plan, doc = planned
    v2 = root / V2
    before = files(v2)
    code, _, err = cli("apply", plan, input="n\n")
    assert code == 2
    assert "Apply this plan?" in err and "not confirmed; nothing was deleted" in err
    assert files(v2) == before and not journal_path(plan).exists()
    code, _, err = cli("apply", plan, input="y\n")
    assert code == 0, err
    assert f"plan: {len(doc['actions'])} actions" in err
    assert "Restart the registry" in err
    assert all(not (v2 / a["path"]).exists() for a in doc["actions"])


def test_cli_errors_are_one_line_with_exit_codes(planned: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    root, plan, _ = planned
    cases: list[tuple[list[Any], int, str]] = [
        (["apply", tmp_path / "missing.json", "--yes"], 2, "cannot read"),
        (["plan", root, "--min-age", "soon"], 2, "is not a duration"),
        (["plan", root, "--older-than", "3 days"], 2, "is not a duration"),
        (["plan", root, "--keep-last", "1", "--keep-tag", "(unclosed"], 2, "is not a regular expression"),
        (["plan", tmp_path / "nowhere"], 2, "no such file"),
    ]
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{ not json")
    cases.append((["apply", garbage, "--yes"], 2, "not JSON"))
    snapshot = tmp_path / "snapshot"
    assert cli("scan", root, "-o", snapshot, "-q")[0] == 0
    cases.append((["plan", snapshot], 2, "not a snapshot"))
    cases.append((["apply", plan, "--yes", "--quarantine", garbage], 2, "not a directory"))
    for args, expected, fragment in cases:
        code, out, err = cli(*args)
        assert code == expected, (args, err)
        assert fragment in err, (args, err)
        assert err.startswith("storage-audit: error: ") and len(err.strip().splitlines()) == 1, err
        assert out == ""
    assert not journal_path(plan).exists()


def test_tag_patterns_with_groups_plan_without_warnings(planned: tuple[Path, Path, dict[str, Any]]) -> None:
    root, _, _ = planned
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        code, out, err = cli(
            "plan", root, "--keep-last", "0", "--keep-tag", "^(latest|v[12])$", "--min-age", "0s", "-q"
        )
    assert code == 0 and "Warning" not in err
    # 1.2 names `latest`'s manifest: it stays with it.
    assert {a["tag"] for a in actions(json.loads(out), "remove-tag")} == {"1.0", "1.1", "stable"}


def test_uncertain_storage_is_refused_with_exit_3(tmp_path: Path) -> None:
    root = unpack(BROKEN / "empty-link.tar.gz", tmp_path / "broken")
    code, out, err = cli("plan", root, "--delete-untagged", "--min-age", "0s", "-q")
    assert code == 3 and out == ""
    assert "storage-audit check" in err and "Traceback" not in err


# --------------------------------------------------------------------------
# With the reference registry


def push_world(reg: Client) -> None:
    """Every shape the rules must get right: overwritten tags, multi-arch, referrers, nesting, shared layers."""
    rng = random.Random("storage-audit-plan-apply")

    def blob() -> bytes:
        return rng.randbytes(rng.randint(40, 240))

    def config(layers: list[bytes], arch: str = "amd64", **env: str) -> dict[str, Any]:
        return {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [f"{k}={v}" for k, v in sorted(env.items())]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
        }

    def image(repo: str, arch: str = "amd64", oci: bool = False, tags: tuple[str, ...] = (), **env: str) -> Pushed:
        layers = [shared, blob()]
        return reg.image(repo, layers, config(layers, arch, **env), oci=oci, tags=tags)

    shared = blob()
    # app: releases, `latest` pushed over three times, an untagged CI build, a withdrawn release.
    for version in ("v1.0", "v1.1", "v2.0"):
        app_latest = image("app", tags=(version, "latest"), VERSION=version)
    image("app", BUILD="ci-1")
    rc = image("app", tags=("v3.0-rc1",), VERSION="rc")
    reg.delete_manifest("app", rc.digest)

    # org/team holds org/team/app; the shared layer is mounted rather than sent.
    reg.mount_blob("org/team", sha256(shared), from_repo="app")
    own = blob()
    reg.push_blob("org/team", own)
    cfg = config([shared, own], BUILD="1")
    reg.push_blob("org/team", canonical_json(cfg))
    reg.image("org/team", [shared, own], cfg, push_blobs=False, tags=("v1.5", "stable"))
    stable = image("org/team", oci=True, tags=("v1.6", "stable"), BUILD="2")
    reg.start_upload("org/team", blob())

    # org/team/app: a Docker list and an OCI index with children pushed by digest, referrers by subject.
    multi = "org/team/app"
    docker = [(image(multi, arch), f"linux/{arch}") for arch in ("amd64", "arm64")]
    listed = reg.manifest_list(multi, docker, tags=("v1.2",))
    oci = [(image(multi, arch, oci=True), f"linux/{arch}") for arch in ("amd64", "s390x")]
    reg.index(multi, oci, tags=("edge",))
    # `edge` moves on to a one-platform index; the two-platform one is left untagged.
    reg.index(multi, oci[:1], tags=("edge",))
    stale = [(image(multi, arch, oci=True, BUILD="old"), f"linux/{arch}") for arch in ("amd64", "ppc64le")]
    reg.index(multi, stale)
    sig = reg.artifact(multi, listed, COSIGN_SIGNATURE, b'{"sig":"v1.2"}', COSIGN_SIMPLESIGNING)
    reg.artifact(multi, sig, COSIGN_SIGNATURE, b'{"sig":"countersigned"}', COSIGN_SIMPLESIGNING)
    reg.artifact(multi, oci[1][0], SPDX_SBOM, b'{"sbom":"s390x"}', SPDX_SBOM)
    # A child tagged on its own as well: removing that tag must not take it from its list.
    reg.put_manifest(multi, "amd64", docker[0][0].body, docker[0][0].media_type)
    loose = image(multi, oci=True, BUILD="loose")
    reg.artifact(multi, loose, SPDX_SBOM, b'{"sbom":"loose"}', SPDX_SBOM)
    multi_latest = reg.image(multi, [shared], config([shared], VERSION="v1.3"), tags=("v1.3", "latest"))

    # Repositories the rules can empty: only untagged content; only an abandoned upload.
    image("scratch/tmp", BUILD="throwaway")
    reg.start_upload("uploads/only", blob())

    # The moving tags are pushed again a moment later, as a client re-tagging would, so that
    # they are the newest whatever the clock's granularity (equal times fall back to names).
    time.sleep(0.05)
    for repo, tag, pushed in (
        ("app", "latest", app_latest),
        ("org/team", "stable", stable),
        (multi, "latest", multi_latest),
    ):
        reg.put_manifest(repo, tag, pushed.body, pushed.media_type)


@dataclass
class World:
    root: Path
    ledger: Ledger
    facts: dict[str, Any]
    scratch: Path

    def copy(self, name: str) -> Path:
        return copy_tree(self.root, self.scratch / name / "root")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_registry()
    base = tmp_path_factory.mktemp("plan-world")
    ledger = Ledger()
    with Registry(base / "root", ledger) as reg:
        push_world(reg)
    yield World(base / "root", ledger, ledger.expected_facts(), base)
    shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Expected:
    tags: set[tuple[str, str]]
    revisions: set[tuple[str, str]]
    blobs: set[str]


def expected_after(world: World, remaining: set[tuple[str, str]], delete_untagged: bool) -> Expected:
    """What must remain, from what was pushed: kept manifests keep their index children and referrers."""
    facts = world.facts
    linked = {(r["repository"], r["digest"]) for r in facts["revisions"] if r["linked"]}
    current = {(t["repository"], t["tag"]): t["digest"] for t in facts["tags"]}
    children: dict[str, set[str]] = {}
    holds: dict[str, set[str]] = {m["digest"]: {m["digest"]} for m in facts["manifests"]}
    for ref in facts["references"]:
        if ref["ref_type"] == "child":
            children.setdefault(ref["manifest"], set()).add(ref["digest"])
        if ref["ref_type"] in HOLDING_REFS:
            holds[ref["manifest"]].add(ref["digest"])
    subjects = {m["digest"]: m["subject"] for m in facts["manifests"] if m["subject"]}

    def closure(roots: set[tuple[str, str]]) -> set[tuple[str, str]]:
        kept = roots & linked
        while True:
            more = {(r, c) for r, d in kept for c in children.get(d, ()) if (r, c) in linked}
            more |= {(r, d) for r, d in linked if (r, subjects.get(d)) in kept}
            if more <= kept:
                return kept
            kept |= more

    after = closure({(r, current[(r, t)]) for r, t in remaining})
    if delete_untagged:
        kept = after
    else:
        gone = closure({(r, d) for (r, _), d in current.items()}) - after
        kept = closure(linked - gone)
    return Expected(remaining, kept, {b for _, d in kept for b in holds[d]})


def pull_verified(client: Client, repo: str, reference: str) -> list[str]:
    """Pull as a client: the manifest with every Accept type, index children recursively, HEAD and GET each blob."""
    accept = ", ".join(MANIFEST_ACCEPT)
    resp = client.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})
    if resp.status != 200:
        return [f"{repo}@{reference}: manifest: HTTP {resp.status}"]
    digest = sha256(resp.body)
    if resp.headers.get("docker-content-digest") != digest or (reference.startswith("sha256:") and reference != digest):
        return [f"{repo}@{reference}: served as {resp.headers.get('docker-content-digest')}, bytes are {digest}"]
    doc = json.loads(resp.body)
    if doc.get("mediaType") and resp.headers.get("content-type") != doc["mediaType"]:
        return [f"{repo}@{reference}: Content-Type {resp.headers.get('content-type')} for a {doc['mediaType']}"]
    problems: list[str] = []
    for child in doc.get("manifests", []):
        problems += pull_verified(client, repo, child["digest"])
    for desc in (doc.get("config"), *doc.get("layers", [])):
        if not desc:
            continue
        head = client.request("HEAD", f"/v2/{repo}/blobs/{desc['digest']}")
        got = client.request("GET", f"/v2/{repo}/blobs/{desc['digest']}")
        if head.status != 200 or int(head.headers.get("content-length", -1)) != desc["size"]:
            problems.append(f"{repo}@{reference}: HEAD blob {desc['digest']}: HTTP {head.status}")
        elif got.status != 200 or sha256(got.body) != desc["digest"] or len(got.body) != desc["size"]:
            problems.append(f"{repo}@{reference}: GET blob {desc['digest']}: HTTP {got.status}")
    return problems


def release_order(tag: str) -> tuple[Any, ...]:
    """Where a tag goes among tags pushed at the same time: versions (PEP 440's) above other names, then by name."""
    try:
        return (1, Version(tag), tag)
    except InvalidVersion:
        return (0, tag)


def with_safe_defaults(tags: list[dict[str, Any]], kept: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """`kept`, and what the rules never take from it: every `latest`, every tag naming a kept tag's manifest."""
    kept = kept | {(t["repository"], t["tag"]) for t in tags if t["tag"] == "latest"}
    manifests = {(t["repository"], t["digest"]) for t in tags if (t["repository"], t["tag"]) in kept}
    return kept | {(t["repository"], t["tag"]) for t in tags if (t["repository"], t["digest"]) in manifests}


def keep_last(world: World, n: int) -> set[tuple[str, str]]:
    """The n most recently pushed tags of each repository, by their `current/link` mtimes (ties: by version, then
    name), `latest` aside, with the safe defaults."""
    by_repo: dict[str, list[tuple[int, tuple[Any, ...], str]]] = {}
    for t in world.facts["tags"]:
        if t["tag"] == "latest":
            continue
        mtime = tag_link(world.root / V2, t["repository"], t["tag"]).stat().st_mtime_ns
        by_repo.setdefault(t["repository"], []).append((mtime, release_order(t["tag"]), t["tag"]))
    newest = {(repo, tag) for repo, tags in by_repo.items() for _, _, tag in sorted(tags, reverse=True)[:n]}
    return with_safe_defaults(world.facts["tags"], newest)


POLICIES: dict[str, tuple[tuple[str, ...], Callable[[World], set[tuple[str, str]]], bool]] = {
    "delete-untagged": (
        ("--delete-untagged",),
        lambda w: {(t["repository"], t["tag"]) for t in w.facts["tags"]},
        True,
    ),
    "keep-last-2": (("--keep-last", "2"), lambda w: keep_last(w, 2), False),
    "keep-tag-v1": (
        ("--keep-tag", r"^v1\.", "--older-than", "0s"),
        lambda w: with_safe_defaults(
            w.facts["tags"], {(t["repository"], t["tag"]) for t in w.facts["tags"] if re.search(r"^v1\.", t["tag"])}
        ),
        False,
    ),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_applied_to_a_real_registry_pulls_what_remains(world: World, name: str) -> None:
    policy, remaining, delete_untagged = POLICIES[name]
    expected = expected_after(world, remaining(world), delete_untagged)
    root = world.copy(name)
    v2 = root / V2
    plan, doc = make_plan(root, *policy, "--min-age", "0s")
    assert doc["actions"]
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert "actions skipped" in err and "; 0 actions skipped" in err

    inv = scan(LocalStorage(v2))
    assert set(zip(inv.tags["repository"], inv.tags["tag"], strict=True)) == expected.tags
    present = present_revisions(inv)
    assert set(zip(present["repository"], present["digest"], strict=True)) == expected.revisions
    assert set(inv.blobs["digest"]) == expected.blobs
    for a in doc["actions"]:
        assert not (v2 / a["path"]).exists(), a["path"]
    assert set(zip(inv.uploads["repository"], inv.uploads["id"], strict=True)) == {
        (u["repository"], u["id"]) for u in world.facts["uploads"]
    }

    removed_revisions = keys(doc, "remove-revision", "repository", "digest")
    removed_blobs = digests(doc, "remove-blob")
    with Registry(root) as reg:
        for repo in {r for r, _ in expected.tags}:
            assert sorted(reg.tags(repo)) == sorted(t for r, t in expected.tags if r == repo)
        problems = [p for repo, tag in sorted(expected.tags) for p in pull_verified(reg, repo, tag)]
        # Kept untagged manifests (index children, referrers) pull by digest too.
        problems += [p for repo, digest in sorted(expected.revisions) for p in pull_verified(reg, repo, digest)]
        assert problems == []
        for repo, digest in removed_revisions:
            assert reg.request("GET", f"/v2/{repo}/manifests/{digest}").status == 404
        for link in world.facts["layer_links"]:
            if link["digest"] in removed_blobs:
                assert reg.head_blob(link["repository"], link["digest"]) is None
    _, eligible, _ = parse_gc_output(garbage_collect(root, dry_run=True))
    assert eligible == set()
    assert broken_invariants(v2) == []
    code, _, err = cli("check", root, "-q")
    assert code == 0, err


def test_http_workflow_against_the_registry_matches_apply(world: World) -> None:
    """The curl DELETEs, then the registry's own garbage-collect, leave the manifests and blobs apply leaves."""
    by_apply, by_http = world.copy("apply-side"), world.copy("http-side")
    plan, doc = make_plan(by_apply, "--delete-untagged", "--min-age", "0s")
    assert apply_cli(plan)[0] == 0
    with Registry(by_http) as reg:
        script = by_http.parent / "plan.http.sh"
        code, _, err = cli(
            "plan", by_http, "--delete-untagged", "--min-age", "0s", "--format", "http",
            "--registry-url", reg.base_url, "-o", script, "-q",
        )  # fmt: skip
        assert code == 0, err
        subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=120)
    garbage_collect(by_http, dry_run=False)
    left = [scan(LocalStorage(r / V2)) for r in (by_apply, by_http)]
    kept = [present_revisions(inv) for inv in left]
    applied, collected = (set(zip(p["repository"], p["digest"], strict=True)) for p in kept)
    assert applied == collected
    assert set(left[0].blobs["digest"]) == set(left[1].blobs["digest"])
    assert len(actions(doc, "remove-revision")) > 0


INTERRUPT_POLICY = BROAD


@pytest.fixture(scope="module")
def reference_apply(world: World) -> tuple[dict[str, Any], dict[str, tuple[int, int]], set[str]]:
    """The plan of INTERRUPT_POLICY and the tree an uninterrupted apply of it leaves."""
    root = world.copy("uninterrupted")
    plan, doc = make_plan(root, *INTERRUPT_POLICY)
    assert {a["op"] for a in doc["actions"]} == set(OPS)
    assert apply_cli(plan)[0] == 0
    return doc, files(root / V2), directories(root / V2)


def interruption_points(doc: dict[str, Any]) -> list[int]:
    """After the first and before the last action, and in the middle of every op's phase."""
    ops = [a["op"] for a in doc["actions"]]
    middles = {ops.index(op) + ops.count(op) // 2 + 1 for op in set(ops)}
    return sorted({1, len(ops) - 1, *middles} - {0, len(ops)})


def test_interrupted_apply_is_safe_at_every_point_and_resumes(world: World, reference_apply: Any) -> None:
    doc, finished, _ = reference_apply
    count = len(doc["actions"])
    unsafe: dict[str, list[str]] = {}
    for k in interruption_points(doc):
        root = world.copy(f"interrupted-{k}")
        v2 = root / V2
        plan = retarget(doc, root, root.parent / "plan.json")
        assert interrupted(plan, k) == k
        where = f"after {k} of {count} actions (the last: {doc['actions'][k - 1]['op']})"
        if problems := broken_invariants(v2):
            unsafe[where] = problems
        code, _, err = apply_cli(plan)
        assert code == 0, err
        assert "already gone" in err
        assert files(v2).keys() == finished.keys(), f"resumed {where}"
        assert broken_invariants(v2) == []
    assert unsafe == {}


def test_killed_apply_process_resumes(world: World, reference_apply: Any) -> None:
    """A real process, killed with SIGKILL mid-way: the journal and the re-checks carry the rerun."""
    doc, finished, _ = reference_apply
    root = world.copy("killed")
    v2 = root / V2
    plan = retarget(doc, root, root.parent / "plan.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_audit", "apply", str(plan), "--yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    removed = 0
    for line in proc.stderr:
        if line.startswith("removed "):
            removed += 1
            if removed == len(doc["actions"]) // 2:
                proc.kill()
                break
    proc.wait(timeout=60)
    assert broken_invariants(v2) == []
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert files(v2).keys() == finished.keys()
    assert broken_invariants(v2) == []


def test_applied_real_registry_has_no_gc_eligible_blob_and_serves_every_tag(world: World) -> None:
    root = world.copy("broad")
    plan, _ = make_plan(root, *INTERRUPT_POLICY)
    assert apply_cli(plan)[0] == 0
    _, eligible, _ = parse_gc_output(garbage_collect(root, dry_run=True))
    assert eligible == set()
    with Registry(root) as reg:
        catalog = reg.catalog()
        assert "scratch/tmp" not in catalog and "uploads/only" not in catalog
        tags = {(repo, tag) for repo in catalog for tag in reg.tags(repo)}
        assert tags == keep_last(world, 1)
        assert [p for repo, tag in sorted(tags) for p in pull_verified(reg, repo, tag)] == []


def test_a_link_turned_into_a_directory_is_skipped_not_a_crash(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    v2 = root / V2
    plan, doc = make_plan(root, "--delete-untagged", "--min-age", "0s")
    (revision,) = actions(doc, "remove-revision")[:1]
    link = v2 / revision["path"]
    link.unlink()
    link.mkdir()
    code, _, err = apply_cli(plan)
    assert code == 0, err
    assert link.is_dir() and "skipped" in err and "Traceback" not in err


# --------------------------------------------------------------------------
# A plan made --gc-compatible: what the stock collector deletes, and what apply refuses of it


@pytest.mark.slow
@pytest.mark.parametrize("marks", ["as planned", "marks removed"])
def test_apply_refuses_what_a_gc_compatible_plan_marks(aged: Callable[..., Path], marks: str) -> None:
    """Registry 2.8's `garbage-collect --delete-untagged` deletes the children of a tagged multi-arch index
    (distribution #3178) and sweeps their blobs. A plan made `--gc-compatible` lists them too, marked refused;
    apply's own vetoes refuse them, with or without the marks, and the tagged indexes still pull."""
    require_registry()
    root = aged("multiarch")
    v2 = root / V2
    plan, doc = make_plan(root, "--delete-untagged", "--gc-compatible", "--min-age", "0s")
    refused = [a for a in doc["actions"] if a.get("refused")]
    children = [a for a in refused if a["op"] == "remove-revision" and a["refused"].startswith("child of index")]
    assert children and any(a["op"] == "remove-blob" for a in refused)
    assert {a["repository"] for a in children} == {"platforms/app"}
    if marks == "marks removed":
        # The marks say what apply will do; its vetoes decide, whatever a plan file says.
        write_plan({**doc, "actions": [{k: v for k, v in a.items() if k != "refused"} for a in doc["actions"]]}, plan)

    code, _, err = apply_cli(plan)
    assert code == 0, err
    verdict = "refused" if marks == "as planned" else "skipped"
    reasons = {
        "remove-revision": "a tag or a remaining manifest reaches it now",
        "remove-layer-link": "a manifest present now references its blob",
        "remove-blob": "a manifest present now references it",
    }
    for a in refused:
        assert (v2 / a["path"]).exists(), a["path"]
        assert f"{verdict} {a['path']}: {reasons[a['op']]}" in err
    if marks == "as planned":
        assert f"{len(refused)} actions skipped ({len(refused)} refused, as the plan marks them)" in err
    for a in doc["actions"]:
        if not a.get("refused"):
            assert not (v2 / a["path"]).exists(), a["path"]
    with Registry(root) as reg:
        problems = [p for tag in ("latest", "oci") for p in pull_verified(reg, "platforms/app", tag)]
        problems += [p for a in children for p in pull_verified(reg, a["repository"], a["digest"])]
    assert problems == []


def test_a_gc_compatible_script_runs_no_refused_action(aged: Callable[..., Path]) -> None:
    root = aged("multiarch")
    _, doc = make_plan(root, "--delete-untagged", "--gc-compatible", "--min-age", "0s")
    refused = {a["path"] for a in doc["actions"] if a.get("refused")}
    assert refused
    code, script, err = cli("plan", root, "--delete-untagged", "--gc-compatible", "--min-age", "0s", "-f", "sh", "-q")
    assert code == 0, err
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    assert not [line for line in commands if any(path in line for path in refused)]
    assert script.count("# refused, not run: ") == len(refused)


def test_gc_compatible_takes_no_retention_rule(aged: Callable[..., Path]) -> None:
    root = aged("basic")
    code, out, err = cli("plan", root, "--gc-compatible", "--keep-last", "2", "--repository", "x/*")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].endswith("it takes no --keep-last, --repository"), err
