"""Plans applied on Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite): the keys a local apply
leaves, a killed apply resumed to the same keys, a tampered or misplaced plan refused with nothing deleted."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cloud_harness import CloudServer, in_cloud, v2_prefix
from tests.conftest import FIXTURES, cli
from tests.s3_harness import local_files
from tests.test_s3_apply import POLICIES, _tamper
from tests.test_s3_apply_proof import apply_process, journal_entries, kill_when

pytestmark = pytest.mark.slow


def plan(cloud: CloudServer, url: str, path: Path, *args: str) -> dict:
    result = cli("plan", url, *args, "--min-age", "0s", "-o", str(path), "-f", "json", "-q", env=cloud.environment())
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def keys_now(cloud: CloudServer, rootdirectory: str) -> set[str]:
    prefix = v2_prefix(rootdirectory)
    return {k.removeprefix(prefix) for k in cloud.keys(prefix)}


@pytest.mark.parametrize("policy", ["delete-untagged", "everything"])
def test_apply_leaves_the_keys_a_local_apply_leaves(
    policy: str, cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    copy = in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    url = cloud.url(cloud_root)
    doc = plan(cloud, url, tmp_path / "plan.json", *POLICIES[policy])
    local = plan(cloud, str(copy), tmp_path / "local.json", *POLICIES[policy])
    assert [(a["op"], a["path"]) for a in doc["actions"]] == [(a["op"], a["path"]) for a in local["actions"]]
    assert doc["location"] == cloud.origin(cloud_root)
    listed = cloud.keys(v2_prefix(cloud_root))
    for action in doc["actions"]:
        for rel, want in action["precondition"]["objects"].items():
            assert want["size"] == listed[v2_prefix(cloud_root) + rel] and want["etag"]
    assert cli("apply", str(tmp_path / "local.json"), "-y").exit_code == 0
    result = cli("apply", str(tmp_path / "plan.json"), "-y", "--no-cache", env=cloud.environment())
    assert result.exit_code == 0, result.output
    assert "; 0 actions skipped" in result.stderr, result.stderr
    assert keys_now(cloud, cloud_root) == local_files(copy)
    check = cli("check", url, "-f", "json", "-q", "--no-cache", env=cloud.environment())
    assert [f for f in json.loads(check.stdout) if f["severity"] == "error"] == []
    again = cli("apply", str(tmp_path / "plan.json"), "-y", "--no-cache", env=cloud.environment())
    assert again.exit_code == 0 and "already applied" in again.stderr, again.output


def test_killed_apply_resumes_to_the_same_keys(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    copy = in_cloud(cloud, shared_root(FIXTURES / "churn.tar.gz"), cloud_root, tmp_path)
    url = cloud.url(cloud_root)
    policy = POLICIES["everything"]
    doc = plan(cloud, url, tmp_path / "plan.json", *policy)
    plan(cloud, str(copy), tmp_path / "local.json", *policy)
    assert cli("apply", str(tmp_path / "local.json"), "-y").exit_code == 0
    before = keys_now(cloud, cloud_root)
    target = max(1, len(doc["actions"]) // 3)
    proc = apply_process(cloud, tmp_path / "plan.json", "--max-requests-per-second", "40")  # type: ignore[arg-type]
    assert kill_when(proc, lambda: journal_entries(tmp_path / "plan.json") >= target), "apply ended first"
    assert proc.returncode == -signal.SIGKILL
    assert keys_now(cloud, cloud_root) != before
    result = cli("apply", str(tmp_path / "plan.json"), "-y", "--no-cache", env=cloud.environment())
    assert result.exit_code == 0, result.output
    assert keys_now(cloud, cloud_root) == local_files(copy)


@pytest.mark.parametrize("how", ["dotdot", "outside", "prefix", "bucket", "op", "path"])
def test_a_tampered_plan_deletes_nothing(
    how: str, cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    doc = plan(cloud, cloud.url(cloud_root), tmp_path / "plan.json", *POLICIES["everything"])
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(_tamper(doc, how)))
    before = cloud.keys(v2_prefix(cloud_root))
    result = cli("apply", str(tampered), "-y", "--no-cache", env=cloud.environment())
    assert result.exit_code == 2, result.output
    assert "refusing the plan, nothing was deleted" in result.stderr and len(result.stderr.splitlines()) == 1
    assert cloud.keys(v2_prefix(cloud_root)) == before


def test_a_plan_names_its_provider_and_is_refused_elsewhere(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    doc = plan(cloud, cloud.url(cloud_root), tmp_path / "plan.json", "--delete-untagged")
    before = cloud.keys(v2_prefix(cloud_root))
    # The same bucket and prefix under another service's scheme is another place.
    other = dict(doc, root=doc["root"].replace(f"{cloud.scheme}://", "s3://", 1))
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = cli("apply", str(tmp_path / "other.json"), "-y", "--no-cache", env=cloud.environment())
    assert result.exit_code == 2, result.output
    result = cli("apply", str(tmp_path / "plan.json"), "-y", "--root", cloud.url("/x"), env=cloud.environment())
    assert result.exit_code == 2, result.output
    assert cloud.keys(v2_prefix(cloud_root)) == before
    # A bucket as quarantine is S3's: here a local directory.
    result = cli("apply", str(tmp_path / "plan.json"), "-y", "--quarantine", "gs://q/x", env=cloud.environment())
    assert result.exit_code == 2, result.output
    kept = tmp_path / "kept"
    result = cli(
        "apply", str(tmp_path / "plan.json"), "-y", "--no-cache", "--quarantine", str(kept), env=cloud.environment()
    )
    assert result.exit_code == 0, result.output
    gone = set(before) - set(cloud.keys(v2_prefix(cloud_root)))
    assert gone and {v2_prefix(cloud_root) + p for p in local_files_below(kept)} == gone


def local_files_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_a_key_changed_since_planning_is_left_and_reported(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    """A key overwritten between plan and apply: its action is skipped, the key keeps its new bytes, the rest goes."""
    in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    doc = plan(cloud, cloud.url(cloud_root), tmp_path / "plan.json", "--delete-untagged")
    blob = next(a for a in doc["actions"] if a["op"] == "remove-blob")
    (rel,) = blob["precondition"]["objects"]
    key = v2_prefix(cloud_root) + rel
    cloud.put(key, b"written since planning")
    result = cli("apply", str(tmp_path / "plan.json"), "-y", "--no-cache", env=cloud.environment())
    assert result.exit_code == 0, result.output
    assert f"skipped {blob['path']}: {rel} changed since planning" in result.stderr, result.stderr
    assert cloud.get(key) == b"written since planning"
    others = {r for a in doc["actions"] if a is not blob for r in a["precondition"]["objects"]}
    assert others and not others & keys_now(cloud, cloud_root)


@pytest.mark.parametrize("cloud", ["azure"], indirect=True)
def test_azure_deletes_only_blobs_unchanged_since_listed(cloud: CloudServer, cloud_root: str) -> None:
    """Azure's deletes carry `If-Match` with the listed ETag, in blob batches of 256: a blob written after the
    listing (the race the fresh listing cannot close) stays, and is named; a blob gone already is no error. (GCS's
    deletes are plain: obstore's listing gives no generation, see docs/object-storage.md.)"""
    from storage_audit.storage.bucket import S3Bucket, S3Location
    from storage_audit.storage.clouds import AzureSettings

    prefix = v2_prefix(cloud_root)
    cloud.put_many({f"{prefix}blobs/k{n:04}": b"%d" % n for n in range(300)})
    bucket = S3Bucket(S3Location(cloud.bucket, cloud_root.strip("/"), "az"), AzureSettings(), cloud.environment())
    etags = {rel: info.etag for rel, info in bucket.run(bucket.list_all_async()).objects.items()}
    assert len(etags) == 300
    changed = ["blobs/k0007", "blobs/k0290"]
    for rel in changed:
        cloud.put(prefix + rel, b"written after the listing")
    cloud.container().delete_blob(prefix + "blobs/k0008")  # type: ignore[attr-defined]
    assert bucket.delete_unchanged(etags) == set(changed)
    assert set(cloud.keys(prefix)) == {prefix + rel for rel in changed}
    assert bucket.counters.requests["delete"] == 2  # two blob batches, not 300 DELETEs
