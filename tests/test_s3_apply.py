"""Plans applied to a bucket, with the reference registry on its s3 driver: the guarantees of the local apply."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_audit.cleanup.plan import Plan
from tests.conftest import Ran, cli, fixture_builder
from tests.registry_harness import Client, parse_gc_output, require_registry
from tests.s3_harness import (
    RegistryInBucket,
    SeaweedS3,
    local_files,
    mirror_as_listed,
    multipart_uploads,
    put_objects,
    raw_client,
    raw_keys,
    s3_garbage_collect,
    s3_registry,
    s3_storage_block,
)
from tests.test_plan_apply import pull_verified

pytestmark = pytest.mark.registry

POLICIES = {
    "delete-untagged": ["--delete-untagged", "--uploads-older-than", "0s"],
    "keep-last-2": ["--keep-last", "2", "--uploads-older-than", "0s"],
    "everything": ["--keep-last", "1", "--delete-untagged", "--uploads-older-than", "0s", "--prune-empty-repositories"],
}


class Pushed(RegistryInBucket):
    def etags(self) -> dict[str, str]:
        """Every key under the registry's prefix, with its ETag."""
        return {key: entry["ETag"] for key, entry in raw_keys(self.server, self.prefix).items()}

    def plan(self, path: Path, *args: str, fmt: str = "json") -> dict[str, Any]:
        result = cli(
            "plan", self.url, *args, "--min-age", "0s", "-o", str(path), "-f", fmt, "-q", env=self.server.environment()
        )
        assert result.exit_code == 0, result.output
        return json.loads(path.read_text()) if fmt == "json" else {}

    def apply(self, plan: Path, *args: str, env: dict[str, str] | None = None) -> Ran:
        return cli("apply", str(plan), "-y", "--no-cache", *args, env=self.server.environment() if env is None else env)


def manifest_rank(server: SeaweedS3, prefix: str, digest: str) -> int:
    """0 for a referrer, 1 for an index, 2 for an image: the order in which `apply` removes their revisions."""
    key = f"{prefix}blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    doc = json.loads(raw_client(server).get_object(Bucket=server.bucket, Key=key)["Body"].read())
    return 0 if "subject" in doc else 1 if "manifests" in doc else 2


def push_basic(server: SeaweedS3, rootdirectory: str) -> None:
    build = fixture_builder()
    with s3_registry(server, rootdirectory) as reg:
        build.SCENARIOS["basic"](reg, random.Random(f"{build.SEED}:basic"))


@pytest.fixture
def basic(s3_server: SeaweedS3, s3_root: str) -> Iterator[Pushed]:
    """The `basic` scenario pushed through the registry into a rootdirectory of its own."""
    require_registry()
    push_basic(s3_server, s3_root)
    yield Pushed(s3_server, s3_root)


def image(client: Client, repo: str, tag: str, seed: str) -> str:
    rng = random.Random(seed)
    layer = rng.randbytes(300)
    return client.image(repo, [layer], {"architecture": "amd64", "os": "linux", "seed": seed}, tags=[tag]).digest


# -- planning -----------------------------------------------------------------------


def test_plan_records_the_location_and_each_key_as_listed(basic: Pushed, tmp_path: Path) -> None:
    doc = basic.plan(tmp_path / "plan.json", *POLICIES["everything"])
    server = basic.server
    assert doc["root"] == basic.url
    assert doc["location"] == {
        "bucket": server.bucket,
        "prefix": basic.prefix,
        "region": "us-east-1",
        "endpoint": server.endpoint,
    }
    text = (tmp_path / "plan.json").read_text()
    assert server.access_key not in text and server.secret_key not in text
    listed = raw_keys(server, basic.prefix)
    ops = {a["op"] for a in doc["actions"]}
    assert {"remove-tag", "remove-revision", "remove-blob", "remove-upload", "remove-layer-link"} <= ops
    for action in doc["actions"]:
        objects = action["precondition"]["objects"]
        assert objects or action["op"] == "remove-repository", action
        for rel, want in objects.items():
            entry = listed[basic.prefix + rel]
            assert want["etag"] == entry["ETag"].strip('"')
            assert want["size"] == entry["Size"]
            assert want["last_modified"] == entry["LastModified"].isoformat()
            assert rel == action["path"] or rel.startswith(action["path"] + "/")
    # Read and written again, a plan is the same document: its typed preconditions hold exactly what it says.
    assert json.dumps(Plan.from_json(doc).to_json(), indent=2) == json.dumps(doc, indent=2)
    uploads = multipart_uploads(server, basic.prefix)
    (upload,) = [a for a in doc["actions"] if a["op"] == "remove-upload"]
    (multipart,) = upload["precondition"]["multipart"]
    assert uploads[basic.prefix + upload["path"] + "/data"][0] == multipart["bytes"] > 0


