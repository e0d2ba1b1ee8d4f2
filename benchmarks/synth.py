"""Write a synthetic registry storage tree laid out exactly as the reference registry 2.8 does."""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MT_IN_TOTO = "application/vnd.in-toto+json"

EMPTY_JSON = b"{}"

# (artifactType, payload media type) of the referrers tools attach to images.
ARTIFACT_KINDS = (
    ("application/vnd.dev.cosign.artifact.sig.v1+json", "application/vnd.dev.cosign.simplesigning.v1+json"),
    ("application/vnd.cncf.notary.signature", "application/jose+json"),
    ("application/spdx+json", "application/spdx+json"),
    ("application/vnd.in-toto+json", "application/vnd.in-toto+json"),
)

# amd64 first: every multi-arch image carries it, as real ones do.
PLATFORMS: tuple[dict[str, str], ...] = (
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
    {"architecture": "ppc64le", "os": "linux"},
    {"architecture": "s390x", "os": "linux"},
)

ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell", "cyberdyne", "soylent")
TEAMS = ("platform", "data", "web", "infra", "ml", "payments", "search", "mobile", "sre", "security")
APPS = (
    "api",
    "worker",
    "frontend",
    "gateway",
    "auth",
    "billing",
    "cache",
    "db-migrate",
    "scheduler",
    "etl",
    "notifier",
    "proxy",
    "indexer",
    "ui",
    "backend",
    "cron",
    "exporter",
    "sidecar",
)
NESTED_SUFFIXES = ("debug", "cache", "tools", "builder")

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")


