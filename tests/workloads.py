"""Seeded random workloads and named edge cases, pushed through the registry's HTTP API only."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.registry_harness import (
    COSIGN_SIGNATURE,
    COSIGN_SIMPLESIGNING,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    SPDX_SBOM,
    Client,
    Pushed,
    canonical_json,
    platform,
    sha256,
)

# Nested names, names inside other repositories, and every separator the grammar allows.
REPOSITORIES = ("app", "team/app", "team/app/server", "org/team/tool", "lib/base-image", "a.b/c_d/e--f")
PLATFORMS = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x", "linux/ppc64le", "windows/amd64")
TAGS = ("latest", "stable", "v1", "v2", "v2.1", "dev", "nightly")
ARTIFACT_TYPES = (
    (COSIGN_SIGNATURE, COSIGN_SIMPLESIGNING),
    (SPDX_SBOM, SPDX_SBOM),
    ("application/vnd.in-toto+json", "application/vnd.in-toto+json"),
)


def blob_bytes(rng: random.Random) -> bytes:
    """Tens to a couple of hundred random bytes: the registry never looks inside a layer."""
    return rng.randbytes(rng.randint(20, 200))


@dataclass
class RepoState:
    """What the workload believes one repository holds, to choose valid next operations."""

    name: str
    blobs: set[str] = field(default_factory=set)
    manifests: dict[str, Pushed] = field(default_factory=dict)
    # Digests some index of this repository lists: deleting one would break a pull before any GC ran.
    listed: set[str] = field(default_factory=set)
    tags: dict[str, str] = field(default_factory=dict)
    # A manifest was ever put here: its revision directory stays even after a delete.
    revised: bool = False

    def images(self, media_type: str | None = None) -> list[Pushed]:
        out = [p for p in self.manifests.values() if not _is_index(p)]
        return [p for p in out if media_type is None or p.media_type == media_type]


def _is_index(pushed: Pushed) -> bool:
    return pushed.media_type in (OCI_INDEX, DOCKER_LIST)


class Workload:
    """Random pushes, tags, deletes, mounts, indexes, referrers and abandoned uploads, reproducible from a seed."""

    def __init__(self, client: Client, rng: random.Random, delete_children: bool = False) -> None:
        self.client = client
        self.rng = rng
        self.delete_children = delete_children
        self.repos = {name: RepoState(name) for name in rng.sample(REPOSITORIES, rng.randint(3, len(REPOSITORIES)))}
        # A few base layers that images in several repositories share.
        self.base_layers = [blob_bytes(rng) for _ in range(3)]

    # Helpers

    def _repo(self, needs_manifest: bool = False) -> RepoState | None:
        choices = [r for r in self.repos.values() if r.manifests or not needs_manifest]
        return self.rng.choice(sorted(choices, key=lambda r: r.name)) if choices else None

    def _link(self, repo: RepoState, data: bytes) -> None:
        """Get `data` linked into `repo`, by a cross-repository mount when another repository has it."""
        digest = sha256(data)
        if digest in repo.blobs:
            return
        donors = sorted(r.name for r in self.repos.values() if digest in r.blobs)
        if donors and self.rng.random() < 0.8:
            self.client.mount_blob(repo.name, digest, from_repo=self.rng.choice(donors))
        else:
            self.client.push_blob(repo.name, data)
        repo.blobs.add(digest)

    def _put(self, repo: RepoState, pushed: Pushed, tags: list[str]) -> Pushed:
        references = tags or [pushed.digest]
        for ref in references:
            self.client.put_manifest(repo.name, ref, pushed.body, pushed.media_type)
        repo.manifests[pushed.digest] = pushed
        repo.revised = True
        for tag in tags:
            repo.tags[tag] = pushed.digest
        return pushed

    def _tags(self, p_tagged: float) -> list[str]:
        if self.rng.random() >= p_tagged:
            return []
        return self.rng.sample(TAGS, self.rng.choice((1, 1, 1, 2)))

    def _image(self, repo: RepoState, oci: bool, platform: str, tags: list[str]) -> Pushed:
        rng = self.rng
        layers = [rng.choice(self.base_layers)] if rng.random() < 0.7 else []
        layers += [blob_bytes(rng) for _ in range(rng.randint(1, 2))]
        os_name, arch = platform.split("/")[:2]
        config = canonical_json(
            {
                "architecture": arch,
                "os": os_name,
                "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
                "config": {"Labels": {"build": rng.randbytes(4).hex()}},
            }
        )
        for data in (*layers, config):
            self._link(repo, data)
        built = self.client.image(
            repo.name, layers, config, oci=oci, push=False, media_type_field=not oci or rng.random() < 0.8
        )
        return self._put(repo, built, tags)

    # Operations

    def push_image(self) -> None:
        repo = self._repo()
        assert repo is not None
        self._image(repo, self.rng.random() < 0.5, self.rng.choice(PLATFORMS), self._tags(0.7))

    def push_multiarch(self) -> None:
        rng = self.rng
        repo = self._repo()
        assert repo is not None
        oci = rng.random() < 0.6
        platforms = rng.sample(PLATFORMS, rng.randint(2, 3))
        child_type = OCI_INDEX if oci else DOCKER_LIST
        children: list[tuple[Pushed, str]] = []
        # Sometimes an existing image (perhaps tagged, perhaps another index's child) is listed again.
        reusable = repo.images(OCI_MANIFEST if oci else DOCKER_MANIFEST)
        if reusable and rng.random() < 0.3:
            children.append((rng.choice(reusable), platforms.pop()))
        children += [(self._image(repo, oci, p, []), p) for p in platforms]
        # An OCI index may list another index (nested multi-platform images).
        nested = [p for p in repo.manifests.values() if p.media_type == child_type == OCI_INDEX]
        if nested and rng.random() < 0.2:
            children.append((rng.choice(nested), "linux/amd64"))
        built = self.client.index(
            repo.name, children, oci=oci, push=False, media_type_field=not oci or rng.random() < 0.8
        )
        self._put(repo, built, self._tags(0.6))
        repo.listed.update(child.digest for child, _ in children)

    def push_referrer(self) -> None:
        rng = self.rng
        repo = self._repo(needs_manifest=True)
        if repo is None:
            return
        subject = repo.manifests[rng.choice(sorted(repo.manifests))]
        artifact_type, layer_type = rng.choice(ARTIFACT_TYPES)
        payload = canonical_json({"subject": subject.digest, "nonce": rng.randbytes(6).hex()})
        built = self.client.artifact(repo.name, subject, artifact_type, payload, layer_type, push=False)
        for data in (EMPTY_JSON, payload):
            self._link(repo, data)
        self._put(repo, built, self._tags(0.1))

    def retag(self) -> None:
        repo = self._repo(needs_manifest=True)
        if repo is None:
            return
        # The registry refuses an index one of whose children was deleted.
        whole = [d for d, p in repo.manifests.items() if set(_child_digests(p)) <= set(repo.manifests)]
        if not whole:
            return
        target = repo.manifests[self.rng.choice(sorted(whole))]
        self._put(repo, target, [self.rng.choice(TAGS)])

    def delete(self) -> None:
        repo = self._repo(needs_manifest=True)
        if repo is None:
            return
        candidates = sorted(set(repo.manifests) - repo.listed)
        if not candidates:
            return
        digest = self.rng.choice(candidates)
        self.client.delete_manifest(repo.name, digest)
        del repo.manifests[digest]
        repo.tags = {t: d for t, d in repo.tags.items() if d != digest}

    def delete_child(self) -> None:
        """Delete by digest a manifest that an index lists: the index still names it, its revision link goes.

        The registry allows it, and pulls of the index then fail for that platform; what the child held
        stays protected while the index is kept. An index listed by another may go too (nested).
        """
        rng = self.rng
        repos = [r for r in self.repos.values() if _listed_now(r)]
        if not repos:
            return
        repo = rng.choice(sorted(repos, key=lambda r: r.name))
        digest = rng.choice(sorted(_listed_now(repo)))
        self.client.delete_manifest(repo.name, digest)
        del repo.manifests[digest]
        repo.tags = {t: d for t, d in repo.tags.items() if d != digest}

    def copy(self) -> None:
        """Push an image or artifact of one repository into another (blobs mounted), as a promotion does."""
        rng = self.rng
        source = self._repo(needs_manifest=True)
        if source is None:
            return
        images = source.images()
        if not images:
            return
        pushed = rng.choice(images)
        dest = self.repos[rng.choice(sorted(set(self.repos) - {source.name}))]
        for digest in _blob_refs(pushed):
            if digest not in dest.blobs:
                self.client.mount_blob(dest.name, digest, from_repo=source.name)
                dest.blobs.add(digest)
        self._put(dest, pushed, self._tags(0.5))

    def abandon_upload(self) -> None:
        repo = self._repo()
        assert repo is not None
        self.client.start_upload(repo.name, blob_bytes(self.rng))
        # The registry creates the repository directory; with no manifest it needs no tag.

    def finish(self) -> None:
        """Give every repository with a manifest a tag: 2.8's `-m` aborts on one that has none."""
        for repo in sorted(self.repos.values(), key=lambda r: r.name):
            if repo.revised and not repo.tags:
                self._image(repo, self.rng.random() < 0.5, "linux/amd64", ["latest"])

    def run(self, steps: int) -> None:
        operations: list[tuple[Callable[[], None], int]] = [
            (self.push_image, 30),
            (self.push_multiarch, 15),
            (self.push_referrer, 15),
            (self.retag, 10),
            (self.delete, 10),
            (self.copy, 12),
            (self.abandon_upload, 4),
        ]
        if self.delete_children:
            operations.append((self.delete_child, 12))
        funcs, weights = zip(*operations, strict=True)
        # Start with something tagged so early referrers and deletes have targets.
        self.push_image()
        for _ in range(steps):
            self.rng.choices(funcs, weights)[0]()
        if self.delete_children:
            # At least one, whatever the draws were.
            if not any(map(_listed_now, self.repos.values())):
                self.push_multiarch()
            self.delete_child()
        self.finish()


