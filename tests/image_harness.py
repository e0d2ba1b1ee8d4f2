"""Build the Containerfile with buildah on a Debian base that mmdebstrap makes, and run the image as a pod would.

No image can be pulled here: the base is Debian 12's own python3 (3.11), laid out by mmdebstrap into a
tarball and committed as an image, standing for the official slim Python image the Containerfile names by
default. Containers run with buildah's chroot isolation, which needs no user namespaces; buildah keeps its
images in a directory of the test run's own, with the kernel's overlay filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.registry_harness import required

TOP = Path(__file__).resolve().parents[1]
BASE = "localhost/debian-python:bookworm"
IMAGE = "localhost/storage-audit:test"
# Debian's python3 with its venv module, and the CA certificates an S3 endpoint needs; no documentation.
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def require_image_tools() -> tuple[str, str]:
    """buildah's and mmdebstrap's paths, or skip the calling test (fail it when the environment requires them)."""
    missing = "buildah and mmdebstrap are not installed (apt-get install -y buildah mmdebstrap)"
    buildah = required(shutil.which("buildah"), missing)
    mmdebstrap = required(shutil.which("mmdebstrap"), missing)
    required("root" if os.geteuid() == 0 else None, "building images with chroot isolation needs root")
    return buildah, mmdebstrap


@dataclass(frozen=True)
class Buildah:
    """buildah with its images under `home`, never in the machine's own container storage."""

    binary: str
    home: Path

    def command(self, *args: str) -> list[str]:
        return [
            self.binary,
            "--root",
            str(self.home / "storage"),
            "--runroot",
            str(self.home / "run"),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        """Run one buildah command and return its stdout; raise with its output when it fails."""
        done = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def run(
        self,
        container: str,
        command: Sequence[str],
        *,
        volumes: Mapping[Path, tuple[str, bool]] | None = None,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        drop_capabilities: bool = False,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` in `container`: each host path mounted at (path, read-only), as `user`, with `env`."""
        args = ["run", "--isolation", "chroot"]
        for host, (path, read_only) in (volumes or {}).items():
            args += ["-v", f"{host}:{path}:{'ro' if read_only else 'rw'}"]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        if user is not None:
            args += ["--user", user]
        if drop_capabilities:
            args += ["--cap-drop", "ALL"]
        return subprocess.run(
            self.command(*args, container, "--", *command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def inspect(self, image: str) -> dict[str, Any]:
        """The image's OCI configuration (`Entrypoint`, `Cmd`, `User`, `Env`, ...)."""
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["OCIv1"]["config"]
        return config

    def clean(self) -> None:
        """Remove every container and image, then the storage itself."""
        self("rm", "--all")
        self("rmi", "--all", "--force")
        shutil.rmtree(self.home, ignore_errors=True)


def build_base(buildah: Buildah, mmdebstrap: str, work: Path) -> str:
    """Debian 12 with its python3, made by mmdebstrap and committed as the image BASE; returns its name."""
    tarball = work / "debian-python.tar"
    options = [f"--dpkgopt={option}" for option in DPKG_OPTIONS]
    done = subprocess.run(
        [mmdebstrap, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", *options, "bookworm", str(tarball)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mmdebstrap exited {done.returncode}:\n{done.stderr[-3000:]}")
    container = buildah("from", "scratch").strip()
    buildah("add", container, str(tarball), "/")
    buildah("config", "--cmd", "python3", container)
    buildah("commit", "--quiet", "--rm", container, BASE)
    tarball.unlink()
    return BASE


def build_image(buildah: Buildah, base: str, work: Path) -> str:
    """The Containerfile built on `base`; returns the image's name.

    pip in the build downloads from PyPI: it is given this machine's CA bundle, through a pip
    configuration mounted for the build only, in case the way out is through a TLS-inspecting proxy.
    """
    volumes = []
    if CA_BUNDLE.is_file():
        pip_conf = work / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {CA_BUNDLE}\n", encoding="utf-8")
        volumes = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--build-arg",
        f"BASE={base}",
        *volumes,
        "--tag",
        IMAGE,
        "--file",
        str(TOP / "Containerfile"),
        str(TOP),
        timeout=1200,
    )
    return IMAGE


def directory_bytes(top: Path) -> int:
    """The bytes of the regular files under `top`, each hard link once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, files in os.walk(top):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size if not os.path.islink(os.path.join(directory, name)) else 0
    return total