def repository_names(rng: random.Random, count: int, apps: tuple[str, ...] = APPS) -> list[str]:
    """`count` distinct repository names, flat, in an organisation or a team, a few nested in another one."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        i = len(names)
        roll = rng.random()
        app = f"{rng.choice(apps)}-{i}"
        if roll < 0.03 and names:
            # A repository nested inside another one (`a` and `a/b` both exist).
            name = f"{rng.choice(names)}/{rng.choice(NESTED_SUFFIXES)}"
        elif roll < 0.25:
            name = app
        elif roll < 0.6:
            name = f"{rng.choice(ORGS)}/{app}"
        else:
            name = f"{rng.choice(ORGS)}/{rng.choice(TEAMS)}/{app}"
        if name in seen or len(name) > 255:
            continue
        assert all(_COMPONENT.fullmatch(part) for part in name.split("/")), name
        seen.add(name)
        names.append(name)
    return names


KIB = 1024
MIB = 1024 * KIB
MIN_LAYER = 2 * KIB
MAX_LAYER = 400 * MIB

# Shares of the content mix; the layer count per image is derived from the blob budget.
MULTIARCH_TAG_SHARE = 0.10
OVERWRITE_SHARE = 0.45
MOUNT_SHARE = 0.02
ARTIFACT_SHARE = 0.015
ORPHAN_SHARE = 0.05
LINKED_ORPHAN_SHARE = 0.3
DELETED_REVISION_SHARE = 0.01
BASE_IMAGE_SHARE = 0.85
OCI_SHARE = 0.45
OCI_NO_MEDIATYPE_SHARE = 0.2
ATTESTATION_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Stats:
    """What one `generate` call wrote."""

    repositories: int
    tags: int
    tag_history: int
    manifests: int
    images: int
    indexes: int
    index_children: int
    artifacts: int
    blobs: int
    configs: int
    layers: int
    orphans: int
    revisions: int
    deleted_revisions: int
    layer_links: int
    uploads: int
    files: int
    apparent_bytes: int
    seconds: float

    def summary(self, v2: str) -> str:
        return (
            f"wrote {v2}: {self.repositories} repositories, {self.tags} tags "
            f"({self.tag_history} history entries), {self.manifests} manifests "
            f"({self.images} images incl. index children, {self.indexes} indexes with "
            f"{self.index_children} children, "
            f"{self.artifacts} artifacts), {self.blobs} blobs ({self.configs} configs, "
            f"{self.layers} layers, {self.orphans} orphans), {self.revisions} revision links "
            f"({self.deleted_revisions} deleted), {self.layer_links} layer links, "
            f"{self.uploads} uploads; {self.files} files, "
            f"{self.apparent_bytes / 2**30:.1f} GiB apparent, in {self.seconds:.1f}s"
        )


@dataclass(frozen=True, slots=True)
class _Layer:
    hex: str
    size: int


@dataclass(frozen=True, slots=True)
class _Manifest:
    hex: str
    size: int
    media_type: str
    # Every blob a repository must link to hold this manifest (config, layers, children's).
    blobs: tuple[str, ...]
    layers: tuple[_Layer, ...] = ()
    oci: bool = False


@dataclass(slots=True)
class _Tag:
    name: str
    multiarch: bool
    oci: bool
    history: list[_Manifest] = field(default_factory=list)


@dataclass(slots=True)
class _Repo:
    name: str
    tags: dict[str, _Tag] = field(default_factory=dict)
    # Revision hex -> True once pushed; insertion order is push order.
    revisions: dict[str, bool] = field(default_factory=dict)
    layer_links: set[str] = field(default_factory=set)
    images: list[_Manifest] = field(default_factory=list)
    next_version: int = 0


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _docker_json(doc: object) -> bytes:
    # The docker client and the registry's schema2 builder indent with three spaces.
    return json.dumps(doc, indent=3).encode()


def _oci_json(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class _Generator:
    def __init__(self, root: Path, repositories: int, manifests: int, blobs: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.v2 = root / "docker" / "registry" / "v2"
        self.blob_root = str(self.v2 / "blobs" / "sha256")
        self.repo_root = str(self.v2 / "repositories")
        self.target_repositories = max(1, min(repositories, manifests))
        self.target_manifests = max(1, manifests)
        self.target_blobs = max(blobs, 0)
        self.target_orphans = round(self.target_blobs * ORPHAN_SHARE)
        self.blob_hexes: set[str] = set()
        self.files = 0
        self.apparent = 0
        self.manifests = 0
        self.images = 0
        self.indexes = 0
        self.children = 0
        self.artifacts = 0
        self.configs = 0
        self.layers = 0
        self.orphans = 0
        self.clock = datetime(2022, 1, 3, 9, 0, 0, tzinfo=UTC)
        self.repos: list[_Repo] = []
        self.bases: dict[str, list[tuple[_Layer, ...]]] = {}
        self.base_weights: list[float] = []

    # -- files ---------------------------------------------------------------

    def _write(self, path: str, content: bytes) -> None:
        with open(path, "xb") as f:
            f.write(content)
        self.files += 1
        self.apparent += len(content)

    def _blob(self, hexd: str, content: bytes | None = None, size: int = 0) -> bool:
        if hexd in self.blob_hexes:
            return False
        self.blob_hexes.add(hexd)
        directory = f"{self.blob_root}/{hexd[:2]}/{hexd}"
        os.mkdir(directory)
        if content is not None:
            self._write(directory + "/data", content)
        else:
            # Layer contents are never read by the tools under test, so a hole costs no disk.
            with open(directory + "/data", "xb") as f:
                f.truncate(size)
            self.files += 1
            self.apparent += size
        return True

    def _link(self, directory: str, hexd: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._write(directory + "/link", f"sha256:{hexd}".encode())

    # -- random content ------------------------------------------------------

    def _hex(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"

    def _size(self, median: float, sigma: float) -> int:
        size = int(self.rng.lognormvariate(math.log(median), sigma))
        return min(MAX_LAYER, max(MIN_LAYER, size))

    def _tick(self) -> str:
        self.clock += timedelta(seconds=self.rng.randint(60, 4 * 3600))
        return self.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # -- planning the repositories and the shared bases -------------------------

    def _plan_bases(self) -> None:
        # A few hundred shared base layers at full size; popularity is Zipf-like so a
        # handful of bases sit under most images, as distro bases do in practice.
        budget = max(0, self.target_blobs - self.target_orphans - 2 * self.target_manifests)
        shared = max(3, min(600, budget // 200))
        per_platform = max(1, shared // (2 * len(PLATFORMS)))
        for platform in PLATFORMS:
            arch = _arch(platform)
            bases: list[tuple[_Layer, ...]] = []
            for _ in range(per_platform if arch in ("amd64", "arm64") else max(1, per_platform // 3)):
                chain = tuple(_Layer(self._hex(), self._size(25 * MIB, 0.9)) for _ in range(self.rng.randint(1, 3)))
                bases.append(chain)
            self.bases[arch] = bases
        longest = max(len(v) for v in self.bases.values())
        self.base_weights = [1.0 / (i + 1) for i in range(longest)]

    # -- building manifests ----------------------------------------------------

    def _fresh_layers_per_image(self) -> float:
        manifests_left = max(1, self.target_manifests - self.manifests)
        # Images are about 90% of manifests once indexes and artifacts are counted.
        ratio = self.images / self.manifests if self.manifests else 0.9
        images_left = max(1.0, manifests_left * ratio)
        blobs_so_far = len(self.blob_hexes)
        available = self.target_blobs - self.target_orphans - blobs_so_far - manifests_left * (1 + ratio)
        return max(0.0, available / images_left)

    def _image_layers(self, repo: _Repo, arch: str, previous: _Manifest | None) -> list[_Layer]:
        rng = self.rng
        target = self._fresh_layers_per_image()
        layers: list[_Layer] = []
        if previous is not None and previous.layers and rng.random() < 0.7:
            # A rebuild keeps the lower layers of the previous version of the tag.
            keep = max(0, len(previous.layers) - rng.randint(1, 2))
            layers.extend(previous.layers[:keep])
        elif rng.random() < BASE_IMAGE_SHARE and self.bases.get(arch):
            bases = self.bases[arch]
            layers.extend(rng.choices(bases, weights=self.base_weights[: len(bases)])[0])
        cap = max(8, math.ceil(target * 1.5) + len(layers))
        fresh = int(target) + (1 if rng.random() < target - int(target) else 0)
        fresh = max(0, min(fresh + rng.randint(-1, 1), cap - len(layers)))
        if not layers and fresh == 0:
            fresh = 1 if target > 0 or not repo.images else 0
            if fresh == 0:
                layers.extend(rng.choice(repo.images).layers[:1])
        for _ in range(fresh):
            layer = _Layer(self._hex(), self._size(1.5 * MIB, 2.2))
            layers.append(layer)
        for layer in layers:
            if self._blob(layer.hex, size=layer.size):
                self.layers += 1
        return layers

    def _config(self, platform: dict[str, str], layers: list[_Layer], repo: _Repo) -> bytes:
        created = self._tick()
        history = [{"created": created, "created_by": f"/bin/sh -c #(nop) step {i}"} for i in range(len(layers))]
        doc: dict[str, object] = {
            "architecture": platform["architecture"],
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": [f"/usr/local/bin/{repo.name.rsplit('/', 1)[-1]}"],
                "WorkingDir": "/app",
                "Labels": {"org.opencontainers.image.source": f"https://git.example.com/{repo.name}"},
            },
            "created": created,
            "history": history,
            "os": platform["os"],
            "rootfs": {
                "type": "layers",
                # diff_ids are the digests of the uncompressed tars, derived so a shared
                # layer gets the same diff_id in every image that uses it.
                "diff_ids": [f"sha256:{_sha256(layer.hex.encode())}" for layer in layers],
            },
        }
        if "variant" in platform:
            doc["variant"] = platform["variant"]
        return json.dumps(doc, separators=(",", ":")).encode()

    def _image(self, repo: _Repo, platform: dict[str, str], oci: bool, previous: _Manifest | None) -> _Manifest:
        layers = self._image_layers(repo, _arch(platform), previous)
        config = self._config(platform, layers, repo)
        config_hex = _sha256(config)
        if self._blob(config_hex, config):
            self.configs += 1
        layer_type = MT_OCI_LAYER if oci else MT_DOCKER_LAYER
        doc: dict[str, object] = {"schemaVersion": 2}
        if not oci or self.rng.random() >= OCI_NO_MEDIATYPE_SHARE:
            doc["mediaType"] = MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST
        doc["config"] = {
            "mediaType": MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG,
            "size": len(config),
            "digest": f"sha256:{config_hex}",
        }
        doc["layers"] = [
            {"mediaType": layer_type, "size": layer.size, "digest": f"sha256:{layer.hex}"} for layer in layers
        ]
        content = _oci_json(doc) if oci else _docker_json(doc)
        manifest = self._manifest(
            content,
            MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
            (config_hex, *(layer.hex for layer in layers)),
            tuple(layers),
            oci,
        )
        self.images += 1
        return manifest

    def _manifest(
        self,
        content: bytes,
        media_type: str,
        blobs: tuple[str, ...],
        layers: tuple[_Layer, ...] = (),
        oci: bool = False,
    ) -> _Manifest:
        hexd = _sha256(content)
        self._blob(hexd, content)
        self.manifests += 1
        return _Manifest(hexd, len(content), media_type, blobs, layers, oci)

    def _attestation(self, subject: _Manifest) -> _Manifest:
        # BuildKit's provenance attestation: an OCI manifest with platform unknown/unknown.
        statement = _oci_json(
            {
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://slsa.dev/provenance/v0.2",
                "subject": [{"name": "_", "digest": {"sha256": subject.hex}}],
                "predicate": {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1"},
            }
        )
        statement_hex = _sha256(statement)
        if self._blob(statement_hex, statement):
            self.layers += 1
        config = _oci_json(
            {
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{statement_hex}"]},
            }
        )
        config_hex = _sha256(config)
        if self._blob(config_hex, config):
            self.configs += 1
        doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": f"sha256:{config_hex}", "size": len(config)},
            "layers": [
                {
                    "mediaType": MT_IN_TOTO,
                    "digest": f"sha256:{statement_hex}",
                    "size": len(statement),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                }
            ],
        }
        return self._manifest(_oci_json(doc), MT_OCI_MANIFEST, (config_hex, statement_hex), oci=True)

    def _index(self, repo: _Repo, oci: bool) -> tuple[_Manifest, list[_Manifest]]:
        count = self.rng.randint(2, 4)
        platforms = [PLATFORMS[0], *self.rng.sample(PLATFORMS[1:], count - 1)]
        children: list[_Manifest] = []
        entries: list[dict[str, object]] = []
        for platform in platforms:
            child = self._image(repo, platform, oci, None)
            children.append(child)
            entries.append(
                {
                    "mediaType": child.media_type,
                    "digest": f"sha256:{child.hex}",
                    "size": child.size,
                    "platform": dict(platform),
                }
            )
        if oci and self.rng.random() < ATTESTATION_SHARE:
            for child in list(children):
                attestation = self._attestation(child)
                children.append(attestation)
                entries.append(
                    {
                        "mediaType": MT_OCI_MANIFEST,
                        "digest": f"sha256:{attestation.hex}",
                        "size": attestation.size,
                        "annotations": {
                            "vnd.docker.reference.digest": f"sha256:{child.hex}",
                            "vnd.docker.reference.type": "attestation-manifest",
                        },
                        "platform": {"architecture": "unknown", "os": "unknown"},
                    }
                )
        doc: dict[str, object] = {"schemaVersion": 2}
        if not oci or self.rng.random() >= OCI_NO_MEDIATYPE_SHARE:
            doc["mediaType"] = MT_OCI_INDEX if oci else MT_DOCKER_LIST
        doc["manifests"] = entries
        content = _oci_json(doc) if oci else _docker_json(doc)
        blobs = tuple(h for child in children for h in child.blobs)
        index = self._manifest(content, MT_OCI_INDEX if oci else MT_DOCKER_LIST, blobs, oci=oci)
        self.indexes += 1
        self.children += len(children)
        return index, children

    def _artifact(self, subject: _Manifest) -> _Manifest:
        artifact_type, payload_type = self.rng.choice(ARTIFACT_KINDS)
        payload = _oci_json(
            {
                "critical": {
                    "identity": {"docker-reference": "registry.example.com"},
                    "image": {"docker-manifest-digest": f"sha256:{subject.hex}"},
                    "type": artifact_type,
                },
                "optional": {"nonce": self._hex()[:16]},
            }
        )
        payload_hex = _sha256(payload)
        if self._blob(payload_hex, payload):
            self.layers += 1
        empty_hex = _sha256(EMPTY_JSON)
        self._blob(empty_hex, EMPTY_JSON)
        doc = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": MT_OCI_EMPTY, "digest": f"sha256:{empty_hex}", "size": len(EMPTY_JSON)},
            "layers": [{"mediaType": payload_type, "digest": f"sha256:{payload_hex}", "size": len(payload)}],
            "subject": {
                "mediaType": subject.media_type,
                "digest": f"sha256:{subject.hex}",
                "size": subject.size,
            },
            "annotations": {"org.opencontainers.image.created": self._tick()[:19] + "Z"},
        }
        self.artifacts += 1
        return self._manifest(_oci_json(doc), MT_OCI_MANIFEST, (empty_hex, payload_hex), oci=True)

    # -- pushes ----------------------------------------------------------------

    def _new_tag_name(self, repo: _Repo) -> str:
        if not repo.tags:
            return self.rng.choice(("latest", "latest", "main"))
        while True:
            roll = self.rng.random()
            repo.next_version += 1
            n = repo.next_version
            if roll < 0.5:
                name = f"v{1 + n // 40}.{(n // 8) % 5}.{n % 8}"
            elif roll < 0.7:
                name = f"sha-{self._hex()[:7]}"
            elif roll < 0.85:
                name = (self.clock + timedelta(days=n)).strftime("%Y.%m.%d")
            else:
                name = self.rng.choice(("dev", "staging", "prod", "edge", "nightly", "stable")) + f"-{n}"
            if name not in repo.tags:
                return name

    def _record(self, repo: _Repo, manifest: _Manifest) -> None:
        repo.revisions.setdefault(manifest.hex, True)
        repo.layer_links.update(manifest.blobs)

    def _push(self, repo: _Repo) -> None:
        rng = self.rng
        if repo.tags and rng.random() < OVERWRITE_SHARE:
            # Tags like `latest` churn far more than release tags do.
            tags = list(repo.tags.values())
            tag = tags[0] if rng.random() < 0.5 else rng.choice(tags)
        else:
            name = self._new_tag_name(repo)
            tag = _Tag(name, rng.random() < MULTIARCH_TAG_SHARE, rng.random() < OCI_SHARE)
            repo.tags[name] = tag
        previous = tag.history[-1] if tag.history else None
        others = [r for r in rng.sample(self.repos, min(3, len(self.repos))) if r is not repo and r.images]
        if not tag.multiarch and others and rng.random() < MOUNT_SHARE:
            # The same image pushed to a second repository: its blobs are mounted, not copied.
            manifest = rng.choice(others[0].images)
            if manifest.hex in {m.hex for m in tag.history}:
                return
            repo.images.append(manifest)
        elif tag.multiarch:
            manifest, children = self._index(repo, tag.oci)
            for child in children:
                self._record(repo, child)
        else:
            manifest = self._image(repo, PLATFORMS[0], tag.oci, previous)
            repo.images.append(manifest)
        self._record(repo, manifest)
        tag.history.append(manifest)
        if rng.random() < ARTIFACT_SHARE:
            self._record(repo, self._artifact(manifest))

    # -- the rest of the tree -------------------------------------------------

    def _orphans(self) -> None:
        count = max(self.target_orphans, self.target_blobs - len(self.blob_hexes))
        for _ in range(count):
            hexd = self._hex()
            self._blob(hexd, size=self._size(1.5 * MIB, 2.2))
            self.orphans += 1
            if self.rng.random() < LINKED_ORPHAN_SHARE and self.repos:
                # An interrupted push: the layer was uploaded, the manifest never came.
                self.rng.choice(self.repos).layer_links.add(hexd)

    def _write_repository(self, repo: _Repo) -> tuple[int, int, int, int]:
        base = f"{self.repo_root}/{repo.name}"
        os.makedirs(f"{base}/_uploads", exist_ok=True)
        for hexd in repo.layer_links:
            self._link(f"{base}/_layers/sha256/{hexd}", hexd)
        current = {tag.history[-1].hex for tag in repo.tags.values()}
        deleted = 0
        for hexd in repo.revisions:
            directory = f"{base}/_manifests/revisions/sha256/{hexd}"
            if hexd not in current and self.rng.random() < DELETED_REVISION_SHARE:
                # A manifest deleted through the API: the registry removes only the link.
                os.makedirs(directory, exist_ok=True)
                deleted += 1
                continue
            self._link(directory, hexd)
        history = 0
        for tag in repo.tags.values():
            tag_dir = f"{base}/_manifests/tags/{tag.name}"
            # The registry writes the history entry before `current`, once per distinct digest.
            for hexd in dict.fromkeys(m.hex for m in tag.history):
                self._link(f"{tag_dir}/index/sha256/{hexd}", hexd)
                history += 1
            self._link(f"{tag_dir}/current", tag.history[-1].hex)
        return len(repo.revisions) - deleted, deleted, history, len(repo.layer_links)

    def _uploads(self) -> int:
        count = max(2, len(self.repos) // 40)
        now = datetime.now(UTC)
        for _ in range(count):
            repo = self.rng.choice(self.repos)
            upload_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            directory = f"{self.repo_root}/{repo.name}/_uploads/{upload_id}"
            os.makedirs(directory)
            size = self._size(4 * MIB, 1.5)
            with open(f"{directory}/data", "xb") as f:
                f.truncate(size)
            self.files += 1
            self.apparent += size
            # Spread over a month so some are past the registry's 168 h purge age.
            started = now - timedelta(hours=self.rng.uniform(0.1, 720))
            self._write(f"{directory}/startedat", started.strftime("%Y-%m-%dT%H:%M:%SZ").encode())
            if self.rng.random() < 0.5:
                os.makedirs(f"{directory}/hashstates/sha256")
                self._write(f"{directory}/hashstates/sha256/{size}", self.rng.randbytes(108))
        return count

    def run(self) -> Stats:
        started = time.monotonic()
        if self.v2.exists():
            raise FileExistsError(f"{self.v2} already exists")
        for i in range(256):
            os.makedirs(f"{self.blob_root}/{i:02x}")
        self.repos = [_Repo(name) for name in repository_names(self.rng, self.target_repositories)]
        self._plan_bases()
        # Heavy-tailed repository sizes: a few busy repositories, a long tail of small ones.
        weights = [self.rng.paretovariate(1.1) for _ in self.repos]
        cumulative = list(_accumulate(weights))
        for repo in self.repos:
            self._push(repo)
        while self.manifests < self.target_manifests:
            pick = bisect.bisect_left(cumulative, self.rng.random() * cumulative[-1])
            self._push(self.repos[min(pick, len(self.repos) - 1)])
        self._orphans()
        revisions = deleted = history = links = 0
        for repo in self.repos:
            r, d, h, n = self._write_repository(repo)
            revisions += r
            deleted += d
            history += h
            links += n
        uploads = self._uploads()
        return Stats(
            repositories=len(self.repos),
            tags=sum(len(r.tags) for r in self.repos),
            tag_history=history,
            manifests=self.manifests,
            images=self.images,
            indexes=self.indexes,
            index_children=self.children,
            artifacts=self.artifacts,
            blobs=len(self.blob_hexes),
            configs=self.configs,
            layers=self.layers,
            orphans=self.orphans,
            revisions=revisions,
            deleted_revisions=deleted,
            layer_links=links,
            uploads=uploads,
            files=self.files,
            apparent_bytes=self.apparent,
            seconds=time.monotonic() - started,
        )


def _arch(platform: dict[str, str]) -> str:
    return platform["architecture"] + platform.get("variant", "")


def _accumulate(values: list[float]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for value in values:
        total += value
        out.append(total)
    return out


def generate(
    root: str | Path, repositories: int = 500, manifests: int = 10_000, blobs: int = 60_000, seed: int = 1
) -> Stats:
    """Write a registry tree under `root/docker/registry/v2`, which must not exist yet."""
    return _Generator(Path(root), repositories, manifests, blobs, seed).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="directory to create docker/registry/v2 in")
    parser.add_argument("--repositories", type=int, default=500)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        stats = generate(args.root, args.repositories, args.manifests, args.blobs, args.seed)
    except FileExistsError as exc:
        print(f"synth: {exc}; choose an empty root", file=sys.stderr)
        return 1
    print(stats.summary(str(args.root / "docker" / "registry" / "v2")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
