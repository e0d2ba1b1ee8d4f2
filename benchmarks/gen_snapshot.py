"""Write a synthetic snapshot (the Parquet tables and metadata of `scan -o`) of a registry shaped like synth.py's.

The registry is planned as integer arrays (one id per blob, manifest, push, tag), with numpy, and its
tables are written in chunks of rows: digests become strings only chunk by chunk, so ten million blobs
need well under a gigabyte. `--tree DIR` also writes the same registry as an on-disk storage tree (small
sizes only), whose scan gives the same tables: the tests hold the two against each other.

Digests are random, not the hashes of contents (as synth.py's layer blobs, which are holes): only the
tables' shape matters here. Manifest blobs written by `--tree` hold JSON padded with spaces to their size.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute

from storage_audit import __version__
from storage_audit.core.findings import SEVERITY, Kind
from storage_audit.core.paths import (
    BlobData,
    Digest,
    LayerLink,
    LayersAlgorithm,
    RepositoryPart,
    RevisionLink,
    TagCurrentLink,
    TagIndexLink,
    UploadData,
    UploadStartedAt,
    parent,
    path_for,
)
from storage_audit.inventory.snapshot_writer import SnapshotWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth import (
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_IN_TOTO,
    MT_OCI_CONFIG,
    MT_OCI_EMPTY,
    MT_OCI_INDEX,
    MT_OCI_LAYER,
    MT_OCI_MANIFEST,
    repository_names,
)

# Every string the tables draw from, by code: columns are built as codes, then taken from here.
MEDIA = [
    MT_DOCKER_MANIFEST,
    MT_DOCKER_LIST,
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER,
    MT_OCI_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_CONFIG,
    MT_OCI_LAYER,
    MT_OCI_EMPTY,
    MT_IN_TOTO,
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.cncf.notary.signature",
    "application/jose+json",
    "application/spdx+json",
]
M_ = {name: code for code, name in enumerate(MEDIA)}
# (artifactType, payload media type) of the referrers tools attach to images.
ARTIFACT_KINDS = np.array(
    [
        (M_["application/vnd.dev.cosign.artifact.sig.v1+json"], M_["application/vnd.dev.cosign.simplesigning.v1+json"]),
        (M_["application/vnd.cncf.notary.signature"], M_["application/jose+json"]),
        (M_["application/spdx+json"], M_["application/spdx+json"]),
        (M_[MT_IN_TOTO], M_[MT_IN_TOTO]),
    ]
)
KINDS = ["docker-v2", "docker-list", "oci-manifest", "oci-index", "oci-artifact"]
REF_TYPES = ["config", "layer", "child", "subject"]
CONFIG, LAYER, CHILD, SUBJECT = range(4)
# amd64 first: every multi-arch image carries it, as real ones do; attestations say unknown/unknown.
PLATFORMS = [
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
    {"architecture": "ppc64le", "os": "linux"},
    {"architecture": "s390x", "os": "linux"},
    {"architecture": "unknown", "os": "unknown"},
]
PLATFORM_NAMES = ["/".join(p[k] for k in ("os", "architecture", "variant") if k in p) for p in PLATFORMS]
UNKNOWN_PLATFORM = 5

APPS = ("api", "worker", "frontend", "gateway", "auth", "billing", "cache", "db-migrate", "scheduler", "etl")

KIB = 1024
MIB = 1024 * KIB
MIN_LAYER = 2 * KIB
MAX_LAYER = 400 * MIB
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

# Shares of the content mix, as synth.py's.
MULTIARCH_SHARE = 0.10
OVERWRITE_SHARE = 0.45
REBUILD_SHARE = 0.7
ARTIFACT_SHARE = 0.015
ORPHAN_SHARE = 0.05
LINKED_ORPHAN_SHARE = 0.3
DELETED_REVISION_SHARE = 0.01
BASE_IMAGE_SHARE = 0.85
OCI_SHARE = 0.45
OCI_NO_MEDIATYPE_SHARE = 0.2
ATTESTATION_SHARE = 0.5
SPAN_S = 2 * 365 * 86400
EPOCH_S = int(datetime(2021, 10, 5, 9, 0, 0, tzinfo=UTC).timestamp())
"""Blob times are kept as seconds since this, the base layers' time; pushes start 90 days later."""
I32 = np.int32
M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: allocations from this size up get pages of their own."""
CHUNK = 1 << 20
"""Rows materialised at a time: a million digests are some 75 MB."""


@dataclass(frozen=True)
class Spec:
    """How big a registry to plan, and from which seed."""

    blobs: int = 10_000_000
    manifests: int = 1_700_000
    repositories: int = 5_000
    seed: int = 1


def _ragged(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n of `lengths`, end to end."""
    total = int(lengths.sum())
    kind = np.int32 if total < 2**31 else np.int64  # half the memory for the usual sizes
    starts = (np.cumsum(lengths) - lengths).astype(kind)
    return np.arange(total, dtype=kind) - np.repeat(starts, lengths)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64, so distinct inputs give distinct words."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_PREFIX = np.frombuffer(b"sha256:", dtype=np.uint8)


