"""The Kubernetes manifests of deploy/kubernetes/ read as a cluster reads them, and their pods run here instead."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.s3_harness import SeaweedS3, raw_keys, s3_storage_block, v2_prefix

TOP = Path(__file__).resolve().parents[1]
DEPLOY = TOP / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of one manifest file, in order."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@dataclass(frozen=True)
class Mount:
    """A volume mounted into the container: where, read-only or not (by the mount or by its claim), and what."""

    volume: str
    path: str
    read_only: bool
    source: dict[str, Any]


@dataclass(frozen=True)
class Pod:
    """The one container of a Job's or a CronJob's pod, with the pod around it."""

    file: str
    kind: str
    name: str
    spec: dict[str, Any]
    container: dict[str, Any]

    @property
    def mounts(self) -> list[Mount]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        out = []
        for m in self.container.get("volumeMounts", []):
            source = volumes[m["name"]]
            claim_read_only = bool(source.get("persistentVolumeClaim", {}).get("readOnly", False))
            out.append(Mount(m["name"], m["mountPath"], bool(m.get("readOnly", False)) or claim_read_only, source))
        return out

    def mount(self, volume: str) -> Mount:
        (found,) = [m for m in self.mounts if m.volume == volume]
        return found

    def mount_at(self, path: str) -> Mount:
        (found,) = [m for m in self.mounts if m.path == path]
        return found

    @property
    def script(self) -> str:
        """What the container runs: its `sh -c` script (every manifest here runs one)."""
        assert self.container["command"] == ["/bin/sh", "-c"], self.container["command"]
        (script,) = self.container["args"]
        return str(script)

    def storage_audit_lines(self) -> list[list[str]]:
        """Every storage-audit command line of the script, split into words, up to a `||` or `&&`."""
        lines = []
        for line in self.script.splitlines():
            words = shlex.split(re.split(r"\|\||&&", line)[0], comments=True)
            if words[:1] == ["storage-audit"]:
                lines.append(words)
        return lines

    @property
    def user(self) -> tuple[int, int]:
        """The process's user and group, as the pod's securityContext sets them (fsGroup standing for runAsGroup)."""
        context = self.spec.get("securityContext", {})
        group = context.get("runAsGroup", context.get("fsGroup", 0))
        return int(context["runAsUser"]), int(group)


def pods() -> list[Pod]:
    """Every Job's and CronJob's pod in deploy/kubernetes/."""
    found = []
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == "CronJob":
                spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            elif doc["kind"] == "Job":
                spec = doc["spec"]["template"]["spec"]
            else:
                continue
            (container,) = spec["containers"]
            found.append(Pod(path.name, doc["kind"], doc["metadata"]["name"], spec, container))
    return found


def pod(name: str) -> Pod:
    (found,) = [p for p in pods() if p.name == name]
    return found


def on_host(script: str, paths: Mapping[str, Path]) -> str:
    """`script` with each mount path replaced by the host directory standing for it, in one pass."""
    # Longest first, so that a mount inside another is matched whole; one pass, so that no host path is mapped.
    pattern = "|".join(re.escape(path) for path in sorted(paths, key=len, reverse=True))
    return re.sub(rf"(?:{pattern})(?=/|\b|$)", lambda m: str(paths[m[0]]), script)


def lay_out_volumes(pod: Pod, root: Path, given: Mapping[str, Path]) -> dict[str, Path]:
    """A host directory for each of the pod's mounts: `given` (by volume name), or a new one under `root`.

    A new directory is laid out as the kubelet lays out its volume: an emptyDir open to all, a claim with
    an fsGroup owned by that group, group-writable and setgid, so that what the pod creates there is its.
    """
    group = pod.spec.get("securityContext", {}).get("fsGroup")
    paths = {}
    for mount in pod.mounts:
        directory = given.get(mount.volume)
        if directory is None:
            directory = root / mount.volume
            directory.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in mount.source:
                directory.chmod(0o1777)
            elif group is not None:
                os.chown(directory, 0, int(group))
                directory.chmod(0o2775)
        paths[mount.path] = directory
    return paths


def storage_audit_shim(directory: Path) -> Path:
    """A directory holding a `storage-audit` command that runs this checkout's storage_audit."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "storage-audit"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m storage_audit "$@"\n', encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def run_on_host(
    pod: Pod, paths: Mapping[str, Path], shim: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the pod's script here with `sh`, its mount paths mapped to `paths`, this checkout's storage-audit first."""
    environment = {
        **os.environ,
        # Values given in the manifest; those the cluster gives (`valueFrom`) come in `env`.
        **{e["name"]: e["value"] for e in pod.container.get("env", []) if "value" in e},
        **env,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(TOP),
    }
    return subprocess.run(
        ["/bin/sh", "-c", on_host(pod.script, paths)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def bucket_configmap(server: SeaweedS3, rootdirectory: str, directory: Path) -> Path:
    """A directory holding the registry's config.yml for its bucket, as its ConfigMap would: no keys in it."""
    directory.mkdir(parents=True)
    lines = [line for line in s3_storage_block(server, rootdirectory) if not re.match(r"\s+(access|secret)key:", line)]
    (directory / "config.yml").write_text("version: 0.1\nstorage:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return directory


def aws_secret(server: SeaweedS3) -> dict[str, str]:
    """What the optional Secret `storage-audit-aws` holds, for the server: a key and its secret."""
    return {k: v for k, v in server.environment().items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def bucket_blobs(server: SeaweedS3, rootdirectory: str) -> dict[str, int]:
    """The blob data keys of the registry in the bucket and their sizes, as botocore lists them."""
    keys = raw_keys(server, v2_prefix(rootdirectory))
    return {k: int(e["Size"]) for k, e in keys.items() if re.search(r"/blobs/sha256/../[0-9a-f]{64}/data$", k)}
