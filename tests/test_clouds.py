"""Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite): trees the real registry wrote, copied key
for key, answer every command as their local copy does (plans and apply: test_clouds_apply.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cloud_harness import CloudServer, in_cloud
from tests.conftest import BROKEN, FIXTURES, Ran, cli, fixture_builder
from tests.registry_harness import Ledger, Registry, require_registry
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
    """GCS lists each object's MD5 as its ETag, Azure its Content-MD5 (the SDK's listing): no link is read by GET,
    and a link rewritten with other bytes of the same length is read, not taken from its old hash."""
    root = shared_root(FIXTURES / "basic.tar.gz")
    in_cloud(cloud, root, cloud_root, tmp_path)
    result = cli("scan", cloud.url(cloud_root), "--no-cache", env=cloud.environment())
    assert result.exit_code == 0, result.output
    figures = summary(result)
    links = sum(1 for p in (root / "docker/registry/v2").rglob("link"))
    assert int(figures["links-by-etag"]) == links, figures
    # A GET per manifest and per upload's `startedat`, and none per link.
    gets = int(figures["manifests"]) + int(figures["uploads"])
    assert f"({gets} get," in figures["requests"], figures


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
