"""Retention rules on a registry pushed through the reference registry's HTTP API: `latest`, tags sharing a
manifest, --keep-last with the grace period, ties broken by version, and ages from push times or `created` times.

Push times are set on the tag links with os.utime and `created` times written in the config blobs, both
relative to a pinned clock; a plan applied leaves every kept tag pullable, digests verified.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, fixtures_built
from tests.registry_harness import Client, Pushed, Registry, require_registry, sha256
from tests.s3_harness import RegistryInBucket, SeaweedS3, raw_keys, s3_registry
from tests.test_plan_apply import V2, actions, apply_cli, copy_tree, keys, pull_verified, tag_link

NOW = fixtures_built() + timedelta(minutes=1)
"""The pinned clock, in the past (apply refuses a plan made later than its machine's clock): every time in the
tree and in the configs is set relative to it."""
DAY = 86400
REPO, MULTI = "rel", "multi"


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def push_releases(reg: Client) -> dict[str, Pushed]:
    """`rel`: v1.9, v1.10 and v2.0 (v1.10 also tagged `candidate`), `latest` on the oldest image; `multi`: two
    multi-arch indexes whose children were built at different times. Returns what each tag names."""
    rng = random.Random("storage-audit-retention")

    def image(repo: str, built: datetime, arch: str = "amd64", tags: tuple[str, ...] = ()) -> Pushed:
        layers = [rng.randbytes(64)]
        config = {
            "architecture": arch,
            "os": "linux",
            "created": rfc3339(built),
            "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
        }
        return reg.image(repo, layers, config, oci=True, tags=tags)

    named = {
        "latest": image(REPO, ago(400), tags=("latest",)),
        "v1.9": image(REPO, ago(90), tags=("v1.9",)),
        "v1.10": image(REPO, ago(60), tags=("v1.10", "candidate")),
        "v2.0": image(REPO, ago(10), tags=("v2.0",)),
    }
    named["candidate"] = named["v1.10"]
    # An index's age is its newest child's: m1 has a child built 5 days ago, m2's are 20 and 30 days old.
    m1 = [(image(MULTI, ago(50), "amd64"), "linux/amd64"), (image(MULTI, ago(5), "arm64"), "linux/arm64")]
    m2 = [(image(MULTI, ago(30), "amd64"), "linux/amd64"), (image(MULTI, ago(20), "arm64"), "linux/arm64")]
    named["m1"] = reg.index(MULTI, m1, tags=("m1",))
    named["m2"] = reg.index(MULTI, m2, tags=("m2",))
    return named


@dataclass
class Releases:
    root: Path
    named: dict[str, Pushed]
    scratch: Path

    def copy(self, name: str, pushed: dict[tuple[str, str], float] | None = None) -> Path:
        """A copy with every mtime 200 days before NOW, as an old registry; `pushed` sets tag links' ages (days)."""
        root = copy_tree(self.root, self.scratch / name)
        set_all(root, ago(200))
        for (repo, tag), days in (pushed or {}).items():
            when = ago(days).timestamp()
            os.utime(tag_link(root / V2, repo, tag), (when, when))
        return root


def set_all(root: Path, when: datetime) -> None:
    """Every mtime under `root` set to `when`, as `cp -r` (which sets them all to the moment of the copy) does."""
    stamp = when.timestamp()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (stamp, stamp), follow_symlinks=False)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Releases]:
    require_registry()
    base = tmp_path_factory.mktemp("retention")
    with Registry(base / "root") as reg:
        named = push_releases(reg)
    yield Releases(base / "root", named, base / "copies")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def pinned(pin_clock: Callable[[datetime], datetime]) -> None:
    pin_clock(NOW)


# Push times that follow the versions, `latest` oldest: the order a release pipeline leaves.
IN_ORDER = {
    (REPO, "latest"): 100,
    (REPO, "v1.9"): 80,
    (REPO, "v1.10"): 50,
    (REPO, "candidate"): 50,
    (REPO, "v2.0"): 9,
    (MULTI, "m1"): 40,
    (MULTI, "m2"): 30,
}


def plan(root: Path, *policy: str) -> tuple[Path, dict[str, Any], str]:
    """`plan ROOT POLICY...` into a file beside ROOT (the last plan made there); returns the file, its document
    and stderr."""
    out = root.parent / f"{root.name}.plan.json"
    code, _, err = cli("plan", root, *policy, "-o", out, "-q")
    assert code == 0, err
    return out, json.loads(out.read_text()), err


