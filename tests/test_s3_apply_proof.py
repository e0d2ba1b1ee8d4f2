"""Apply on a bucket, proven with the registry on its s3 driver: what is kept pulls; kills and tampering break nothing.

Every case pushes the same world (overwritten tags, multi-arch, referrers,
nesting, shared layers, unfinished uploads) through the registry into a
rootdirectory of its own in the SeaweedFS bucket; the bucket is read back
with botocore (a reader independent of the library) and scanned as a local
copy, and the registry restarted on the bucket pulls what must remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage_audit.analysis.reach import present_revisions
from storage_audit.core.paths import UploadData, UploadDir, UploadStartedAt, parse_path, path_for
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage
from tests.conftest import Ran, cli
from tests.registry_harness import Ledger, parse_gc_output, require_registry
from tests.s3_harness import (
    RegistryInBucket,
    SeaweedS3,
    mirror_as_listed,
    multipart_uploads,
    raw_client,
    raw_keys,
    s3_garbage_collect,
    s3_registry,
    v2_prefix,
)
from tests.test_plan_apply import (
    V2,
    Expected,
    World,
    broken_invariants,
    expected_after,
    keys,
    pull_verified,
    push_world,
    release_order,
    with_safe_defaults,
)

pytestmark = pytest.mark.registry

# An upload in a repository that keeps its tags, besides the two the world leaves (one in a repository of its own).
EXTRA_UPLOAD = ("app", b"an upload never finished")
# A tag whose name is a prefix of another's, on the same manifest: ((repository, tag), (repository, the other tag)).
PREFIX_TAG = (("app", "v1"), ("app", "v1.0"))


# --------------------------------------------------------------------------
# A world in the bucket


@dataclass(frozen=True)
class InBucket(RegistryInBucket):
    """The world pushed under `rootdirectory`: what was pushed, as the ledger and its facts."""

    ledger: Ledger
    facts: dict[str, Any]

    def world(self, scratch: Path) -> World:
        """The local tests' view of what was pushed (only its facts are read)."""
        return World(scratch, self.ledger, self.facts, scratch)

    def state(self) -> dict[str, str]:
        """Every key under the prefix, relative to it, with its ETag: what two identical buckets share."""
        return {k[len(self.prefix) :]: e["ETag"] for k, e in raw_keys(self.server, self.prefix).items()}

    def uploads(self) -> set[str]:
        """The unfinished multipart uploads under the prefix, by key relative to it."""
        return {k[len(self.prefix) :] for k in multipart_uploads(self.server, self.prefix)}

    def mirror(self, dest: Path) -> Path:
        """A local copy of the keys (an unfinished upload's data as a file of its size), as a v2 directory."""
        return mirror_as_listed(self.server, self.rootdirectory, dest) / V2


_roots = iter(range(1, 1 << 30))


def push(server: SeaweedS3, name: str) -> InBucket:
    """The world, pushed through the registry's s3 driver into a rootdirectory no other case uses."""
    require_registry()
    rootdirectory = f"/proof-{os.getpid()}-{next(_roots)}-{name}"
    ledger = Ledger()
    with s3_registry(server, rootdirectory, ledger) as reg:
        push_world(reg)
        reg.start_upload(*EXTRA_UPLOAD)
        # `v1` beside `v1.0`: removing one tag's keys must not take the other's (a prefix of its name). `v1`
        # names an image of its own: a tag that shares its manifest with a kept tag is kept with it.
        (repo, tag), _ = PREFIX_TAG
        reg.image(repo, [b"the layer of v1 alone\n"], {"architecture": "amd64", "os": "linux"}, tags=[tag])
    return InBucket(server, rootdirectory, ledger, ledger.expected_facts())


def bucket_snapshot(server: SeaweedS3, *buckets: str) -> dict[tuple[str, str], str]:
    """Every object of every named bucket with its ETag, and every unfinished upload: all a deletion can change."""
    client = raw_client(server)
    out: dict[tuple[str, str], str] = {}
    for bucket in buckets:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.update({(bucket, e["Key"]): e["ETag"] for e in page.get("Contents", [])})
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            out.update({(bucket, u["Key"]): "upload " + u["UploadId"] for u in page.get("Uploads", [])})
    return out