def _listed_now(repo: RepoState) -> set[str]:
    """The manifests of `repo` that an index still in `repo` lists."""
    return {c for p in repo.manifests.values() for c in _child_digests(p)} & set(repo.manifests)


def _child_digests(pushed: Pushed) -> list[str]:
    return [child["digest"] for child in json.loads(pushed.body).get("manifests", [])]


def _blob_refs(pushed: Pushed) -> list[str]:
    doc: dict[str, Any] = json.loads(pushed.body)
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers", []))]


def random_workload(client: Client, seed: int, delete_children: bool = False) -> None:
    """Push seed `seed`'s workload into the registry behind `client`; with `delete_children`, another family of
    workloads, which also deletes manifests that indexes list (by digest, through the API)."""
    family = "deleted-children" if delete_children else "differential"
    rng = random.Random(f"storage-audit-{family}:{seed}")
    workload = Workload(client, rng, delete_children)
    if delete_children:
        # Multi-platform images first, so that there are children to delete.
        for _ in range(2):
            workload.push_multiarch()
    workload.run(rng.randint(12, 24))


# --------------------------------------------------------------------------
# Named edge cases beyond the fixture scenarios


def _plain_image(client: Client, repo: str, oci: bool, arch: str, rng: random.Random, **kw: Any) -> Pushed:
    layers = [blob_bytes(rng), blob_bytes(rng)]
    config: dict[str, Any] = {"architecture": arch, "os": "linux", "rootfs": {"diff_ids": [sha256(x) for x in layers]}}
    return client.image(repo, layers, config, oci=oci, **kw)