def test_format_sh_is_refused_on_a_bucket_and_http_is_written(basic: Pushed, tmp_path: Path) -> None:
    result = cli("plan", basic.url, "--delete-untagged", "-f", "sh", "--no-cache", env=basic.server.environment())
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-audit: error: ") and "--format sh" in lines[0]
    args = ["plan", basic.url, "--delete-untagged", "--min-age", "0s", "-f", "http", "--registry-url", "http://r:5000"]
    http = cli(*args, "-q", env=basic.server.environment())
    assert http.exit_code == 0, http.output
    assert "delete_manifest team/app/server sha256:" in http.stdout
    assert "registry garbage-collect" in http.stdout


# -- applying -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_apply_removes_what_the_local_apply_removes_and_the_registry_still_serves_the_rest(
    policy: str, basic: Pushed, tmp_path: Path
) -> None:
    server = basic.server
    # The yardstick: the same plan applied by the local apply to a copy of the bucket's keys.
    copy = mirror_as_listed(server, basic.rootdirectory, tmp_path / "copy")
    local = cli(
        "plan",
        str(copy),
        *POLICIES[policy],
        "--min-age",
        "0s",
        "-o",
        str(tmp_path / "local.json"),
        env=server.environment(),
    )
    assert local.exit_code == 0, local.output
    doc = basic.plan(tmp_path / "plan.json", *POLICIES[policy])
    local_doc = json.loads((tmp_path / "local.json").read_text())
    assert [(a["op"], a["path"]) for a in doc["actions"]] == [(a["op"], a["path"]) for a in local_doc["actions"]]
    assert doc["actions"]
    applied = cli("apply", str(tmp_path / "local.json"), "-y", env=server.environment())
    assert applied.exit_code == 0, applied.output

    # One DeleteObjects per phase that removes keys, and one abort per upload: never a DELETE per key. Referrers,
    # indexes and images go in requests of their own (a request deletes its keys in no set order).
    phases = {a["op"] for a in doc["actions"] if a["precondition"]["objects"]}
    uploads = sum(1 for a in doc["actions"] if a["op"] == "remove-upload")
    ranks = [manifest_rank(server, basic.prefix, a["digest"]) for a in doc["actions"] if a["op"] == "remove-revision"]
    assert ranks == sorted(ranks)
    before = server.request_counts()
    result = basic.apply(tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    assert "; 0 actions skipped" in result.stderr
    after = server.request_counts()
    assert after["DELETE"] - before["DELETE"] == len(phases) + uploads + max(0, len(set(ranks)) - 1)

    keys = {k.removeprefix(basic.prefix) for k in basic.etags()}
    assert keys == local_files(copy)
    assert multipart_uploads(server, basic.prefix) == {}

    removed = {(a["repository"], a["digest"]) for a in doc["actions"] if a["op"] == "remove-revision"}
    kept_tags = [(r.split("/_manifests/")[0].removeprefix("repositories/"), r) for r in keys if "/current/link" in r]
    with s3_registry(server, basic.rootdirectory) as reg:
        problems = []
        for repo, rel in kept_tags:
            tag = rel.split("/_manifests/tags/")[1].split("/")[0]
            problems += pull_verified(reg, repo, tag)
        for rel in keys:
            if "/_manifests/revisions/" in rel:
                repo = rel.split("/_manifests/")[0].removeprefix("repositories/")
                digest = "sha256:" + rel.split("/")[-2]
                problems += pull_verified(reg, repo, digest)
        assert problems == []
        for repo, digest in removed:
            assert reg.request("GET", f"/v2/{repo}/manifests/{digest}").status == 404
    eligible, blobs, _ = parse_gc_output(s3_garbage_collect(server, basic.rootdirectory))
    assert eligible == set() and blobs == set()
    check = cli("check", basic.url, "-f", "json", "-q", "--no-cache", env=server.environment())
    assert check.exit_code == 0, check.output
    assert [f for f in json.loads(check.stdout) if f["severity"] == "error"] == []

    again = basic.apply(tmp_path / "plan.json")
    assert again.exit_code == 0 and "already applied to the end" in again.stderr


def test_a_changed_tag_is_skipped_and_its_manifest_kept(basic: Pushed, tmp_path: Path) -> None:
    server = basic.server
    doc = basic.plan(tmp_path / "plan.json", "--keep-last", "1")
    planned = [a for a in doc["actions"] if a["op"] == "remove-tag" and a["repository"] == "team/app"]
    assert planned
    moved = planned[0]
    with s3_registry(server, basic.rootdirectory) as reg:
        # The tag is pushed again, now naming another manifest: its `current/link` changes.
        digest = image(reg, "team/app", moved["tag"], "moved")
    result = basic.apply(tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    assert f"skipped {moved['path']}: " in result.stderr and "changed since planning" in result.stderr
    with s3_registry(server, basic.rootdirectory) as reg:
        assert pull_verified(reg, "team/app", moved["tag"]) == []
        assert reg.get_manifest("team/app", moved["tag"])[2] == digest


def test_a_layer_link_or_blob_written_again_since_planning_is_kept(basic: Pushed, tmp_path: Path) -> None:
    """Layer links and blobs are checked against the listing of the scan that judged their vetoes: a key written
    again before that scan (by a registry that was not read-only) is no longer what the plan saw."""
    server = basic.server
    doc = basic.plan(tmp_path / "plan.json", "--delete-untagged")
    link = next(a for a in doc["actions"] if a["op"] == "remove-layer-link")
    blob = next(a for a in doc["actions"] if a["op"] == "remove-blob" and a["digest"] != link["digest"])
    again = [basic.prefix + rel for action in (link, blob) for rel in action["precondition"]["objects"]]
    client = raw_client(server)
    contents = [(key, client.get_object(Bucket=server.bucket, Key=key)["Body"].read()) for key in again]
    time.sleep(1.1)  # a listing's times are to the second: the same bytes written again must show as written
    put_objects(server, contents)
    result = basic.apply(tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    for action in (link, blob):
        assert f"skipped {action['path']}: " in result.stderr, result.stderr
    assert result.stderr.count("changed since planning") == 2, result.stderr
    left = raw_keys(server, basic.prefix)
    assert all(key in left for key in again)
    gone = [
        basic.prefix + rel
        for a in doc["actions"]
        if a["op"] == "remove-blob" and a["digest"] not in (link["digest"], blob["digest"])
        for rel in a["precondition"]["objects"]
    ]
    assert gone and not any(key in left for key in gone)


def test_a_tag_is_exactly_its_own_keys_and_a_repository_never_a_nested_one(
    s3_server: SeaweedS3, s3_root: str, tmp_path: Path
) -> None:
    require_registry()
    with s3_registry(s3_server, s3_root) as reg:
        image(reg, "a", "v1", "a-v1")
        image(reg, "a", "v1.0", "a-v1.0")
        image(reg, "a/b", "v1", "ab-v1")
        image(reg, "c", "v1", "c-v1")
        image(reg, "c", "v1.0", "c-v1.0")
    pushed = Pushed(s3_server, s3_root)
    doc = pushed.plan(tmp_path / "tag.json", "--keep-last", "0", "--only-tag", "^v1$", "--repository", "c")
    assert [a["path"] for a in doc["actions"] if a["op"] == "remove-tag"] == ["repositories/c/_manifests/tags/v1"]
    result = pushed.apply(tmp_path / "tag.json")
    assert result.exit_code == 0, result.output
    keys = set(pushed.etags())
    assert not any("/repositories/c/_manifests/tags/v1/" in k for k in keys)
    assert any("/repositories/c/_manifests/tags/v1.0/current/link" in k for k in keys)

    doc = pushed.plan(tmp_path / "repo.json", "--keep-last", "0", "--repository", "a", "--prune-empty-repositories")
    assert [a["path"] for a in doc["actions"] if a["op"] == "remove-repository"] == ["repositories/a"]
    nested = {k: e for k, e in pushed.etags().items() if "/repositories/a/b/" in k}
    assert nested
    result = pushed.apply(tmp_path / "repo.json")
    assert result.exit_code == 0, result.output
    assert "; 0 actions skipped" in result.stderr, result.stderr + json.dumps(doc, indent=1)
    keys = set(pushed.etags())
    assert {k for k in keys if "/repositories/a/" in k} == set(nested)
    with s3_registry(s3_server, s3_root) as reg:
        assert pull_verified(reg, "a/b", "v1") == [] and pull_verified(reg, "c", "v1.0") == []
        assert reg.request("GET", "/v2/a/manifests/v1").status == 404


def _tamper(doc: dict[str, Any], how: str) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    actions = doc["actions"]
    blob = next(a for a in actions if a["op"] == "remove-blob")
    tag = next(a for a in actions if a["op"] == "remove-tag")
    if how == "dotdot":
        tag["precondition"]["objects"]["repositories/team/app/_manifests/tags/1.0/../../revisions/x/link"] = dict(
            next(iter(tag["precondition"]["objects"].values()))
        )
    elif how == "outside":
        # A key the action does not own: the kept tag `latest` rides along with a removed one.
        tag["precondition"]["objects"]["repositories/team/app/_manifests/tags/latest/current/link"] = dict(
            next(iter(tag["precondition"]["objects"].values()))
        )
    elif how == "prefix":
        tag["precondition"]["objects"]["../../other/docker/registry/v2/blobs/x"] = {}
    elif how == "bucket":
        doc["location"]["bucket"] = "other"
    elif how == "op":
        blob["op"] = "remove-upload"
    elif how == "path":
        blob["path"] = "blobs/sha256/../../repositories/team/app"
    return doc


@pytest.mark.parametrize("how", ["dotdot", "outside", "prefix", "bucket", "op", "path"])
def test_a_tampered_plan_deletes_nothing(how: str, basic: Pushed, tmp_path: Path) -> None:
    doc = basic.plan(tmp_path / "plan.json", *POLICIES["everything"])
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(_tamper(doc, how)))
    before = basic.etags()
    uploads = multipart_uploads(basic.server, basic.prefix)
    result = basic.apply(tampered)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "refusing the plan, nothing was deleted" in lines[0], result.stderr
    assert basic.etags() == before
    assert multipart_uploads(basic.server, basic.prefix) == uploads


def test_a_plan_for_one_prefix_is_refused_on_another(basic: Pushed, s3_root: str, tmp_path: Path) -> None:
    push_basic(basic.server, s3_root + "-other")
    other = Pushed(basic.server, s3_root + "-other")
    doc_path = tmp_path / "plan.json"
    basic.plan(doc_path, *POLICIES["everything"])
    before, others = basic.etags(), other.etags()
    for root in (other.url, f"s3://{basic.server.bucket}"):
        result = basic.apply(doc_path, "--root", root)
        assert result.exit_code == 2, result.output
        assert "refusing the plan, nothing was deleted" in result.stderr and len(result.stderr.splitlines()) == 1
    assert basic.etags() == before and other.etags() == others
    # Its own bucket by URL is accepted.
    result = basic.apply(doc_path, "--root", basic.url, "--dry-run")
    assert result.exit_code == 0, result.output
    assert basic.etags() == before


def test_quarantine_keeps_every_removed_key_and_one_command_restores_it(basic: Pushed, tmp_path: Path) -> None:
    server = basic.server
    before = {k: raw_client(server).get_object(Bucket=server.bucket, Key=k)["Body"].read() for k in basic.etags()}
    doc = basic.plan(tmp_path / "plan.json", "--delete-untagged")
    local = tmp_path / "quarantine"
    result = basic.apply(tmp_path / "plan.json", "--quarantine", str(local))
    assert result.exit_code == 0, result.output
    gone = set(before) - set(basic.etags())
    assert gone and {basic.prefix + p for p in local_files_below(local)} == gone
    for key in gone:
        assert (local / key.removeprefix(basic.prefix)).read_bytes() == before[key]
    assert f"aws s3 cp --recursive --endpoint-url {server.endpoint} {local}/ {basic.url}/docker/registry/v2/" in (
        result.stderr
    )
    assert len(doc["actions"]) > 0
    assert_copied_then_deleted(result.stderr, str(local), {k: before[k] for k in gone}, basic.prefix)


def assert_copied_then_deleted(stderr: str, quarantine: str, gone: dict[str, bytes], prefix: str) -> None:
    """The summary says the data was copied to the quarantine, then deleted, with the bytes of the blobs copied."""
    copied = sum(len(body) for key, body in gone.items() if key.startswith(prefix + "blobs/"))
    said = rf"copied \S+ \S+ \({copied:,} bytes\) to the quarantine {re.escape(quarantine)}, then deleted the originals"
    assert copied > 0 and re.search(rf"^{said} in the bucket; 0 actions skipped$", stderr, re.MULTILINE), stderr
    assert "freed" not in stderr


def test_quarantine_in_a_bucket_is_a_server_side_copy(basic: Pushed, tmp_path: Path) -> None:
    server = basic.server
    client = raw_client(server)
    before = {k: client.get_object(Bucket=server.bucket, Key=k)["Body"].read() for k in basic.etags()}
    basic.plan(tmp_path / "plan.json", "--delete-untagged")
    where = f"s3://{server.bucket}{basic.rootdirectory}-quarantine"
    result = basic.apply(tmp_path / "plan.json", "--quarantine", where)
    assert result.exit_code == 0, result.output
    gone = set(before) - set(basic.etags())
    qprefix = f"{basic.rootdirectory.strip('/')}-quarantine/"
    kept = raw_keys(server, qprefix)
    assert gone and {qprefix + k.removeprefix(basic.prefix) for k in gone} == set(kept)
    for key in gone:
        body = client.get_object(Bucket=server.bucket, Key=qprefix + key.removeprefix(basic.prefix))["Body"].read()
        assert body == before[key]
    assert f"aws s3 cp --recursive --endpoint-url {server.endpoint} {where}/ {basic.url}/docker/registry/v2/" in (
        result.stderr
    )
    assert_copied_then_deleted(result.stderr, where + "/", {k: before[k] for k in gone}, basic.prefix)
    # A quarantine that overlaps the registry's own keys is refused.
    refused = basic.apply(tmp_path / "plan.json", "--quarantine", f"s3://{server.bucket}")
    assert refused.exit_code == 2


def local_files_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_an_interrupted_apply_resumes_from_its_journal(basic: Pushed, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    doc = basic.plan(plan, *POLICIES["everything"])
    result = basic.apply(plan)
    assert result.exit_code == 0, result.output
    final = basic.etags()
    (journal,) = tmp_path.glob("plan.json.*.journal")
    # As if killed after its first half: the journal loses its end, the bucket keeps what was removed.
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[: 1 + len(doc["actions"]) // 2]) + "\n")
    again = basic.apply(plan)
    assert again.exit_code == 0, again.output
    assert "already gone" in again.stderr and "; 0 actions skipped" in again.stderr
    assert basic.etags() == final
    assert "already applied to the end" in basic.apply(plan).stderr


def test_rate_limit_paces_the_apply(basic: Pushed, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    basic.plan(plan, "--delete-untagged")
    before = basic.server.request_counts()
    started = time.monotonic()
    result = basic.apply(plan, "--max-requests-per-second", "20")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    after = basic.server.request_counts()
    requests = sum(after.values()) - sum(before.values())
    assert requests > 20
    assert elapsed >= (requests - 1) / 20 * 0.9, (requests, elapsed)


def test_a_manifest_tagged_after_planning_keeps_itself_and_its_blobs(basic: Pushed, tmp_path: Path) -> None:
    server = basic.server
    doc = basic.plan(tmp_path / "plan.json", "--delete-untagged")
    revision = next(a for a in doc["actions"] if a["op"] == "remove-revision" and a["repository"] == "team/app/server")
    with s3_registry(server, basic.rootdirectory) as reg:
        body, media_type, _ = reg.get_manifest(revision["repository"], revision["digest"])
        reg.put_manifest(revision["repository"], "rescued", body, media_type)
    result = basic.apply(tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    assert f"skipped {revision['path']}: a tag or a remaining manifest reaches it now" in result.stderr
    with s3_registry(server, basic.rootdirectory) as reg:
        assert pull_verified(reg, revision["repository"], "rescued") == []
    eligible, blobs, _ = parse_gc_output(s3_garbage_collect(server, basic.rootdirectory))
    assert eligible == set() and blobs == set()


def test_a_registry_configuration_file_plans_and_applies_with_its_own_credentials(
    basic: Pushed, tmp_path: Path
) -> None:
    server = basic.server
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nstorage:\n" + "\n".join(s3_storage_block(server, basic.rootdirectory)) + "\n")
    plan = tmp_path / "plan.json"
    args = ["plan", str(config), "--delete-untagged", "--min-age", "0s", "-o", str(plan), "-q", "--no-cache"]
    result = cli(*args, env={})
    assert result.exit_code == 0, result.output
    doc = json.loads(plan.read_text())
    assert doc["root"] == basic.url and doc["location"]["endpoint"] == server.endpoint
    assert server.secret_key not in plan.read_text() and server.access_key not in plan.read_text()
    before = basic.etags()
    # Without the file, the environment holds no credentials: one line, nothing deleted.
    without = basic.apply(plan, env={"AWS_EC2_METADATA_DISABLED": "true"})  # no waiting for a cloud's metadata
    assert without.exit_code == 2 and len(without.stderr.splitlines()) == 1, without.output
    assert basic.etags() == before
    result = basic.apply(plan, "--root", str(config), env={})
    assert result.exit_code == 0, result.output
    gone = {basic.prefix + k for a in doc["actions"] for k in a["precondition"]["objects"]}
    assert gone and set(basic.etags()) == set(before) - gone


def test_an_upload_aborted_since_planning_still_loses_its_keys(basic: Pushed, tmp_path: Path) -> None:
    server = basic.server
    doc = basic.plan(tmp_path / "plan.json", "--uploads-older-than", "0s")
    (upload,) = [a for a in doc["actions"] if a["op"] == "remove-upload"]
    (multipart,) = upload["precondition"]["multipart"]
    # As a run killed right after its abort leaves it: the multipart upload gone, its keys still there.
    key = basic.prefix + upload["path"] + "/data"
    raw_client(server).abort_multipart_upload(Bucket=server.bucket, Key=key, UploadId=multipart["upload_id"])
    assert any(k.startswith(basic.prefix + upload["path"] + "/") for k in basic.etags())
    result = basic.apply(tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    assert f"removed {upload['path']}" in result.stderr
    assert not any(k.startswith(basic.prefix + upload["path"] + "/") for k in basic.etags())
