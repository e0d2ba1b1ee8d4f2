"""deploy/kubernetes/: valid manifests, a CronJob that only reads the registry, and Jobs whose commands run."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import kubernetes_validate
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FIXTURES, REAL_FIXTURES, fixtures_built, unpack
from tests.facts import load_expected
from tests.manifests import (
    DEPLOY,
    MANIFESTS,
    TOP,
    Pod,
    aws_secret,
    bucket_blobs,
    bucket_configmap,
    documents,
    lay_out_volumes,
    pod,
    run_on_host,
    storage_audit_shim,
)
from tests.registry_harness import Registry
from tests.s3_harness import SeaweedS3
from tests.test_readme import blob_digests, needed_by_tags
from tests.workloads import random_workload

# The oldest Kubernetes with CronJob's timeZone, and the newest the schemas know.
KUBERNETES = ("1.27.0", kubernetes_validate.utils.latest_version())
READING = {"scan", "report", "check", "untagged", "orphans", "diff"}
NOW = (fixtures_built() + timedelta(days=1)).isoformat()
"""The time the commands run at: past, whatever today is, and the fixtures' grace period over."""


def test_the_manifests_are_the_cronjobs_the_plan_job_and_the_apply_job() -> None:
    kinds = {path.name: [(d["apiVersion"], d["kind"]) for d in documents(path)] for path in MANIFESTS}
    assert kinds == {
        "cronjob.yaml": [("v1", "PersistentVolumeClaim"), ("batch/v1", "CronJob")],
        "cronjob-s3.yaml": [("v1", "ServiceAccount"), ("v1", "PersistentVolumeClaim"), ("batch/v1", "CronJob")],
        "plan-job.yaml": [("batch/v1", "Job")],
        "apply-job.yaml": [("batch/v1", "Job")],
        "sharded-scan.yaml": [("v1", "PersistentVolumeClaim"), ("batch/v1", "Job"), ("batch/v1", "Job")],
    }
    # Both CronJobs write to the one claim: either file may be applied first, or both.
    claims = [d for path in MANIFESTS for d in documents(path) if d["kind"] == "PersistentVolumeClaim"]
    nightly = [d for d in claims if d["metadata"]["name"] == "storage-audit"]
    assert len(nightly) == 2 and nightly[0] == nightly[1]
    # The shares are written by pods on any node at once.
    (shared,) = [d for d in claims if d["metadata"]["name"] == "storage-audit-shards"]
    assert shared["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    # The schemas of the API, strict: a misspelt or misplaced field is refused, not ignored.
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schemas_refuse_a_misplaced_field() -> None:
    # The validation above can fail: readOnly belongs to the mount, not to the container.
    (_, cronjob) = documents(DEPLOY / "cronjob.yaml")
    cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["readOnly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cronjob, KUBERNETES[-1], strict=True)


def image_user() -> tuple[int, int]:
    """The `USER uid:gid` of the Containerfile's final stage."""
    (user,) = re.findall(r"^USER (\d+):(\d+)$", (TOP / "Containerfile").read_text(encoding="utf-8"), flags=re.M)
    return int(user[0]), int(user[1])


@pytest.mark.parametrize("name", ["storage-audit", "storage-audit-plan"])
def test_the_audit_and_the_plan_read_the_registry_read_only_as_the_image_user(name: str) -> None:
    job = pod(name)
    context, container_context = job.spec["securityContext"], job.container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == image_user()
    assert container_context["allowPrivilegeEscalation"] is False
    assert container_context["readOnlyRootFilesystem"] is True
    assert container_context["capabilities"]["drop"] == ["ALL"]
    registry = job.mount("registry")
    assert (registry.path, registry.read_only) == ("/var/lib/registry", True)
    # Read-only twice: the mount and the claim.
    assert registry.source["persistentVolumeClaim"]["readOnly"] is True
    assert job.mount("audit").read_only is False  # where snapshots, metrics and plans go


def test_the_s3_cronjob_reads_the_registry_configuration_read_only_with_the_aws_chain() -> None:
    cronjob = pod("storage-audit-s3")
    config = cronjob.mount("registry-config")
    assert (config.path, config.read_only) == ("/etc/docker/registry", True)
    assert cronjob.storage_audit_lines()[0][2] == "/etc/docker/registry/config.yml"
    # Credentials: the ServiceAccount's role (IRSA), or an optional Secret; none written in the manifest.
    (account,) = [d for d in documents(DEPLOY / "cronjob-s3.yaml") if d["kind"] == "ServiceAccount"]
    assert cronjob.spec["serviceAccountName"] == account["metadata"]["name"]
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert cronjob.container["envFrom"] == [{"secretRef": {"name": "storage-audit-aws", "optional": True}}]
    assert "env" not in cronjob.container
    context = cronjob.spec["securityContext"]
    assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == image_user()
    assert cronjob.container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", ["storage-audit", "storage-audit-s3"])
def test_the_cronjob_never_deletes(name: str) -> None:
    cronjob = pod(name)
    lines = cronjob.storage_audit_lines()
    assert [words[1] for words in lines] == ["scan", "report", "report"]
    assert {words[1] for words in lines} <= READING
    assert not re.search(r"\b(rm|rmdir|unlink|mv|apply|plan)\b", cronjob.script)
    # Snapshots with --keep, the Prometheus textfile and the HTML page, on the audit volume.
    scan, metrics, page = lines
    assert (
        scan[2] == {"storage-audit": "/var/lib/registry", "storage-audit-s3": "/etc/docker/registry/config.yml"}[name]
    )
    assert "-o" in scan and "--keep" in scan
    assert metrics[metrics.index("--format") + 1] == "prometheus" and "-o" in metrics
    assert page[page.index("--format") + 1] == "html" and "-o" in page
    outputs = [words[words.index("-o") + 1] for words in lines]
    assert outputs[0] == "$today" and "snapshots=/var/lib/storage-audit/snapshots\n" in cronjob.script
    assert all(output.startswith("/var/lib/storage-audit/") for output in outputs[1:])


def test_the_plan_job_deletes_nothing_and_the_apply_job_applies_its_plan() -> None:
    plan, apply = pod("storage-audit-plan"), pod("storage-audit-apply")
    (make, review) = plan.storage_audit_lines()
    assert make[1] == "plan" and review[1:3] == ["apply", make[make.index("-o") + 1]] and "--dry-run" in review
    (carry_out, verify) = apply.storage_audit_lines()
    assert carry_out[1:3] == review[1:3] and "--yes" in carry_out and "--quarantine" in carry_out
    assert verify[1:3] == ["check", "/var/lib/registry"]
    # The apply writes to the registry's volume, as the owner of its files, with no capability at all.
    assert apply.mount("registry").read_only is False
    assert apply.container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert apply.container["securityContext"]["allowPrivilegeEscalation"] is False
    for job in (plan, apply):
        assert job.spec["restartPolicy"] == "Never"


def tree_state(tree: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `tree` with its mode, size and modification time: what a read-only audit leaves alone."""
    state = {}
    for path in [tree, *tree.rglob("*")]:
        st = path.lstat()
        state[str(path.relative_to(tree))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def run(job: Pod, paths: dict[str, Path], shim: Path, now: str) -> str:
    done = run_on_host(job, paths, shim, {"STORAGE_AUDIT_NOW": now})
    assert done.returncode == 0, (job.name, done.stdout, done.stderr)
    return done.stdout + done.stderr


# Seconds per tree: each runs every command line of every manifest.
@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_the_jobs_commands_run_on_a_real_registry_tree(name: str, tmp_path: Path) -> None:
    # The mount paths stand for directories here; the tree is one the real registry wrote.
    tree = unpack(FIXTURES / f"{name}.tar.gz", tmp_path / "registry")
    shim = storage_audit_shim(tmp_path / "bin")
    now = NOW
    facts = load_expected(FIXTURES / f"{name}.expected.json")
    before, untouched = blob_digests(tree), tree_state(tree)

    cronjob = pod("storage-audit")
    paths = lay_out_volumes(cronjob, tmp_path / "volumes", {"registry": tree})
    audit = paths["/var/lib/storage-audit"]
    run(cronjob, paths, shim, now)
    (snapshot,) = (audit / "snapshots").iterdir()
    assert (snapshot / "metadata.json").is_file()
    metrics = {
        s.name: s.value
        for family in text_string_to_metric_families((audit / "metrics" / "storage_audit.prom").read_text())
        for s in family.samples
    }
    blob_bytes = sum(p.stat().st_size for p in tree.glob("docker/registry/v2/blobs/sha256/*/*/data"))
    assert metrics["storage_audit_physical_bytes"] == blob_bytes
    assert metrics["storage_audit_blobs"] == len(before)
    assert (audit / "report.html").read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")

    plan = pod("storage-audit-plan")
    review = run(plan, lay_out_volumes(plan, tmp_path / "volumes", {"registry": tree, "audit": audit}), shim, now)
    assert (audit / "plans" / "cleanup.json").is_file()
    assert "would remove" in review
    assert tree_state(tree) == untouched  # neither the audit nor the plan changed anything in the tree

    apply = pod("storage-audit-apply")
    run(apply, lay_out_volumes(apply, tmp_path / "volumes", {"registry": tree, "audit": audit}), shim, now)
    after = blob_digests(tree)
    assert after == needed_by_tags(facts) & before
    assert after < before or name == "referrers"  # every blob of that tree is a tag's
    quarantined = {"sha256:" + p.parent.name for p in (tree / "storage-audit-quarantine").glob("blobs/*/*/*/data")}
    assert quarantined == before - after


def test_the_s3_cronjob_runs_on_a_registry_in_a_bucket(
    s3_server: SeaweedS3,
    s3_registry_factory: Callable[[str], AbstractContextManager[Registry]],
    s3_root: str,
    tmp_path: Path,
) -> None:
    with s3_registry_factory(s3_root) as registry:
        random_workload(registry, 3)
    # The registry's ConfigMap, with no keys: the credentials come from the chain, here the optional Secret's.
    etc = bucket_configmap(s3_server, s3_root, tmp_path / "etc")

    cronjob = pod("storage-audit-s3")
    paths = lay_out_volumes(cronjob, tmp_path / "volumes", {"registry-config": etc})
    done = run_on_host(
        cronjob, paths, storage_audit_shim(tmp_path / "bin"), {"STORAGE_AUDIT_NOW": NOW, **aws_secret(s3_server)}
    )
    assert done.returncode == 0, (done.stdout, done.stderr)

    audit = paths["/var/lib/storage-audit"]
    prom = (audit / "metrics" / "storage_audit.prom").read_text(encoding="utf-8")
    metrics = {s.name: s.value for family in text_string_to_metric_families(prom) for s in family.samples}
    blobs = bucket_blobs(s3_server, s3_root)
    assert blobs and metrics["storage_audit_blobs"] == len(blobs)
    assert metrics["storage_audit_physical_bytes"] == sum(blobs.values())
    assert (audit / "report.html").is_file()
    assert list((audit / "cache").rglob("*"))  # the manifests, for tomorrow night


def _env(job: Pod, name: str) -> dict[str, object]:
    (found,) = [e for e in job.container["env"] if e["name"] == name]
    return found


def test_the_sharded_scan_is_an_indexed_job_of_n_shares_and_a_merge_of_n() -> None:
    (_, shares_doc, merge_doc) = documents(DEPLOY / "sharded-scan.yaml")
    shares, merge = pod("storage-audit-shards"), pod("storage-audit-merge")
    spec = shares_doc["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"]
    count = spec["completions"]
    # N in one place per Job, and the same in both; the merge reads the directory the Job's pods write.
    assert _env(shares, "SHARDS")["value"] == _env(merge, "SHARDS")["value"] == str(count)
    assert _env(shares, "RUN")["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
    assert _env(merge, "RUN")["value"] == shares_doc["metadata"]["name"]
    (scan,) = shares.storage_audit_lines()
    assert scan[1:3] == ["scan", "/etc/docker/registry/config.yml"]
    assert scan[scan.index("--shard") + 1] == "$JOB_COMPLETION_INDEX/$SHARDS"
    assert scan[scan.index("-o") + 1] == "/var/lib/storage-audit/shards/$RUN"
    (merged, metrics, page) = merge.storage_audit_lines()
    assert merged[1:3] == ["scan", "$shards"] and "-o" in merged
    assert [metrics[1], page[1]] == ["report", "report"]
    for job in (shares, merge):
        assert job.spec["restartPolicy"] == "Never"
        context = job.spec["securityContext"]
        assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == image_user()
        assert job.container["securityContext"]["readOnlyRootFilesystem"] is True
        assert job.container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert job.mount("audit").source["persistentVolumeClaim"]["claimName"] == "storage-audit-shards"
        assert {words[1] for words in job.storage_audit_lines()} <= READING
        assert not re.search(r"\b(rm|rmdir|unlink|mv|apply|plan)\b", job.script)
    assert shares.mount("registry-config").read_only is True
    assert merge_doc["spec"]["activeDeadlineSeconds"] > spec["activeDeadlineSeconds"]


@pytest.mark.slow
def test_the_sharded_scan_runs_on_a_registry_in_a_bucket(
    s3_server: SeaweedS3,
    s3_registry_factory: Callable[[str], AbstractContextManager[Registry]],
    s3_root: str,
    tmp_path: Path,
) -> None:
    from tests.conftest import cli

    with s3_registry_factory(s3_root) as registry:
        random_workload(registry, 5)
    etc = bucket_configmap(s3_server, s3_root, tmp_path / "etc")
    shares, merge = pod("storage-audit-shards"), pod("storage-audit-merge")
    count = int(_env(shares, "SHARDS")["value"])  # type: ignore[arg-type]
    shim = storage_audit_shim(tmp_path / "bin")
    paths = lay_out_volumes(shares, tmp_path / "volumes", {"registry-config": etc})
    # The merge starts with the shares, and waits for them.
    merge_paths = lay_out_volumes(merge, tmp_path / "volumes", {"audit": paths["/var/lib/storage-audit"]})
    waiting = run_on_host_started(merge, merge_paths, shim, {"STORAGE_AUDIT_NOW": NOW})
    try:
        for index in range(count):
            env = {"STORAGE_AUDIT_NOW": NOW, "JOB_COMPLETION_INDEX": str(index), "RUN": "storage-audit-shards"}
            done = run_on_host(shares, paths, shim, {**env, **aws_secret(s3_server)})
            assert done.returncode == 0, (index, done.stdout, done.stderr)
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, (out, err)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    audit = paths["/var/lib/storage-audit"]
    (snapshot,) = (audit / "snapshots").iterdir()
    assert len(list((audit / "shards" / "storage-audit-shards").iterdir())) == count
    # The merged snapshot answers as a scan of the whole bucket.
    url = f"s3://{s3_server.bucket}{s3_root}"
    env = {"STORAGE_AUDIT_NOW": NOW, **s3_server.environment()}
    for args in (["report", "--by", "repository"], ["orphans", "-m"], ["untagged"], ["check"]):
        whole = cli(args[0], url, *args[1:], "-f", "json", "-q", "--no-cache", env=env)
        merged = cli(args[0], str(snapshot), *args[1:], "-f", "json", "-q", env=env)
        assert whole.exit_code == merged.exit_code and json.loads(whole.stdout) == json.loads(merged.stdout), args
    prom = (audit / "metrics" / "storage_audit.prom").read_text(encoding="utf-8")
    metrics = {s.name: s.value for family in text_string_to_metric_families(prom) for s in family.samples}
    assert metrics["storage_audit_blobs"] == len(bucket_blobs(s3_server, s3_root))
    assert (audit / "report.html").is_file()


def run_on_host_started(job: Pod, paths: dict[str, Path], shim: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The pod's script started here, as run_on_host runs it, not waited for."""
    import os

    from tests.manifests import TOP, on_host

    environment = {
        **os.environ,
        **{e["name"]: e["value"] for e in job.container.get("env", []) if "value" in e},
        **env,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(TOP),
    }
    # The wait between looks at the shares is shortened here.
    script = on_host(job.script, paths).replace("sleep 30", "sleep 1")
    return subprocess.Popen(
        ["/bin/sh", "-c", script], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