def removed_tags(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return keys(doc, "remove-tag", "repository", "tag")


def applied_and_pulled(releases: Releases, root: Path, out: Path, doc: dict[str, Any]) -> None:
    """Apply the plan; the registry restarted on the result serves exactly the tags not removed, each pulling
    whole with its digest verified."""
    code, _, err = apply_cli(out)
    assert code == 0, err
    every = {(repo, tag) for repo, tag in IN_ORDER}
    kept = every - removed_tags(doc)
    with Registry(root) as reg:
        for repo in (REPO, MULTI):
            assert sorted(reg.tags(repo)) == sorted(t for r, t in kept if r == repo)
        problems = [p for repo, tag in sorted(kept) for p in pull_verified(reg, repo, tag)]
        assert problems == []
        for repo, tag in kept:
            resp = reg.request(
                "HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": releases.named[tag].media_type}
            )
            assert resp.headers.get("docker-content-digest") == releases.named[tag].digest
    code, _, err = cli("check", root, "-q")
    assert code == 0, err


# --------------------------------------------------------------------------
# Each rule alone


def test_latest_is_kept_unless_named(releases: Releases) -> None:
    root = releases.copy("latest", IN_ORDER)
    _, doc, _ = plan(root, "--older-than", "30d", "--repository", REPO, "--min-age", "0s")
    # Every tag of rel is older than 30 days but v2.0; `latest`, the oldest, stays.
    assert removed_tags(doc) == {(REPO, "v1.9"), (REPO, "v1.10"), (REPO, "candidate")}
    _, doc, _ = plan(root, "--older-than", "30d", "--only-tag", "^latest$", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "latest")}
    # A pattern that matches `latest` without spelling it does not name it.
    _, doc, _ = plan(root, "--older-than", "30d", "--only-tag", "^l", "--min-age", "0s")
    assert removed_tags(doc) == set()
    _, doc, _ = plan(root, "--older-than", "30d", "--repository", REPO, "--no-keep-latest", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, t) for t in ("latest", "v1.9", "v1.10", "candidate")}


def test_a_tag_sharing_its_manifest_with_a_kept_tag_is_kept(releases: Releases) -> None:
    root = releases.copy("shared", IN_ORDER)
    # `candidate` is v1.10's manifest: v1.10 is not considered, so candidate stays with it.
    _, doc, _ = plan(root, "--older-than", "0s", "--only-tag", "^(candidate|v1\\.9)$", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9")}
    # Both beyond the last one: they go together, and their manifest with them.
    out, doc, _ = plan(root, "--keep-last", "1", "--repository", REPO, "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9"), (REPO, "v1.10"), (REPO, "candidate")}
    assert keys(doc, "remove-revision", "digest") == {(releases.named[t].digest,) for t in ("v1.9", "v1.10")}
    applied_and_pulled(releases, root, out, doc)


def test_keep_last_keeps_n_besides_what_the_grace_period_holds(releases: Releases) -> None:
    # v2.0 pushed 10 minutes ago, inside the hour of grace: the last one besides it is v1.10 (and candidate).
    root = releases.copy("grace", {**IN_ORDER, (REPO, "v2.0"): 10 / (24 * 60)})
    out, doc, _ = plan(root, "--keep-last", "1", "--repository", REPO)
    assert removed_tags(doc) == {(REPO, "v1.9")}
    applied_and_pulled(releases, root, out, doc)


