"""Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite): trees the real registry wrote, copied key
for key, answer every command as their local copy does (plans and apply: test_clouds_apply.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from storage_audit.analysis.options import By
from tests.cloud_harness import CloudServer, in_cloud, v2_prefix
from tests.conftest import BROKEN, FIXTURES, Ran, cli, fixture_builder, unpacked
from tests.registry_harness import Ledger, Registry, require_registry
from tests.test_s3_commands import COMMANDS, answer, assert_same_answers, same_answer
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


# The read-only commands each damaged tree answers straight on the bucket (a `report --by` in turn per tree).
READ_ONLY: list[list[str]] = [["check", "-f", "json"], ["orphans", "-m", "-f", "json"], ["untagged", "-f", "json"]]


def _local_keys(root: Path) -> dict[str, bytes]:
    """What object storage can hold of a local tree: its regular files (no symbolic link, no empty directory)."""
    v2 = root / "docker" / "registry" / "v2"
    files = [p for p in v2.rglob("*") if p.is_file() and not p.is_symlink()]
    return {p.relative_to(v2).as_posix(): p.read_bytes() for p in files if p.relative_to(v2).as_posix().isprintable()}


_damaged: dict[str, dict[str, Path]] = {}


@pytest.fixture
def damaged(cloud: CloudServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every damaged fixture tree, its keys put once per emulator under `/broken/NAME` (all in one go), and its
    copy as the service lists it (by name)."""
    if cloud.name not in _damaged:
        originals = {name: unpacked(BROKEN / f"{name}.tar.gz") for name in BROKEN_FIXTURES}
        cloud.put_many(
            {
                v2_prefix(f"/broken/{name}") + rel: data
                for name, root in originals.items()
                for rel, data in _local_keys(root).items()
            }
        )
        scratch = tmp_path_factory.mktemp(f"damaged-{cloud.name}")
        copies = {name: cloud.mirror(v2_prefix(f"/broken/{name}"), scratch / name) for name in BROKEN_FIXTURES}
        for name, original in originals.items():
            # Key for key: the copy holds what the local tree holds, byte for byte.
            assert _local_keys(copies[name]) == _local_keys(original), name
        _damaged[cloud.name] = copies
    return _damaged[cloud.name]


@pytest.mark.parametrize("name", BROKEN_FIXTURES)
def test_damaged_trees_answer_as_on_the_local_copy(name: str, cloud: CloudServer, damaged: dict[str, Path]) -> None:
    """Every damaged fixture, keys written directly: `check`, `orphans`, `untagged` and `report` straight on the
    bucket answer as on a local copy of what it holds (which is the fixture, but for symbolic links, empty
    directories and names no key can have)."""
    url, copy = cloud.url(f"/broken/{name}"), damaged[name]
    by = list(By)[BROKEN_FIXTURES.index(name) % len(By)]
    for args in [*READ_ONLY, ["report", "--by", by.value, "-f", "json"]]:
        same_answer(
            answer(cloud, [args[0], url, *args[1:], "-q", "--no-cache"]),
            answer(cloud, [args[0], str(copy), *args[1:], "-q"]),
        )


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


@pytest.mark.parametrize("cloud", ["azure"], indirect=True)
def test_azure_uncommitted_blocks_are_not_read(
    cloud: CloudServer, cloud_root: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    """A block blob staged and never committed (the registry never leaves one: its uploads are append blobs) shows
    only in a listing asked for uncommitted blobs, as an empty blob: the scan reads the container as without it."""
    copy = in_cloud(cloud, shared_root(FIXTURES / "basic.tar.gz"), cloud_root, tmp_path)
    container = cloud.container()  # type: ignore[attr-defined]
    key = v2_prefix(cloud_root) + "repositories/team/app/_uploads/0b1a9e3e-staged/data"
    container.get_blob_client(key).stage_block("YmxvY2stMQ==", b"staged, never committed" * 64)
    listed = {b.name: b.size for b in container.list_blobs(name_starts_with=key, include=["uncommittedblobs"])}
    assert listed == {key: 0}
    assert not list(container.list_blobs(name_starts_with=key))
    for args in (["check", "-f", "json"], ["report", "--by", "repository", "-f", "json"]):
        same_answer(
            answer(cloud, [args[0], cloud.url(cloud_root), *args[1:], "-q", "--no-cache"]),
            answer(cloud, [args[0], str(copy), *args[1:], "-q"]),
        )