class Digests:
    """The digest of every blob id: random, distinct, from the seed; materialised only for the ids asked."""

    def __init__(self, seed: int, empty_id: int) -> None:
        self.key = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        self.empty_id = empty_id

    def raw(self, ids: np.ndarray) -> np.ndarray:
        """(n, 71) bytes: `sha256:` and 64 hex digits per id."""
        ids = np.asarray(ids, dtype=np.uint64)
        with np.errstate(over="ignore"):
            words = np.stack([_mix(ids * np.uint64(4) + np.uint64(k) + self.key) for k in range(4)], axis=1)
        octets = words.astype(">u8").view(np.uint8).reshape(len(ids), 32)
        out = np.empty((len(ids), 71), dtype=np.uint8)
        out[:, :7] = _PREFIX
        out[:, 7::2] = _HEX[octets >> 4]
        out[:, 8::2] = _HEX[octets & 15]
        empty = ids == np.uint64(self.empty_id) if self.empty_id >= 0 else np.zeros(len(ids), dtype=bool)
        if empty.any():
            out[empty] = np.frombuffer(EMPTY_DIGEST.encode(), dtype=np.uint8)
        return out

    def array(self, ids: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
        """The digests of `ids` as an Arrow string array (null where `null` is true)."""
        n = len(ids)
        data = self.raw(ids)
        offsets = np.arange(n + 1, dtype=np.int64) * 71
        validity = None
        if null is not None and null.any():
            validity = pa.array(~null).buffers()[1]
        return pa.LargeStringArray.from_buffers(
            n,
            pa.py_buffer(offsets),
            pa.py_buffer(data.reshape(-1)),
            validity,
            int(null.sum()) if null is not None else 0,
        )

    def text(self, ids: np.ndarray) -> list[str]:
        return [bytes(row).decode() for row in self.raw(ids)]


def _take(values: list[str], codes: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, pa.large_string()).take(pa.array(codes, mask=null))


def _times(ns: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(ns, type=pa.timestamp("ns", tz="UTC"), mask=null)


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), MIN_LAYER, MAX_LAYER).astype(np.int64)