def test_ties_on_push_time_are_broken_by_version(releases: Releases) -> None:
    same = dict.fromkeys([(REPO, "v1.9"), (REPO, "v1.10"), (REPO, "candidate"), (REPO, "v2.0")], 50)
    root = releases.copy("versions", {**IN_ORDER, **same})
    # v2.0 and v1.10 are the two highest versions; by name, v1.9 would sort after v1.10.
    out, doc, _ = plan(root, "--keep-last", "2", "--only-tag", "^v", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9")}
    applied_and_pulled(releases, root, out, doc)


def test_version_key_orders_release_tags() -> None:
    from storage_audit.cleanup.plan import version_key

    tags = ["v1.10", "latest", "v2.0", "v1.9", "2.0rc1", "v1.9.1", "build-7"]
    assert sorted(tags, key=lambda t: (version_key(t), t)) == [
        "build-7",
        "latest",
        "v1.9",
        "v1.9.1",
        "v1.10",
        "2.0rc1",
        "v2.0",
    ]


def test_age_from_created_judges_images_by_their_build(releases: Releases) -> None:
    # Pushed in the order of their versions; built: v1.9 90 days ago, v1.10 60, v2.0 10; m1 5, m2 20.
    root = releases.copy("created", IN_ORDER)
    _, doc, err = plan(root, "--older-than", "70d", "--age-from", "created", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9")}
    assert all("built 20" in a["reason"] for a in actions(doc, "remove-tag")), doc
    assert "warning" not in err
    # m2 was pushed after m1, but m1 holds the newer build: an index is as new as its newest child.
    _, by_push, _ = plan(root, "--keep-last", "1", "--repository", MULTI, "--min-age", "0s")
    assert removed_tags(by_push) == {(MULTI, "m1")}
    out, doc, _ = plan(root, "--keep-last", "1", "--repository", MULTI, "--age-from", "created", "--min-age", "0s")
    assert removed_tags(doc) == {(MULTI, "m2")}
    applied_and_pulled(releases, root, out, doc)


def test_reset_push_times_warn_and_created_survives_the_copy(releases: Releases) -> None:
    # As after `cp -r`: every tag looks pushed in one second, now.
    root = releases.copy("copied")
    set_all(root, ago(0.5))
    _, doc, err = plan(root, "--older-than", "30d", "--min-age", "0s")
    assert removed_tags(doc) == set()
    assert "push times look reset" in err and "rel" in err and "--age-from created" in err
    out, doc, err = plan(root, "--older-than", "30d", "--age-from", "created", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9"), (REPO, "v1.10"), (REPO, "candidate")}
    assert "look reset" not in err
    applied_and_pulled(releases, root, out, doc)


# --------------------------------------------------------------------------
# Combined


def test_rules_combined(releases: Releases) -> None:
    root = releases.copy("combined", IN_ORDER)
    # Tags beyond the last one by build that are also built over 25 days ago: in rel all but v2.0, except
    # `latest`; in multi, m2 is beyond m1 but built 20 days ago.
    out, doc, _ = plan(root, "--keep-last", "1", "--older-than", "25d", "--age-from", "created", "--min-age", "0s")
    assert removed_tags(doc) == {(REPO, "v1.9"), (REPO, "v1.10"), (REPO, "candidate")}
    applied_and_pulled(releases, root, out, doc)


# --------------------------------------------------------------------------
# In object storage


def test_age_from_created_in_a_bucket(
    s3_server: SeaweedS3, s3_root: str, tmp_path: Path, pin_clock: Callable[[datetime], datetime]
) -> None:
    """Config blobs are read from the bucket (and cached by digest, as manifests are): `new`, pushed first, is
    the newer build."""
    require_registry()
    configs = []
    with s3_registry(s3_server, s3_root) as reg:
        for tag, year in (("new", 2002), ("old", 2001)):
            layers = [tag.encode() * 40]
            config = {"architecture": "amd64", "os": "linux", "created": f"{year}-01-01T00:00:00Z"}
            configs.append(json.loads(reg.image("app", layers, config, oci=True, tags=(tag,)).body)["config"]["digest"])
    bucket = RegistryInBucket(s3_server, s3_root)
    # The clock just after the last write the bucket shows: every push is older than it.
    pin_clock(
        max(entry["LastModified"] for entry in raw_keys(s3_server, bucket.prefix).values()) + timedelta(minutes=1)
    )
    cache = tmp_path / "cache"

    def removed(*policy: str) -> set[tuple[str, str]]:
        out = tmp_path / "plan.json"
        args = ("plan", bucket.url, *policy, "--min-age", "0s", "--cache-dir", cache, "-o", out, "-q")
        code, _, err = cli(*args, env=s3_server.environment())
        assert code == 0, err
        return removed_tags(json.loads(out.read_text()))

    assert removed("--keep-last", "1") == {("app", "new")}
    assert removed("--keep-last", "1", "--age-from", "created") == {("app", "old")}
    cached = {f"sha256:{p.name}" for p in (cache / "manifests" / "sha256").glob("*/*")}
    assert set(configs) <= cached
    # Read again from the cache: the same answer.
    assert removed("--keep-last", "1", "--age-from", "created") == {("app", "old")}