def referrer_chains(client: Client, rng: random.Random) -> None:
    """Referrers of index children, of a tagged index, of other referrers, and of a deleted image."""
    repo = "chains/app"
    amd = _plain_image(client, repo, True, "amd64", rng)
    arm = _plain_image(client, repo, True, "arm64", rng)
    idx = client.index(repo, [(amd, "linux/amd64"), (arm, "linux/arm64/v8")], tags=["v1"])
    sig = client.artifact(repo, idx, COSIGN_SIGNATURE, b'{"sig":"index"}', COSIGN_SIMPLESIGNING)
    # A signature of a signature, and an SBOM of one platform image.
    client.artifact(repo, sig, COSIGN_SIGNATURE, b'{"sig":"countersign"}', COSIGN_SIMPLESIGNING)
    client.artifact(repo, arm, SPDX_SBOM, b'{"sbom":"arm"}', SPDX_SBOM)
    # The subject is deleted through the API: its signature is kept by nobody.
    gone = _plain_image(client, repo, False, "amd64", rng, tags=["old"])
    client.artifact(repo, gone, COSIGN_SIGNATURE, b'{"sig":"gone"}', COSIGN_SIMPLESIGNING)
    client.delete_manifest(repo, gone.digest)
    # A referrer of an untagged image is no more kept than its subject.
    loose = _plain_image(client, repo, True, "amd64", rng)
    client.artifact(repo, loose, SPDX_SBOM, b'{"sbom":"loose"}', SPDX_SBOM)
    # A referrer that is itself an index: attestations per platform, gathered under one `subject`.
    attestations = [
        (client.artifact(repo, None, "application/vnd.in-toto+json", payload, "application/vnd.in-toto+json"), p)
        for payload, p in ((b'{"att":"amd"}', "linux/amd64"), (b'{"att":"arm"}', "linux/arm64/v8"))
    ]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.in-toto+json",
        "manifests": [child.descriptor(platform=platform(p)) for child, p in attestations],
        "subject": idx.descriptor(),
    }
    client.put_manifest(repo, sha256(canonical_json(doc)), canonical_json(doc), OCI_INDEX)


def nested_index(client: Client, rng: random.Random) -> None:
    """A tagged OCI index listing another index, and one child tagged on its own as well."""
    repo = "nested/app"
    amd = _plain_image(client, repo, True, "amd64", rng)
    arm = _plain_image(client, repo, True, "arm64", rng, tags=["arm-only"])
    inner = client.index(repo, [(amd, "linux/amd64"), (arm, "linux/arm64/v8")])
    s390 = _plain_image(client, repo, True, "s390x", rng)
    client.index(repo, [(inner, "linux/amd64"), (s390, "linux/s390x")], tags=["latest"])


