"""Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite): trees the real registry wrote, copied key
for key, answer every command as their local copy does; plans apply as the local apply does, resume after a kill,
and a tampered plan deletes nothing."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cloud_harness import CloudServer, v2_prefix
from tests.conftest import BROKEN, FIXTURES, Ran, cli, fixture_builder
from tests.registry_harness import Ledger, Registry, require_registry
from tests.s3_harness import local_files
from tests.test_s3_apply import POLICIES, _tamper
from tests.test_s3_apply_proof import apply_process, journal_entries, kill_when
from tests.test_s3_commands import COMMANDS, answer, assert_same_answers
from tests.workloads import random_workload

pytestmark = pytest.mark.slow

SCENARIOS = sorted(fixture_builder().SCENARIOS)
BROKEN_FIXTURES = sorted(p.name.removesuffix(".tar.gz") for p in BROKEN.glob("*.tar.gz"))

_seeded: dict[int, Path] = {}


def seeded_world(seed: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded workload (index children deleted, referrers, deleted manifests) pushed to the real registry on its
    filesystem driver, once per run."""
    require_registry()
    if seed not in _seeded:
        root = tmp_path_factory.mktemp(f"seed-{seed}") / "root"
        with Registry(root, Ledger()) as reg:
            random_workload(reg, seed, delete_children=True)
        _seeded[seed] = root
    return _seeded[seed]


def in_cloud(cloud: CloudServer, root: Path, rootdirectory: str, scratch: Path) -> Path:
    """The local registry root's keys put under `rootdirectory`; their copy as the service lists them."""
    assert cloud.put_tree(root / "docker" / "registry" / "v2", v2_prefix(rootdirectory)) > 0
    return cloud.mirror(v2_prefix(rootdirectory), scratch / "copy")


def direct(name: str) -> list[str]:
    cases = [*SCENARIOS, "seed-3", *BROKEN_FIXTURES]
    return COMMANDS[cases.index(name) % len(COMMANDS)]


@pytest.mark.parametrize("name", [*SCENARIOS, "seed-3"])
def test_every_command_answers_as_on_the_local_copy(
    name: str,
    cloud: CloudServer,
    cloud_root: str,
    tmp_path: Path,
    shared_root: Callable[[Path], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = seeded_world(3, tmp_path_factory) if name == "seed-3" else shared_root(FIXTURES / f"{name}.tar.gz")
    copy = in_cloud(cloud, root, cloud_root, tmp_path)
    url = cloud.url(cloud_root)
    assert_same_answers(cloud, url, cloud_root, copy, tmp_path, direct(name), cloud.origin(cloud_root), ())


@pytest.mark.parametrize("name", BROKEN_FIXTURES[::8])
def test_damaged_trees_answer_as_on_the_local_copy(
    name: str, cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    copy = in_cloud(cloud, shared_root(BROKEN / f"{name}.tar.gz"), cloud_root, tmp_path)
    url = cloud.url(cloud_root)
    assert_same_answers(cloud, url, cloud_root, copy, tmp_path, direct(name), cloud.origin(cloud_root), ())


def summary(result: Ran) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in result.stderr.splitlines() if ": " in line)


def test_links_by_etag_where_the_listing_proves_them(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    """GCS lists each object's MD5 as its ETag: no link is read by GET. Azure's ETag proves nothing: each is."""
    in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    result = cli("scan", cloud.url(cloud_root), "--no-cache", env=cloud.environment())
    assert result.exit_code == 0, result.output
    figures = summary(result)
    links = int(figures["links-by-etag"])
    assert (links > 0) if cloud.name == "gcs" else (links == 0), figures


def _config(cloud: CloudServer, rootdirectory: str, **extra: str) -> str:
    if cloud.name == "gcs":
        params = {"bucket": cloud.bucket, "rootdirectory": rootdirectory, **extra}
        driver = "gcs"
    else:
        from storage_audit.storage.clouds import AZURITE_ACCOUNT, AZURITE_KEY

        params = {"accountname": AZURITE_ACCOUNT, "accountkey": AZURITE_KEY, "container": cloud.bucket}
        params |= {"rootdirectory": rootdirectory, **extra}
        driver = "azure"
    lines = [f"    {k}: {json.dumps(v)}" for k, v in params.items()]
    return "version: 0.1\nstorage:\n  " + driver + ":\n" + "\n".join(lines) + "\n"


def test_the_registry_configuration_is_a_root_and_keeps_its_secrets(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    copy = in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    want = answer(cloud, ["orphans", str(copy), "-m", "-f", "json", "-q"])
    config = tmp_path / "config.yml"
    config.write_text(_config(cloud, "/elsewhere"))
    # The registry's own override of the file's rootdirectory.
    env = cloud.environment() | {f"REGISTRY_STORAGE_{cloud.name.upper()}_ROOTDIRECTORY": cloud_root}
    result = cli("orphans", str(config), "-m", "-f", "json", "-q", "--no-cache", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == want
    # Wrong credentials: one line, exit 2, the secret never shown.
    secret = "wrong-secret-never-shown-0123"
    if cloud.name == "azure":
        config.write_text(
            _config(cloud, cloud_root, accountkey="d3Jvbmctc2VjcmV0LW5ldmVyLXNob3duLTAxMjM=", accountname="other")
        )
        secret = "d3Jvbmctc2VjcmV0LW5ldmVyLXNob3duLTAxMjM="
        env = cloud.environment() | {"AZURE_STORAGE_ENDPOINT": f"{cloud.endpoint}"}  # type: ignore[attr-defined]
    else:
        config.write_text(_config(cloud, cloud_root, keyfile=str(tmp_path / "missing.json")))
        config.write_text(config.read_text().replace("gcs:\n", f"gcs:\n    credentials: {{private_key: {secret}}}\n"))
        env = cloud.environment()
    result = cli("scan", str(config), "--no-cache", env=env)
    if cloud.name == "azure":
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("storage-audit: error: "), result.stderr
    assert secret not in result.output


def test_bad_urls_are_one_line_and_exit_2(cloud: CloudServer) -> None:
    for url in (f"{cloud.scheme}://", f"{cloud.scheme}:///root", f"{cloud.scheme}://b/a/../c"):
        result = cli("scan", url, env=cloud.environment())
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1
    # A bucket with no registry under the prefix: nothing to say about it.
    result = cli("scan", cloud.url("/nothing-here"), "--no-cache", env=cloud.environment())
    assert result.exit_code == 2 and "no registry under" in result.stderr, result.output


# -- plans and apply -------------------------------------------------------------------------


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