def _tag_names(local: np.ndarray) -> pa.Array:
    """A repository's n-th tag: `latest`, then names that embed n, so that they never collide."""
    text = pa.array(local).cast(pa.large_string())
    major = pa.array(1 + local // 40).cast(pa.large_string())
    minor = pa.array((local // 8) % 5).cast(pa.large_string())
    patch = pa.array(local % 8).cast(pa.large_string())

    def join(*parts: str | pa.Array) -> pa.Array:
        args = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts]
        return pa.compute.binary_join_element_wise(*args, pa.scalar("", pa.large_string()))

    semver = join("v", major, ".", minor, ".", patch)
    build = join("build-", text)
    nightly = join("nightly-", text)
    latest = pa.array(np.full(len(local), "latest", dtype=object), pa.large_string())
    choice = np.where(local == 0, 0, np.where(local % 4 == 2, 2, np.where(local % 4 == 3, 3, 1))).astype(np.int8)
    return pa.compute.choose(pa.array(choice), latest, semver, build, nightly)


class Plan:
    """The whole registry as integer arrays, from `Spec`; `write` turns it into tables."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        M = max(1, spec.manifests)
        R = max(1, min(spec.repositories, M))
        self.repo_names = repository_names(random.Random(spec.seed), R, APPS)

        # -- pushes: one per repository first, then to repositories of heavy-tailed popularity
        multi = rng.random(M) < MULTIARCH_SHARE
        oci = rng.random(M) < OCI_SHARE
        k = rng.integers(2, 5, M)
        attest = multi & oci & (rng.random(M) < ATTESTATION_SHARE)
        artifact = rng.random(M) < ARTIFACT_SHARE
        multi[:R] = attest[:R] = artifact[:R] = False
        per = 1 + np.where(multi, k * (1 + attest), 0) + artifact
        cum = np.cumsum(per)
        P = int(np.searchsorted(cum, M, side="right"))
        single = M - (int(cum[P - 1]) if P else 0)
        P += single
        multi, oci, k, attest, artifact = (a[:P] for a in (multi, oci, k, attest, artifact))
        if single:
            multi[P - single :] = attest[P - single :] = artifact[P - single :] = False
        weights = rng.pareto(1.1, R) + 1
        repo = np.concatenate([np.arange(R), rng.choice(R, P - R, p=weights / weights.sum())])
        # Whole seconds: the blobs' times are kept as seconds, in four bytes each.
        step = max(1, SPAN_S // max(P, 1))
        at = (EPOCH_S + 90 * 86400 + np.cumsum(rng.integers(max(1, step // 2), step * 3 // 2 + 2, P))) * 10**9
        # Grouped by repository, in push order within each.
        order = np.argsort(repo, kind="stable")
        multi, oci, k, attest, artifact, repo, at = (a[order] for a in (multi, oci, k, attest, artifact, repo, at))
        self.push_at = at.astype(np.int64)
        self.push_repo = repo.astype(I32)
        starts = np.searchsorted(repo, np.arange(R))
        first_of_repo = np.zeros(P, dtype=bool)
        first_of_repo[starts] = True

        # -- tags: a new one, or (OVERWRITE_SHARE) one the repository has, most often its first
        new = first_of_repo | (rng.random(P) >= OVERWRITE_SHARE)
        seen = np.cumsum(new)
        before = np.repeat(seen[starts] - 1, np.diff(np.append(starts, P)))
        have = seen - before
        pick = np.where(rng.random(P) < 0.5, 0, (rng.random(P) * have).astype(np.int64))
        local = np.where(new, have - 1, pick)
        per_repo = np.bincount(repo, weights=new, minlength=R).astype(np.int64)
        tag_offset = np.cumsum(per_repo) - per_repo
        tag = tag_offset[repo] + local
        T = int(per_repo.sum())
        self.tag_repo = np.repeat(np.arange(R, dtype=I32), per_repo)
        self.tag_local = _ragged(per_repo).astype(I32)
        self.push_tag = tag.astype(I32)
        last = np.full(T, -1, dtype=np.int64)
        np.maximum.at(last, tag, np.arange(P))
        first = np.full(T, P, dtype=np.int64)
        np.minimum.at(first, tag, np.arange(P))
        self.tag_last_push = last.astype(I32)

        # -- manifests: a push's top one (image or index), its children, their attestations, a referrer
        per = 1 + np.where(multi, k * (1 + attest), 0) + artifact
        M = int(per.sum())
        push = np.repeat(np.arange(P), per)
        j = _ragged(per)
        kp, ap = k[push], attest[push]
        role = np.full(M, 0, dtype=np.int8)  # 0 image, 1 index, 2 child, 3 attestation, 4 artifact
        role[(j == 0) & multi[push]] = 1
        role[(j >= 1) & (j <= kp) & multi[push]] = 2
        role[(j > kp) & (j <= 2 * kp) & ap & multi[push]] = 3
        role[artifact[push] & (j == per[push] - 1)] = 4
        self.m_push, self.m_role, self.m_oci = push.astype(I32), role, oci[push] | (role >= 3)
        top = np.cumsum(per) - per  # each push's top manifest
        self.push_top = top.astype(I32)
        perms = np.argsort(rng.random((P, 4)), axis=1) + 1
        platform = np.zeros(M, dtype=np.int8)
        child = role == 2
        jc = j[child]
        platform[child] = np.where(jc == 1, 0, perms[push[child], np.clip(jc - 2, 0, 3)])
        platform[role == 3] = UNKNOWN_PLATFORM
        self.m_platform = platform
        self.m_position = np.where((role == 2) | (role == 3), j - 1, 0).astype(I32)
        self.m_subject = np.where(role == 4, top[push], -1).astype(I32)  # an artifact's subject manifest

        # -- blob ids, block by block
        image = (role == 0) | (role == 2)
        n_img = int(image.sum())
        budget = max(0, spec.blobs - round(spec.blobs * ORPHAN_SHARE) - 2 * M)
        shared = max(3, min(600, budget // 200))
        chains_per = max(1, shared // 10)
        chain_arch = np.concatenate(
            [np.full(chains_per if a < 2 else max(1, chains_per // 3), a) for a in range(5)]
        ).astype(np.int64)
        chain_len = rng.integers(1, 4, len(chain_arch))
        chain_start = np.cumsum(chain_len) - chain_len
        n_base = int(chain_len.sum())
        has_artifacts = bool((role == 4).any())
        self.empty_id = n_base if has_artifacts else -1
        next_id = n_base + int(has_artifacts)
        self.manifest_blob = (next_id + np.arange(M)).astype(I32)
        next_id += M
        needs_config = role != 1
        config_blob = np.full(M, -1, dtype=I32)
        config_blob[needs_config & (role != 4)] = next_id + np.arange(int((needs_config & (role != 4)).sum()))
        next_id += int((needs_config & (role != 4)).sum())
        config_blob[role == 4] = self.empty_id
        self.config_blob = config_blob
        extra = (role == 3) | (role == 4)  # an attestation's statement, an artifact's payload
        extra_blob = np.full(M, -1, dtype=I32)
        extra_blob[extra] = next_id + np.arange(int(extra.sum()))
        next_id += int(extra.sum())
        self.extra_blob = extra_blob
        self.artifact_kind = rng.integers(0, len(ARTIFACT_KINDS), M, dtype=np.int8)

        # Layers of images: a shared base chain, or a rebuild's kept lower layers of its tag's first image;
        # then fresh ones.
        img = np.flatnonzero(image)
        ipush = push[img]
        rebuild = (role[img] == 0) & ~new[ipush] & (first[tag[ipush]] != ipush) & ~multi[first[tag[ipush]]]
        rebuild &= rng.random(n_img) < REBUILD_SHARE
        arch = platform[img].astype(np.int64)
        use_base = ~rebuild & (rng.random(n_img) < BASE_IMAGE_SHARE)
        # Zipf-like popularity among the chains of each architecture.
        chain = np.full(n_img, -1, dtype=np.int64)
        for a in range(5):
            pool = np.flatnonzero(chain_arch == a)
            w = 1.0 / np.arange(1, len(pool) + 1)
            sel = use_base & (arch == a)
            chain[sel] = pool[rng.choice(len(pool), int(sel.sum()), p=w / w.sum())]
        base_len = np.where(chain >= 0, chain_len[np.maximum(chain, 0)], 0)
        fixed = 2 * M + n_base + int(has_artifacts) + int(extra.sum()) - int((role == 1).sum()) - int((role == 4).sum())
        orphans_target = round(spec.blobs * ORPHAN_SHARE)
        lam = max(0.0, (spec.blobs - orphans_target - fixed) / max(1, n_img))
        fresh = rng.poisson(lam, n_img)
        img_of_manifest = np.full(M, -1, dtype=np.int64)
        img_of_manifest[img] = np.arange(n_img)
        first_img = img_of_manifest[top[first[tag[ipush]]]]
        count = base_len + fresh
        keep = np.zeros(n_img, dtype=np.int64)
        keep[rebuild] = np.maximum(0, count[first_img[rebuild]] - rng.integers(1, 3, int(rebuild.sum())))
        fresh = np.where((base_len == 0) & (keep == 0) & (fresh == 0), 1, fresh)
        count = np.where(rebuild, keep, base_len) + fresh
        offsets = (np.cumsum(count) - count).astype(I32 if len(count) and count.sum() < 2**31 else np.int64)
        count = count.astype(I32)
        layers = np.empty(int(count.sum()), dtype=I32)
        with_base = np.flatnonzero(base_len)
        within = _ragged(base_len[with_base])
        layers[np.repeat(offsets[with_base], base_len[with_base]) + within] = (
            np.repeat(chain_start[chain[with_base]], base_len[with_base]) + within
        )
        F = int(fresh.sum())
        pre = np.where(rebuild, keep, base_len)
        within = _ragged(fresh)
        layers[np.repeat(offsets + pre, fresh) + within] = next_id + np.arange(F)
        self.fresh_first = next_id
        next_id += F
        kept = np.flatnonzero(keep)
        within = _ragged(keep[kept])
        layers[np.repeat(offsets[kept], keep[kept]) + within] = layers[
            np.repeat(offsets[first_img[kept]], keep[kept]) + within
        ]
        self.img, self.layer_count, self.layers = img.astype(I32), count.astype(I32), layers
        self.layer_offsets = offsets
        self.orphan_first = next_id
        n_orphans = max(0, spec.blobs - next_id)
        next_id += n_orphans
        B = next_id
        self.digests = Digests(spec.seed, self.empty_id)

        # -- blob sizes and times
        # Blobs are at most MAX_LAYER bytes; times are seconds since EPOCH_S: four bytes each.
        size = np.empty(B, dtype=I32)
        mtime = np.empty(B, dtype=np.uint32)
        size[:n_base] = _lognormal(rng, 25 * MIB, 0.9, n_base)
        mtime[:n_base] = rng.integers(1, 90 * 86400, n_base)
        m_at = (self.push_at[push] // 10**9 - EPOCH_S).astype(np.uint32)
        # A manifest's JSON fits in its size: a header, then a bounded length per descriptor.
        ref_len = np.zeros(M, dtype=np.int64)
        ref_len += np.where(role == 1, 0, 220)
        ref_len += np.where(role == 1, k[push] * (1 + attest[push]) * 260, 0)
        ref_len += np.where(role == 4, 400, 0)
        ref_len[img] += count * 180
        ref_len += np.where(role == 3, 400, 0)
        msize = 300 + ref_len + rng.integers(0, 64, M)
        self.manifest_size = msize.astype(I32)
        size[self.manifest_blob] = msize
        mtime[self.manifest_blob] = m_at
        cfg = config_blob >= 0
        own_cfg = cfg & (role != 4)
        size[config_blob[own_cfg]] = rng.integers(900, 9000, int(own_cfg.sum()))
        mtime[config_blob[own_cfg]] = m_at[own_cfg]
        if has_artifacts:
            size[self.empty_id] = len(EMPTY_JSON)
            mtime[self.empty_id] = m_at[role == 4].min()
        size[extra_blob[extra]] = rng.integers(250, 700, int(extra.sum()))
        mtime[extra_blob[extra]] = m_at[extra]
        for a in range(self.fresh_first, self.fresh_first + F, CHUNK):
            b = min(a + CHUNK, self.fresh_first + F)
            size[a:b] = _lognormal(rng, 1.5 * MIB, 2.2, b - a)
        mtime[self.fresh_first : self.fresh_first + F] = np.repeat(m_at[img], fresh)
        size[self.orphan_first :] = _lognormal(rng, 1.5 * MIB, 2.2, n_orphans)
        mtime[self.orphan_first :] = 90 * 86400 + rng.integers(0, SPAN_S, n_orphans)
        self.blob_size, self.blob_mtime = size, mtime

        # -- revisions: every manifest, in its push's repository; a few untagged ones deleted through the API
        current = np.zeros(M, dtype=bool)
        current[top[last]] = True
        self.deleted = ~current & (rng.random(M) < DELETED_REVISION_SHARE)
        # -- layer links: every blob a repository's manifests name, and some orphans (interrupted pushes)
        m_repo = repo[push]
        m_repo = m_repo.astype(I32)
        linked = rng.random(n_orphans) < LINKED_ORPHAN_SHARE
        orphan_repo = rng.integers(0, R, int(linked.sum())).astype(I32)
        by_repo = np.argsort(orphan_repo, kind="stable")
        pairs = [
            (m_repo[cfg], config_blob[cfg]),
            (m_repo[extra], extra_blob[extra]),
            (np.repeat(m_repo[img], count), layers),
            (orphan_repo[by_repo], (self.orphan_first + np.flatnonzero(linked)).astype(I32)[by_repo]),
        ]
        # Every source is in repository order: each run of repositories is made unique on its own.
        link_repo, link_blob = [], []
        for lo in range(0, R, max(1, R // 16)):
            hi = lo + max(1, R // 16)
            keys = []
            for r, b in pairs:
                a, z = np.searchsorted(r, [lo, hi])
                keys.append((r[a:z].astype(np.int64) << 36) | b[a:z])
            unique = np.unique(np.concatenate(keys))
            link_repo.append((unique >> 36).astype(I32))
            link_blob.append((unique & ((1 << 36) - 1)).astype(I32))
        del pairs
        self.link_repo, self.link_blob = np.concatenate(link_repo), np.concatenate(link_blob)
        self.m_repo = m_repo.astype(I32)
        self.repo_changed = np.full(R, -1, dtype=np.int64)
        np.maximum.at(self.repo_changed, repo, self.push_at)
        # -- uploads in progress
        n_up = max(2, R // 40)
        self.up_repo = rng.integers(0, R, n_up)
        self.up_bytes = _lognormal(rng, 4 * MIB, 1.5, n_up)
        self.up_ids = [
            str(uuid.UUID(bytes=bytes(rng.integers(0, 256, 16, dtype=np.uint8)), version=4)) for _ in range(n_up)
        ]
        now = datetime.now(UTC).replace(microsecond=0)
        self.up_started = [now - timedelta(seconds=int(s)) for s in rng.integers(360, 720 * 3600, n_up)]
        self.blob_count, self.M, self.P, self.T, self.R, self.n_orphans = B, M, P, T, R, n_orphans

    # -- tables, chunk by chunk ------------------------------------------------

    def _repo(self, codes: np.ndarray) -> pa.Array:
        return _take(self.repo_names, codes)

    def repositories(self) -> Iterator[pa.Table]:
        n = self.R
        yes = pa.array(np.ones(n, dtype=bool))
        yield pa.table(
            {
                "repository": self._repo(np.arange(n)),
                "has_manifests": yes,
                "has_layers": yes,
                "has_uploads": yes,
                "layers_changed_at": _times(self.repo_changed),
            }
        )

    def tag_names(self, tags: np.ndarray) -> pa.Array:
        return _tag_names(self.tag_local[tags])

    def tags(self) -> Iterator[pa.Table]:
        for a in range(0, self.T, CHUNK):
            t = np.arange(a, min(self.T, a + CHUNK))
            last = self.tag_last_push[t]
            yield pa.table(
                {
                    "repository": self._repo(self.tag_repo[t]),
                    "tag": self.tag_names(t),
                    "digest": self.digests.array(self.manifest_blob[self.push_top[last]]),
                    "pushed_at": _times(self.push_at[last]),
                }
            )

    def tag_history(self) -> Iterator[pa.Table]:
        for a in range(0, self.P, CHUNK):
            p = np.arange(a, min(self.P, a + CHUNK))
            yield pa.table(
                {
                    "repository": self._repo(self.push_repo[p]),
                    "tag": self.tag_names(self.push_tag[p]),
                    "digest": self.digests.array(self.manifest_blob[self.push_top[p]]),
                    "pushed_at": _times(self.push_at[p]),
                }
            )

    def revisions(self) -> Iterator[pa.Table]:
        for a in range(0, self.M, CHUNK):
            m = np.arange(a, min(self.M, a + CHUNK))
            gone = self.deleted[m]
            digest = self.digests.array(self.manifest_blob[m])
            yield pa.table(
                {
                    "repository": self._repo(self.m_repo[m]),
                    "digest": digest,
                    "target": self.digests.array(self.manifest_blob[m], null=gone),
                    "linked": pa.array(~gone),
                    "pushed_at": _times(self.push_at[self.m_push[m]], null=gone),
                }
            )

    def _media(self, m: np.ndarray) -> np.ndarray:
        role, oci = self.m_role[m], self.m_oci[m]
        return np.select(
            [role == 1, (role == 0) | (role == 2)],
            [
                np.where(oci, M_[MT_OCI_INDEX], M_[MT_DOCKER_LIST]),
                np.where(oci, M_[MT_OCI_MANIFEST], M_[MT_DOCKER_MANIFEST]),
            ],
            M_[MT_OCI_MANIFEST],
        )

    def _config_media(self, m: np.ndarray) -> np.ndarray:
        role, oci = self.m_role[m], self.m_oci[m]
        return np.select(
            [role == 4, role == 3, oci], [M_[MT_OCI_EMPTY], M_[MT_OCI_CONFIG], M_[MT_OCI_CONFIG]], M_[MT_DOCKER_CONFIG]
        )

    def manifests(self) -> Iterator[pa.Table]:
        for a in range(0, self.M, CHUNK):
            m = np.arange(a, min(self.M, a + CHUNK))
            role, oci = self.m_role[m], self.m_oci[m]
            kind = np.select(
                [role == 4, role == 1, oci],
                [4, np.where(oci, 3, 1), 2],
                0,
            )
            artifact = role == 4
            yield pa.table(
                {
                    "digest": self.digests.array(self.manifest_blob[m]),
                    "size": pa.array(self.manifest_size[m]),
                    "kind": _take(KINDS, kind),
                    "media_type": _take(MEDIA, self._media(m)),
                    "schema_version": pa.array(np.full(len(m), 2, dtype=np.int64)),
                    "artifact_type": _take(MEDIA, ARTIFACT_KINDS[self.artifact_kind[m], 0], null=~artifact),
                    "subject": self.digests.array(self.manifest_blob[np.maximum(self.m_subject[m], 0)], null=~artifact),
                    "config_media_type": _take(MEDIA, self._config_media(m), null=role == 1),
                }
            )

    def _references(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """The references of manifests lo..hi-1 as columns of codes, in the order a scan lists them."""
        m = np.arange(lo, hi)
        role = self.m_role[m]
        parts: list[dict[str, np.ndarray]] = []

        def part(
            owner: np.ndarray,
            ref: int,
            slot: np.ndarray,
            blob: np.ndarray,
            media: np.ndarray,
            size: np.ndarray,
            platform: np.ndarray,
            position: np.ndarray,
        ) -> None:
            parts.append(
                {
                    "owner": owner,
                    "ref": np.full(len(owner), ref, dtype=np.int8),
                    "slot": slot,
                    "blob": blob,
                    "media": media,
                    "size": size,
                    "platform": platform,
                    "position": position,
                }
            )

        # Subjects first, then children, then the config, then layers: the parser's order.
        art = m[role == 4]
        subj = self.m_subject[art]
        part(
            art,
            SUBJECT,
            np.zeros(len(art), dtype=np.int64),
            self.manifest_blob[subj],
            self._media(subj),
            self.manifest_size[subj],
            np.full(len(art), -1),
            np.zeros(len(art), dtype=np.int64),
        )
        # A chunk holds whole pushes: an index's children are in it with the index.
        kids = m[(role == 2) | (role == 3)]
        parents = self.push_top[self.m_push[kids]]
        part(
            parents,
            CHILD,
            1 + self.m_position[kids],
            self.manifest_blob[kids],
            self._media(kids),
            self.manifest_size[kids],
            self.m_platform[kids].astype(np.int64),
            self.m_position[kids],
        )
        cfg = m[self.config_blob[m] >= 0]
        blob = self.config_blob[cfg]
        part(
            cfg,
            CONFIG,
            np.full(len(cfg), 1 << 20),
            blob,
            self._config_media(cfg),
            self.blob_size[blob],
            np.full(len(cfg), -1),
            np.zeros(len(cfg), dtype=np.int64),
        )
        ext = m[self.extra_blob[m] >= 0]
        blob = self.extra_blob[ext]
        media = np.where(self.m_role[ext] == 3, M_[MT_IN_TOTO], ARTIFACT_KINDS[self.artifact_kind[ext], 1])
        part(
            ext,
            LAYER,
            np.full(len(ext), (1 << 20) + 1),
            blob,
            media,
            self.blob_size[blob],
            np.full(len(ext), -1),
            np.zeros(len(ext), dtype=np.int64),
        )
        lo_i, hi_i = np.searchsorted(self.img, [lo, hi])
        imgs = np.arange(lo_i, hi_i)
        n = self.layer_count[imgs]
        owner = np.repeat(self.img[imgs], n)
        within = _ragged(n)
        blob = self.layers[np.repeat(self.layer_offsets[imgs], n) + within]
        media = np.where(self.m_oci[owner], M_[MT_OCI_LAYER], M_[MT_DOCKER_LAYER])
        part(owner, LAYER, (1 << 20) + 1 + within, blob, media, self.blob_size[blob], np.full(len(owner), -1), within)
        cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        order = np.lexsort((cols["slot"], cols["owner"]))
        return {key: value[order] for key, value in cols.items()}

    def references(self) -> Iterator[pa.Table]:
        # Chunks end at a push's end, so an index and its children fall in one.
        cuts = [0, *(int(self.push_top[self.m_push[b]]) for b in range(CHUNK // 8, self.M, CHUNK // 8)), self.M]
        for lo, hi in itertools.pairwise(cuts):
            if hi <= lo:
                continue
            c = self._references(lo, hi)
            owner = c["owner"]
            yield pa.table(
                {
                    "manifest": self.digests.array(self.manifest_blob[owner]),
                    "ref_type": _take(REF_TYPES, c["ref"]),
                    "digest": self.digests.array(c["blob"]),
                    "media_type": _take(MEDIA, c["media"]),
                    "size": pa.array(c["size"]),
                    "platform": _take(PLATFORM_NAMES, np.maximum(c["platform"], 0), null=c["platform"] < 0),
                    "position": pa.array(c["position"]),
                }
            )

    def layer_links(self) -> Iterator[pa.Table]:
        for a in range(0, len(self.link_blob), CHUNK):
            s = slice(a, a + CHUNK)
            digest = self.digests.array(self.link_blob[s])
            yield pa.table({"repository": self._repo(self.link_repo[s]), "digest": digest, "target": digest})

    def _blob_ns(self, blobs: np.ndarray) -> np.ndarray:
        return (self.blob_mtime[blobs].astype(np.int64) + EPOCH_S) * 10**9

    def blobs(self) -> Iterator[pa.Table]:
        for a in range(0, self.blob_count, CHUNK):
            b = np.arange(a, min(self.blob_count, a + CHUNK))
            yield pa.table(
                {
                    "digest": self.digests.array(b),
                    "size": pa.array(self.blob_size[b].astype(np.int64)),
                    "mtime": _times(self._blob_ns(b)),
                }
            )

    def uploads(self) -> Iterator[pa.Table]:
        yield pa.table(
            {
                "repository": self._repo(self.up_repo),
                "id": pa.array(self.up_ids, pa.large_string()),
                "bytes": pa.array(self.up_bytes),
                "started_at": pa.array(self.up_started, pa.timestamp("ns", tz="UTC")),
            }
        )

    def findings(self) -> Iterator[pa.Table]:
        gone = np.flatnonzero(self.deleted)
        repos = [self.repo_names[r] for r in self.m_repo[gone]]
        digests = self.digests.text(self.manifest_blob[gone])
        paths = [parent(path_for(RevisionLink(r, Digest.parse(d)))) for r, d in zip(repos, digests, strict=True)]
        kind = Kind.DELETED_REVISION
        table = pa.table(
            {
                "kind": pa.array([kind.value] * len(gone), pa.large_string()),
                "severity": pa.array([SEVERITY[kind].value] * len(gone), pa.large_string()),
                "repository": pa.array(repos, pa.large_string()),
                "path": pa.array(paths, pa.large_string()),
                "digest": pa.array(digests, pa.large_string()),
                "detail": pa.array(["revision directory without a link (deleted)"] * len(gone), pa.large_string()),
            }
        )
        yield table.sort_by([("path", "ascending"), ("kind", "ascending")])

    def write(self, directory: Path, root: str) -> dict[str, int]:
        """Write the snapshot into `directory` (created); the table counts."""
        started = time.monotonic()
        out = SnapshotWriter(directory)
        blob_bytes = int(self.blob_size.sum(dtype=np.int64))
        for name in (
            "repositories",
            "tags",
            "tag_history",
            "revisions",
            "manifests",
            "references",
            "layer_links",
            "blobs",
            "uploads",
            "findings",
        ):
            for batch in getattr(self, name)():
                out.write(name, batch)
        out.close(
            {
                "tool": "storage-audit",
                "version": __version__,
                "root": root,
                "scanned_at": datetime.now(UTC).isoformat(),
                "scan_seconds": time.monotonic() - started,
                "counts": out.counts(),
                "blob_bytes": blob_bytes,
                "upload_bytes": int(self.up_bytes.sum()),
                "synthetic": {
                    "blobs": self.spec.blobs,
                    "manifests": self.spec.manifests,
                    "repositories": self.spec.repositories,
                    "seed": self.spec.seed,
                },
            }
        )
        return out.counts()

    # -- the same registry as a storage tree (small sizes only) -----------------

    def _manifest_json(self, m: int, refs: dict[str, np.ndarray], lo: int, hi: int, names: list[str]) -> bytes:
        role, oci = int(self.m_role[m]), bool(self.m_oci[m])
        doc: dict[str, object] = {"schemaVersion": 2}
        # Some OCI manifests omit mediaType, which their structure then implies.
        if not oci or role == 4 or self.manifest_blob[m] % 5 != 0:
            doc["mediaType"] = MEDIA[int(self._media(np.array([m]))[0])]
        if role == 4:
            doc["artifactType"] = MEDIA[int(ARTIFACT_KINDS[self.artifact_kind[m], 0])]

        def desc(i: int) -> dict[str, object]:
            out: dict[str, object] = {
                "mediaType": MEDIA[int(refs["media"][i])],
                "digest": names[refs["blob"][i]],
                "size": int(refs["size"][i]),
            }
            if refs["platform"][i] >= 0:
                out["platform"] = PLATFORMS[int(refs["platform"][i])]
            return out

        rows = range(lo, hi)
        children = [desc(i) for i in rows if refs["ref"][i] == CHILD]
        if role == 1:
            doc["manifests"] = children
        configs = [desc(i) for i in rows if refs["ref"][i] == CONFIG]
        if configs:
            doc["config"] = configs[0]
        if role != 1:
            doc["layers"] = [desc(i) for i in rows if refs["ref"][i] == LAYER]
        subjects = [desc(i) for i in rows if refs["ref"][i] == SUBJECT]
        if subjects:
            doc["subject"] = subjects[0]
        content = json.dumps(doc, separators=(",", ":")).encode()
        size = int(self.manifest_size[m])
        if len(content) > size:
            raise AssertionError(f"manifest {m} needs {len(content)} bytes, planned {size}")
        return content + b" " * (size - len(content))

    def write_tree(self, root: Path) -> Path:
        """Write this registry as a storage tree under `root/docker/registry/v2` (which must not exist)."""
        v2 = root / "docker" / "registry" / "v2"
        v2.mkdir(parents=True)
        refs = self._references(0, self.M)
        starts = np.searchsorted(refs["owner"], np.arange(self.M + 1))
        manifest_of_blob = {int(b): m for m, b in enumerate(self.manifest_blob)}
        names = self.digests.text(np.arange(self.blob_count))
        blob_ns = self._blob_ns(np.arange(self.blob_count))

        def put(rel: str, content: bytes | None, mtime: int | None, size: int = 0) -> None:
            path = v2 / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as fh:
                if content is None:
                    fh.truncate(size)  # contents no scan reads: a hole costs no disk
                else:
                    fh.write(content)
            if mtime is not None:
                os.utime(path, ns=(mtime, mtime))

        for b, name in enumerate(names):
            m = manifest_of_blob.get(b)
            if m is not None:
                content: bytes | None = self._manifest_json(m, refs, int(starts[m]), int(starts[m + 1]), names)
            else:
                content = EMPTY_JSON if b == self.empty_id else None
            size = int(self.blob_size[b])
            put(path_for(BlobData(Digest.parse(name))), content, int(blob_ns[b]), size)
        for repo in self.repo_names:
            (v2 / path_for(RepositoryPart(repo, "_uploads"))).mkdir(parents=True, exist_ok=True)
        for r, b in zip(self.link_repo, self.link_blob, strict=True):
            digest = Digest.parse(names[b])
            put(path_for(LayerLink(self.repo_names[r], digest)), str(digest).encode(), None)
        for m in range(self.M):
            repo, digest = self.repo_names[self.m_repo[m]], Digest.parse(names[self.manifest_blob[m]])
            link = v2 / path_for(RevisionLink(repo, digest))
            if self.deleted[m]:
                link.parent.mkdir(parents=True)  # deleted through the API: the registry removes only the link
            else:
                put(path_for(RevisionLink(repo, digest)), str(digest).encode(), int(self.push_at[self.m_push[m]]))
        tag_names = self.tag_names(np.arange(self.T)).to_pylist()
        for p in range(self.P):
            repo, tag = self.repo_names[self.push_repo[p]], tag_names[self.push_tag[p]]
            digest = Digest.parse(names[self.manifest_blob[self.push_top[p]]])
            put(path_for(TagIndexLink(repo, tag, digest)), str(digest).encode(), int(self.push_at[p]))
        for t in range(self.T):
            p = self.tag_last_push[t]
            repo = self.repo_names[self.tag_repo[t]]
            digest = names[self.manifest_blob[self.push_top[p]]]
            put(path_for(TagCurrentLink(repo, tag_names[t])), digest.encode(), int(self.push_at[p]))
        for r, upload_id, size, started in zip(self.up_repo, self.up_ids, self.up_bytes, self.up_started, strict=True):
            repo = self.repo_names[r]
            put(path_for(UploadData(repo, upload_id)), None, None, int(size))
            put(path_for(UploadStartedAt(repo, upload_id)), started.strftime("%Y-%m-%dT%H:%M:%SZ").encode(), None)
        # Last: adding a layer link (a directory in `_layers/sha256`) is what moves this mtime.
        for r, repo in enumerate(self.repo_names):
            changed = int(self.repo_changed[r])
            os.utime(v2 / path_for(LayersAlgorithm(repo, "sha256")), ns=(changed, changed))
        return v2


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("output", type=Path, help="snapshot directory to write (must not exist)")
    parser.add_argument("--blobs", type=int, default=Spec.blobs)
    parser.add_argument("--manifests", type=int, default=Spec.manifests)
    parser.add_argument("--repositories", type=int, default=Spec.repositories)
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument("--tree", type=Path, help="also write the same registry as a storage tree under this root")
    args = parser.parse_args(argv)
    if args.output.exists():
        print(f"gen_snapshot: {args.output} already exists; choose a new directory", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError, AttributeError, TypeError):
        # Big arrays get pages of their own, given back when freed, instead of staying in the heap.
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    started = time.monotonic()
    plan = Plan(Spec(args.blobs, args.manifests, args.repositories, args.seed))
    planned = time.monotonic() - started
    root = str(args.tree / "docker" / "registry" / "v2") if args.tree else f"synthetic:seed={args.seed}"
    counts = plan.write(args.output, root)
    if args.tree:
        plan.write_tree(args.tree)
    summary = ", ".join(f"{count} {name}" for name, count in counts.items())
    print(
        f"wrote {args.output}: {summary}; planned in {planned:.1f}s, "
        f"{time.monotonic() - started:.1f}s in all, peak RSS {_peak_rss_mb():.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