def shared_manifests(client: Client, rng: random.Random) -> None:
    """The same image and list in two repositories: tagged in one, untagged in the other."""
    src, dst = "shared/src", "shared/dst"
    amd = _plain_image(client, src, False, "amd64", rng)
    arm = _plain_image(client, src, False, "arm64", rng)
    lst = client.manifest_list(src, [(amd, "linux/amd64"), (arm, "linux/arm64/v8")], tags=["latest"])
    solo = _plain_image(client, src, False, "amd64", rng, tags=["solo"])
    for pushed in (amd, arm, solo):
        for digest in _blob_refs(pushed):
            client.mount_blob(dst, digest, from_repo=src)
    for pushed in (amd, arm, solo):
        client.put_manifest(dst, pushed.digest, pushed.body, pushed.media_type)
    client.put_manifest(dst, lst.digest, lst.body, lst.media_type)
    # dst needs a tag of its own, and shares the list's children only untagged.
    client.put_manifest(dst, "mirror", solo.body, solo.media_type)


def listed_referrer(client: Client, rng: random.Random) -> None:
    """An SBOM kept as the referrer of a tagged image, which an untagged index also happens to list."""
    repo = "listed/app"
    img = _plain_image(client, repo, True, "amd64", rng, tags=["v1"])
    sbom = client.artifact(repo, img, SPDX_SBOM, b'{"sbom":"listed"}', SPDX_SBOM)
    other = _plain_image(client, repo, True, "arm64", rng)
    client.index(repo, [(sbom, "linux/amd64"), (other, "linux/arm64/v8")])


def deleted_children(client: Client, rng: random.Random) -> None:
    """Index children deleted by digest through the API: of a tagged index, of an untagged one, of a Docker list,
    an index listed by another (nested, with one of its own children gone too), and a child kept in another
    repository. Only the revision links go; the blobs and, on disk, the empty revision directories stay."""
    repo = "gone/app"
    amd = _plain_image(client, repo, True, "amd64", rng)
    arm = _plain_image(client, repo, True, "arm64", rng)
    client.index(repo, [(amd, "linux/amd64"), (arm, "linux/arm64/v8")], tags=["v1"])
    client.delete_manifest(repo, arm.digest)
    # An untagged index: nothing keeps it under --delete-untagged, so nothing keeps its lost child either.
    loose = _plain_image(client, repo, True, "s390x", rng)
    client.index(repo, [(loose, "linux/s390x")])
    client.delete_manifest(repo, loose.digest)
    # A Docker list whose children both went.
    docker = [_plain_image(client, repo, False, arch, rng) for arch in ("amd64", "arm64")]
    client.manifest_list(repo, [(docker[0], "linux/amd64"), (docker[1], "linux/arm64/v8")], tags=["docker"])
    for child in docker:
        client.delete_manifest(repo, child.digest)

    nested = "gone/nested"
    leaves = [_plain_image(client, nested, True, arch, rng) for arch in ("amd64", "arm64", "ppc64le")]
    inner = client.index(nested, [(leaves[0], "linux/amd64"), (leaves[1], "linux/arm64/v8")])
    client.index(nested, [(inner, "linux/amd64"), (leaves[2], "linux/ppc64le")], tags=["latest"])
    # The inner index goes, and one of its children: that one is known only through two lists now.
    client.delete_manifest(nested, inner.digest)
    client.delete_manifest(nested, leaves[1].digest)

    # The same image in two repositories: a deleted child in one, a tagged image in the other.
    src, dst = "gone/src", "gone/dst"
    shared = _plain_image(client, src, False, "amd64", rng)
    client.manifest_list(src, [(shared, "linux/amd64")], tags=["latest"])
    for digest in _blob_refs(shared):
        client.mount_blob(dst, digest, from_repo=src)
    client.put_manifest(dst, "mirror", shared.body, shared.media_type)
    client.delete_manifest(src, shared.digest)


def marked_elsewhere(client: Client, rng: random.Random) -> None:
    """An image a tagged index lists untagged, which a bundle tagged in a repository walked before carries as a
    layer: registry 3 marks it first where it is no revision, so it never descends into it (distribution's
    `markManifestReferences`): the image stays and its config and layers are swept."""
    late = "walk/late"
    image = _plain_image(client, late, True, "amd64", rng)
    client.index(late, [(image, "linux/amd64")], tags=["v1"])
    client.artifact("walk/early", None, "application/vnd.example.bundle", image.body, OCI_MANIFEST, tags=["bundle"])


EDGE_CASES: dict[str, Callable[[Client, random.Random], None]] = {
    "referrer-chains": referrer_chains,
    "nested-index": nested_index,
    "shared-manifests": shared_manifests,
    "listed-referrer": listed_referrer,
    "marked-elsewhere": marked_elsewhere,
}