# --------------------------------------------------------------------------
# Running the command line


def make_plan(case: InBucket, out: Path, *policy: str) -> dict[str, Any]:
    result = cli("plan", case.url, *policy, "--no-cache", "-q", "-o", out, env=case.server.environment())
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    return json.loads(out.read_text())


def apply(case: InBucket, plan: Path, *extra: str) -> Ran:
    return cli("apply", plan, "--yes", "--no-cache", *extra, env=case.server.environment())


def apply_process(server: SeaweedS3, plan: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`storage-audit apply PLAN --yes` as a process of its own, which a test can kill; its stderr in PLAN.log."""
    with plan.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "storage_audit", "apply", str(plan), "--yes", "--no-cache", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **server.environment()},
        )


def journal_of(plan: Path) -> Path | None:
    """The journal beside `plan` (its name carries the plan's hash), once there is one."""
    found = sorted(plan.parent.glob(f"{plan.name}.*.journal"))
    return found[0] if found else None


def journal_entries(plan: Path) -> int:
    """The actions the journal records as done so far (lines with an index, torn last line excepted)."""
    journal = journal_of(plan)
    if journal is None:
        return 0
    count = 0
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        count += isinstance(entry, dict) and "index" in entry
    return count


def leftovers(state: dict[str, str], doc: dict[str, Any]) -> list[str]:
    """Keys an applied plan should have removed: each action's own key, or any key below its directory."""
    left = []
    for a in doc["actions"]:
        path = a["path"]
        left += [k for k in state if k == path or k.startswith(path + "/")]
    return left


# --------------------------------------------------------------------------
# After apply, the registry restarted on the bucket


def keep_last_in_bucket(case: InBucket, n: int) -> set[tuple[str, str]]:
    """The n most recently pushed tags of each repository, by their `current/link`'s LastModified (ties: by
    version, then name), `latest` aside, with the safe defaults."""
    listed = raw_keys(case.server, case.prefix)
    by_repo: dict[str, list[tuple[Any, tuple[Any, ...], str]]] = {}
    for t in case.facts["tags"]:
        if t["tag"] == "latest":
            continue
        key = f"{case.prefix}repositories/{t['repository']}/_manifests/tags/{t['tag']}/current/link"
        by_repo.setdefault(t["repository"], []).append((listed[key]["LastModified"], release_order(t["tag"]), t["tag"]))
    newest = {(repo, tag) for repo, tags in by_repo.items() for _, _, tag in sorted(tags, reverse=True)[:n]}
    return with_safe_defaults(case.facts["tags"], newest)


def every_tag(case: InBucket) -> set[tuple[str, str]]:
    return {(t["repository"], t["tag"]) for t in case.facts["tags"]}


# name -> (policy, the tags that remain, whether untagged manifests go, whether uploads go)
POLICIES: dict[str, tuple[tuple[str, ...], Callable[[InBucket], set[tuple[str, str]]], bool, bool]] = {
    "delete-untagged": (("--delete-untagged",), every_tag, True, False),
    "keep-last-2": (("--keep-last", "2"), lambda case: keep_last_in_bucket(case, 2), False, False),
    "uploads-older-than-0s": (("--uploads-older-than", "0s"), every_tag, False, True),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_applied_to_a_bucket_pulls_what_remains(s3_server: SeaweedS3, tmp_path: Path, name: str) -> None:
    policy, remaining, delete_untagged, uploads_go = POLICIES[name]
    case = push(s3_server, name)
    expected = expected_after(case.world(tmp_path), remaining(case), delete_untagged)
    uploads_before = case.uploads()
    assert len(uploads_before) == 3, "the world leaves three unfinished multipart uploads"
    plan = tmp_path / "plan.json"
    doc = make_plan(case, plan, *policy, "--min-age", "0s")
    assert doc["actions"]
    result = apply(case, plan)
    assert result.exit_code == 0, result.output
    assert_kept_and_removed(case, doc, expected, uploads_before, uploads_go, tmp_path)


def assert_kept_and_removed(
    case: InBucket, doc: dict[str, Any], expected: Expected, uploads_before: set[str], uploads_go: bool, scratch: Path
) -> None:
    """The bucket after `doc` was applied: exactly what must remain, pulled from a registry restarted on it."""
    s3_server = case.server
    # The bucket as a second reader sees it.
    state = case.state()
    assert leftovers(state, doc) == []
    v2 = case.mirror(scratch / "mirror")
    inv = scan(LocalStorage(v2))
    assert set(zip(inv.tags["repository"], inv.tags["tag"], strict=True)) == expected.tags
    present = present_revisions(inv)
    assert set(zip(present["repository"], present["digest"], strict=True)) == expected.revisions
    assert set(inv.blobs["digest"]) == expected.blobs
    assert broken_invariants(v2) == []
    if uploads_go:
        assert case.uploads() == set()
        assert [k for k in state if "/_uploads/" in k] == []
    else:
        assert case.uploads() == uploads_before

    # The registry restarted on the same bucket: every kept tag and kept manifest pulls, digests verified.
    removed_revisions = keys(doc, "remove-revision", "repository", "digest")
    removed_blobs = {a["digest"] for a in doc["actions"] if a["op"] == "remove-blob"}
    with s3_registry(s3_server, case.rootdirectory) as reg:
        for repo in {r for r, _ in expected.tags}:
            listed = set(reg.tags(repo))
            kept = {t for r, t in expected.tags if r == repo}
            assert kept <= listed, (repo, kept - listed)
            # SeaweedFS, a filer, keeps the empty "directory" of a removed tag, which the registry lists: a tag
            # it lists beyond those kept must have no key left, and must not pull.
            for tag in listed - kept:
                assert not [k for k in state if k.startswith(f"repositories/{repo}/_manifests/tags/{tag}/")], tag
                assert reg.request("GET", f"/v2/{repo}/manifests/{tag}").status == 404, (repo, tag)
        problems = [p for repo, tag in sorted(expected.tags) for p in pull_verified(reg, repo, tag)]
        problems += [p for repo, digest in sorted(expected.revisions) for p in pull_verified(reg, repo, digest)]
        assert problems == []
        for repo, digest in removed_revisions:
            assert reg.request("GET", f"/v2/{repo}/manifests/{digest}").status == 404, (repo, digest)
        for link in case.facts["layer_links"]:
            if link["digest"] in removed_blobs:
                assert reg.head_blob(link["repository"], link["digest"]) is None
    # Nothing left for the collector, and `check` finds no error on the bucket.
    _, eligible, _ = parse_gc_output(s3_garbage_collect(s3_server, case.rootdirectory))
    assert eligible == set()
    checked = cli("check", case.url, "--no-cache", "-q", env=s3_server.environment())
    assert checked.exit_code == 0, checked.output


# --------------------------------------------------------------------------
# Killed anywhere, then run again


# Every op occurs (`edge` stays and loses the history entry of its untagged index; `v1` goes, `v1.0` stays), and
# nothing depends on push times, which differ between two pushes of the world.
KILL_POLICY = (
    "--keep-tag", r"^(v1\.|edge$)", "--older-than", "0s", "--delete-untagged",
    "--uploads-older-than", "0s", "--prune-empty-repositories", "--min-age", "0s",
)  # fmt: skip
# Slow enough that a watcher polling every few milliseconds stops it where it means to; slower still where the
# window is one request wide (between an upload's abort and the removal of its keys).
KILL_RATE = ("--max-requests-per-second", "50")
SLOW_KILL_RATE = ("--max-requests-per-second", "20")
ABORTED = ("DELETE", "204")
"""How SeaweedFS counts an AbortMultipartUpload (and a single DeleteObject; DeleteObjects is answered 200)."""


@dataclass(frozen=True)
class Reference:
    """What an uninterrupted apply of KILL_POLICY leaves, and what it took."""

    state: dict[str, str]
    actions: int
    journal_entries: int
    requests: int


@pytest.fixture(scope="module")
def reference(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    case = push(s3_server, "uninterrupted")
    scratch = tmp_path_factory.mktemp("uninterrupted")
    plan = scratch / "plan.json"
    doc = make_plan(case, plan, *KILL_POLICY)
    assert {a["op"] for a in doc["actions"]} >= {
        "remove-tag", "remove-tag-history", "remove-revision", "remove-layer-link", "remove-blob",
        "remove-upload", "remove-repository",
    }  # fmt: skip
    before = s3_server.request_counts()
    proc = apply_process(s3_server, plan, *KILL_RATE)
    assert proc.wait(timeout=600) == 0, plan.with_suffix(".log").read_text()
    requests = sum((s3_server.request_counts() - before).values())
    state = case.state()
    assert leftovers(state, doc) == []
    assert case.uploads() == set()
    # A rerun that ends with these very keys breaks nothing either.
    assert broken_invariants(case.mirror(scratch / "mirror")) == []
    return Reference(state, len(doc["actions"]), journal_entries(plan), requests)


# Where to stop: after a share of the journal's entries, or of the requests the uninterrupted run made, or
# right after the first multipart upload is aborted (its keys are still there).
KILL_POINTS = [
    ("journal", 0.0),
    ("journal", 0.5),
    ("requests", 0.25),
    ("requests", 0.6),
    ("abort", 1),
]


def upload_dirs(paths: Iterable[str]) -> set[str]:
    """The `_uploads/<id>` directories of the uploads whose `startedat` or (multipart) `data` is among `paths`."""
    specs = [parse_path(p) for p in paths if "/_uploads/" in p and p.endswith(("/startedat", "/data"))]
    return {
        path_for(UploadDir(s.repository, s.upload_id)) for s in specs if isinstance(s, UploadStartedAt | UploadData)
    }


def kill_when(proc: subprocess.Popen[bytes], reached: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL `proc` as soon as `reached()`; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if reached():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("apply neither ended nor reached the point in time")


@pytest.mark.parametrize(("measure", "share"), KILL_POINTS, ids=lambda p: str(p))
def test_killed_apply_breaks_nothing_and_resumes_to_the_same_bucket(
    s3_server: SeaweedS3, reference: Reference, tmp_path: Path, measure: str, share: float
) -> None:
    case = push(s3_server, f"killed-{measure}-{int(share * 100)}")
    plan = tmp_path / "plan.json"
    doc = make_plan(case, plan, *KILL_POLICY)
    assert len(doc["actions"]) == reference.actions
    before_state = case.state()
    if measure == "journal":
        target = max(1, int(reference.journal_entries * share))
        reached = lambda: journal_entries(plan) >= target  # noqa: E731
    elif measure == "requests":
        target = max(1, int(reference.requests * share))
        start = s3_server.request_counts()
        reached = lambda: sum((s3_server.request_counts() - start).values()) >= target  # noqa: E731
    else:
        target = int(share)
        aborted = s3_server.request_counts_by_code()[ABORTED]
        reached = lambda: s3_server.request_counts_by_code()[ABORTED] - aborted >= target  # noqa: E731
    proc = apply_process(s3_server, plan, *(SLOW_KILL_RATE if measure == "abort" else KILL_RATE))
    assert kill_when(proc, reached), f"apply ended before {target} {measure}"
    assert proc.returncode == -signal.SIGKILL
    # Killed: it did something, and what it left breaks no kept image.
    assert case.state() != before_state or measure == "requests", "killed before it removed anything"
    if measure == "abort":
        # An upload aborted, its keys still there: what the rerun must finish.
        assert upload_dirs(case.state()) - upload_dirs(case.uploads()), "killed outside the window"
    assert broken_invariants(case.mirror(tmp_path / "killed")) == []
    # Run again: it ends where an uninterrupted run ends.
    result = apply(case, plan)
    assert result.exit_code == 0, result.output
    state = case.state()
    assert state == reference.state, (
        f"the rerun left {sorted(set(state) - set(reference.state))[:4]}, "
        f"removed {sorted(set(reference.state) - set(state))[:4]}; "
        f"its skips: {[line for line in result.stderr.splitlines() if line.startswith('skipped')][:4]}"
    )
    assert case.uploads() == set()
    # And a finished plan is not applied again.
    again = apply(case, plan)
    assert again.exit_code == 0 and "already applied" in again.stderr, again.output
    assert case.state() == reference.state


# --------------------------------------------------------------------------
# Tampered plans


OTHER_BUCKET = "registry-other"


@dataclass(frozen=True)
class Tampered:
    case: InBucket
    doc: dict[str, Any]
    copy_rootdirectory: str


@pytest.fixture(scope="module")
def tamper_world(s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Tampered:
    """A world, its plan, and two identical copies of its keys: in another bucket, and under another prefix."""
    case = push(s3_server, "tampered")
    doc = make_plan(case, tmp_path_factory.mktemp("tampered") / "plan.json", *KILL_POLICY)
    client = raw_client(s3_server)
    if OTHER_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=OTHER_BUCKET)
    copy_rootdirectory = case.rootdirectory + "-copy"
    # Copies made a second later differ from the originals in LastModified alone, as any copy would.
    time.sleep(1.1)
    for key in raw_keys(s3_server, case.prefix):
        source = {"Bucket": s3_server.bucket, "Key": key}
        client.copy_object(Bucket=OTHER_BUCKET, Key=key, CopySource=source)
        client.copy_object(
            Bucket=s3_server.bucket, Key=v2_prefix(copy_rootdirectory) + key[len(case.prefix) :], CopySource=source
        )
    return Tampered(case, doc, copy_rootdirectory)


def _first(doc: dict[str, Any], op: str) -> dict[str, Any]:
    return next(a for a in doc["actions"] if a["op"] == op)


def _objects(action: dict[str, Any]) -> dict[str, Any]:
    """The keys an action's precondition lists (where the plan records them), to tamper with."""
    found = action["precondition"].get("objects")
    assert isinstance(found, dict) and found, f"no keys listed in the precondition of {action['op']} {action['path']}"
    return found


def _elsewhere(doc: dict[str, Any], bucket: str, rootdirectory: str) -> None:
    """Point the plan at another bucket or rootdirectory, its root and its location agreeing."""
    doc["root"] = f"s3://{bucket}{rootdirectory}"
    doc["location"] = {**doc["location"], "bucket": bucket, "prefix": v2_prefix(rootdirectory)}


Tampering = Callable[[dict[str, Any], Tampered], None]
# name -> (how the plan is changed, whether it must be refused as a whole)
TAMPERINGS: dict[str, tuple[Tampering, bool]] = {}


def tampering(refused: bool = True) -> Callable[[Tampering], Tampering]:
    def register(fn: Tampering) -> Tampering:
        TAMPERINGS[fn.__name__.replace("_", "-")] = (fn, refused)
        return fn

    return register


@tampering()
def dot_dot_in_a_path(doc: dict[str, Any], _t: Tampered) -> None:
    a = _first(doc, "remove-revision")
    a["path"] = a["path"].replace("repositories/", "repositories/org/../", 1)


@tampering()
def dot_dot_in_a_key(doc: dict[str, Any], _t: Tampered) -> None:
    """A remove-tag that also names, through `..`, the key of a tag that stays."""
    a = _first(doc, "remove-tag")
    objects = _objects(a)
    objects[f"{a['path']}/../{PREFIX_TAG[1][1]}/current/link"] = next(iter(objects.values()))


@tampering()
def key_outside_the_prefix(doc: dict[str, Any], t: Tampered) -> None:
    """A remove-blob that also names the same blob under the copy's prefix."""
    a = _first(doc, "remove-blob")
    objects = _objects(a)
    objects[f"/{v2_prefix(t.copy_rootdirectory)}{a['path']}/data"] = next(iter(objects.values()))


@tampering()
def full_key_as_a_path(doc: dict[str, Any], t: Tampered) -> None:
    a = _first(doc, "remove-blob")
    a["path"] = t.case.prefix + a["path"]


@tampering()
def kept_tag_key_in_a_prefix_tag(doc: dict[str, Any], _t: Tampered) -> None:
    """The remove-tag of `v1` also names a key of `v1.0`, which stays."""
    (repo, tag), (_, kept) = PREFIX_TAG
    a = next(a for a in doc["actions"] if a["op"] == "remove-tag" and (a["repository"], a["tag"]) == (repo, tag))
    _objects(a)[f"repositories/{repo}/_manifests/tags/{kept}/current/link"] = next(iter(_objects(a).values()))


@tampering()
def revision_op_changed_to_remove_blob(doc: dict[str, Any], _t: Tampered) -> None:
    _first(doc, "remove-revision")["op"] = "remove-blob"


@tampering()
def tag_op_changed_to_remove_repository(doc: dict[str, Any], _t: Tampered) -> None:
    a = _first(doc, "remove-tag")
    a.update(op="remove-repository", path=f"repositories/{a['repository']}", tag=None)


@tampering()
def root_and_location_disagree(doc: dict[str, Any], t: Tampered) -> None:
    doc["location"]["prefix"] = v2_prefix(t.copy_rootdirectory)


@tampering(refused=False)
def another_bucket(doc: dict[str, Any], t: Tampered) -> None:
    """The plan, its root and location agreeing, pointed at an identical copy in another bucket."""
    _elsewhere(doc, OTHER_BUCKET, t.case.rootdirectory)


@tampering(refused=False)
def another_prefix(doc: dict[str, Any], t: Tampered) -> None:
    """The plan pointed at an identical copy under another rootdirectory of the same bucket."""
    _elsewhere(doc, t.case.server.bucket, t.copy_rootdirectory)


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampered_plan_leaves_every_object_in_place(
    s3_server: SeaweedS3, tamper_world: Tampered, tmp_path: Path, name: str
) -> None:
    mutate, refused = TAMPERINGS[name]
    doc = json.loads(json.dumps(tamper_world.doc))
    mutate(doc, tamper_world)
    assert doc != tamper_world.doc
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc, indent=2) + "\n")
    before = bucket_snapshot(s3_server, s3_server.bucket, OTHER_BUCKET)
    result = apply(tamper_world.case, plan)
    after = bucket_snapshot(s3_server, s3_server.bucket, OTHER_BUCKET)
    assert len(after) == len(before)
    assert after == before, sorted(set(before.items()) ^ set(after.items()))[:5]
    assert "Traceback" not in result.output
    if refused:
        assert result.exit_code == 2, result.output
        assert "refusing the plan, nothing was deleted" in result.stderr, result.stderr
        assert journal_of(plan) is None
    else:
        assert result.exit_code != 1, result.output


def test_the_plan_untampered_deletes_what_it_says(s3_server: SeaweedS3, tamper_world: Tampered, tmp_path: Path) -> None:
    """The control for the tamperings: the same plan as written does remove its keys, and only under its prefix."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tamper_world.doc, indent=2) + "\n")
    copy = InBucket(s3_server, tamper_world.copy_rootdirectory, tamper_world.case.ledger, tamper_world.case.facts)
    copy_before, other_before = copy.state(), bucket_snapshot(s3_server, OTHER_BUCKET)
    result = apply(tamper_world.case, plan)
    assert result.exit_code == 0, result.output
    assert leftovers(tamper_world.case.state(), tamper_world.doc) == []
    assert copy.state() == copy_before and bucket_snapshot(s3_server, OTHER_BUCKET) == other_before
