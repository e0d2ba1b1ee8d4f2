"""Time storage-audit against the reference collector on a registry in a local SeaweedFS bucket.

A synthetic registry (default: 200 repositories, 4,000 manifests, 24,000
blobs) is written directly as objects, with layers a few bytes each since
neither tool reads a layer's content: every manifest is a real image manifest
(its own config blob and three layers from a shared pool), every other
manifest of each repository is tagged, the rest are untagged, and the pool's
unreferenced layers are orphans.
A registry configuration for the `s3` driver points at the bucket. Then, side
by side in one run:

- one bare flat listing of every key under the prefix (the floor: every key
  must be listed once);
- `storage-audit scan --no-cache` on the configuration;
- `storage-audit orphans --delete-untagged --no-cache` on the configuration;
- the reference `registry garbage-collect --dry-run --delete-untagged` on the
  same configuration, killed at `--gc-timeout` (then its time is a lower bound);
- with `--baseline DIR`, `orphans` again from another checkout of storage-audit
  (before and after a change, in the same run, on the same bucket).

With `--repeat N`, the listing and the storage-audit commands run N times in
turn (the collector once), and each row shows the median wall time.

Requests are counted from the server's own metrics (what it answered), and a
Markdown table gives wall times, requests, requests per 1,000 blobs, and the
ratios that the targets bound (orphans / bare listing, orphans / collector,
orphans' requests / collector's).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for extra in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_s3_listing import write_all  # noqa: E402
from bench_scan import _storage_audit_argv, baseline_argv, markdown_table, measure  # noqa: E402

from tests.registry_harness import config_text, free_port, registry_binary  # noqa: E402
from tests.s3_harness import SeaweedS3, bucket_for, registry_environment, s3_storage_block  # noqa: E402

ROOT = "bench"
MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYERS_PER_IMAGE = 3


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc: object) -> bytes:
    return json.dumps(doc, indent=3).encode()


def registry_keys(repositories: int, manifests: int, blobs: int, seed: int = 1) -> dict[str, bytes]:
    """Paths under `v2/` and their content: the layout of `bench_s3_listing.synthetic_keys` with real manifests.

    `blobs` counts every blob: one manifest and one config per manifest, and
    a pool of layers (a few bytes each) for the rest.
    """
    pool = blobs - 2 * manifests
    if pool < LAYERS_PER_IMAGE:
        raise SystemExit(f"--blobs must be at least 2 x --manifests + {LAYERS_PER_IMAGE}")
    rng = random.Random(seed)
    out: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = _digest(data)
        out[f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data"] = data
        return digest

    layers = [(blob(rng.randbytes(8)), 8) for _ in range(pool)]
    repos = [f"org{i % 7}/app{i}" for i in range(repositories)]
    for i in range(manifests):
        repo = repos[i % repositories]
        config = _json({"architecture": "amd64", "os": "linux", "created": f"image {i}", "rootfs": {"type": "layers"}})
        config_digest = blob(config)
        chosen = rng.sample(layers, LAYERS_PER_IMAGE)
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "size": len(config), "digest": config_digest},
                "layers": [{"mediaType": MT_LAYER, "size": size, "digest": d} for d, size in chosen],
            }
        )
        digest = blob(manifest)
        base = f"repositories/{repo}"
        out[f"{base}/_manifests/revisions/sha256/{digest[7:]}/link"] = digest.encode()
        # Every other manifest of each repository is tagged: the collector stops at a repository without tags.
        if (i // repositories) % 2 == 0:
            tag = f"v{i}"
            out[f"{base}/_manifests/tags/{tag}/current/link"] = digest.encode()
            out[f"{base}/_manifests/tags/{tag}/index/sha256/{digest[7:]}/link"] = digest.encode()
        for d in (config_digest, *(d for d, _ in chosen)):
            out[f"{base}/_layers/sha256/{d[7:]}/link"] = d.encode()
    return out


@dataclass
class Row:
    name: str
    command: str
    wall: float | None
    requests: dict[str, int]
    note: str = ""
    lower_bound: bool = False
    walls: list[float] = field(default_factory=list)
    """Every run's wall time, when there were several (`wall` is then their median)."""

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def _delta(server: SeaweedS3, before: dict[str, int]) -> dict[str, int]:
    after = server.request_counts()
    return {kind: after[kind] - before.get(kind, 0) for kind in after if after[kind] - before.get(kind, 0)}


def bare_listing(server: SeaweedS3, expected: int) -> Row:
    bucket = bucket_for(server, ROOT)
    before = dict(server.request_counts())
    start = time.perf_counter()
    # A range from the first key to the last below the top directory: one flat listing, page after page.
    found = len(bucket.run(bucket.list_range_async("", "", "\U0010ffff")))
    wall = time.perf_counter() - start
    if found != expected:
        raise SystemExit(f"the bare listing found {found} keys of {expected}")
    return Row("bare listing (floor)", "one flat ListObjectsV2, page after page", wall, _delta(server, before))


def run_command(server: SeaweedS3, name: str, argv: list[str], timeout: float, env: dict[str, str]) -> Row:
    """Run argv with `env` as the whole environment, counting what the server answered meanwhile."""
    before = dict(server.request_counts())
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        run = measure(argv, None, timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    requests = _delta(server, before)
    shown = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
    if run.timed_out:
        return Row(name, shown, timeout, requests, f"killed at {timeout:.0f} s", lower_bound=True)
    # storage-audit exits 3 when it has findings to show; anything else is a failure.
    if run.status not in (0, 3):
        return Row(name, shown, None, requests, f"exit {run.status}: {run.stderr_tail[-300:]}")
    return Row(name, shown, run.wall, requests)


def _seconds(row: Row) -> str:
    if row.wall is None:
        return "failed"
    if row.lower_bound:
        return f"> {row.wall:.2f} s"
    if len(row.walls) > 1:
        return f"{row.wall:.2f} s (median of {', '.join(f'{w:.2f}' for w in row.walls)})"
    return f"{row.wall:.2f} s"


def _median(runs: list[Row]) -> Row:
    """The last run, with the median wall time of all (a failed run fails the row)."""
    last = runs[-1]
    if len(runs) == 1 or any(r.wall is None or r.lower_bound for r in runs):
        return next((r for r in runs if r.wall is None or r.lower_bound), last)
    walls = [r.wall for r in runs if r.wall is not None]
    return Row(last.name, last.command, statistics.median(walls), last.requests, last.note, walls=walls)


def _ratio(value: float | None, base: float | None, base_is_lower_bound: bool = False) -> str:
    if value is None or not base:
        return "-"
    return f"{'< ' if base_is_lower_bound else ''}{value / base:.3f}"


def render(rows: dict[str, Row], blobs: int) -> str:
    floor, orphans, gc = rows["floor"], rows["orphans"], rows["gc"]
    table = []
    for row in rows.values():
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(row.requests.items()))
        table.append(
            [
                row.name,
                _seconds(row),
                _ratio(row.wall, floor.wall),
                f"{row.total:,}{'+' if row.lower_bound else ''}",
                kinds or "-",
                f"{row.total * 1000 / blobs:,.1f}",
                row.note or "-",
            ]
        )
    header = ["command", "wall time", "x bare listing", "requests", "by kind", "requests / 1,000 blobs", "note"]
    lines = [markdown_table(header, table, lefts=(0, 4, 6)), ""]
    targets = [
        ("orphans / bare listing (target <= 1.5)", _ratio(orphans.wall, floor.wall)),
        ("orphans / collector wall time (target <= 0.1)", _ratio(orphans.wall, gc.wall, gc.lower_bound)),
        ("orphans / collector requests (target <= 0.25)", _ratio(orphans.total, gc.total, gc.lower_bound)),
    ]
    if "baseline" in rows:
        baseline = rows["baseline"]
        targets += [
            ("baseline orphans / bare listing", _ratio(baseline.wall, floor.wall)),
            ("baseline orphans / collector wall time", _ratio(baseline.wall, gc.wall, gc.lower_bound)),
            ("orphans / baseline orphans", _ratio(orphans.wall, baseline.wall)),
        ]
    lines.append(markdown_table(["ratio", "value"], targets))
    lines.append("")
    lines.append("Commands:")
    lines += [f"- {row.name}: `{row.command}`" for row in rows.values()]
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic bucket's size and seed, shared by the benchmarks that write one."""
    parser.add_argument("--repositories", type=_positive, default=200, help="repositories (default 200)")
    parser.add_argument("--manifests", type=_positive, default=4000, help="manifests, half tagged (default 4,000)")
    parser.add_argument(
        "--blobs",
        type=_positive,
        default=24000,
        help="blobs in all: a manifest and a config per manifest, layers of a few bytes for the rest (default 24,000)",
    )
    parser.add_argument("--seed", type=int, default=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a storage-audit run is killed")
    parser.add_argument(
        "--gc-timeout",
        type=float,
        default=900.0,
        help="seconds before the collector is killed; its time and requests are then lower bounds (default 900)",
    )
    parser.add_argument("--no-gc", action="store_true", help="leave out the collector")
    parser.add_argument(
        "--repeat", type=_positive, default=1, help="runs of the listing and of each storage-audit command (median)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a checkout of storage-audit whose `orphans --delete-untagged` is timed too, in turn with this one",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage_audit = _storage_audit_argv()
    registry = registry_binary()
    if storage_audit is None:
        raise SystemExit("storage-audit is not installed")
    if registry is None and not args.no_gc:
        raise SystemExit("docker-registry is not installed (or pass --no-gc)")
    contents = registry_keys(args.repositories, args.manifests, args.blobs, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    try:
        with SeaweedS3() as server:
            start = time.perf_counter()
            asyncio.run(write_all(bucket_for(server, ROOT), contents))
            print(
                f"{len(contents):,} keys ({args.repositories} repositories, {args.manifests} manifests, "
                f"{args.blobs} blobs) written in {time.perf_counter() - start:.1f} s to SeaweedFS on loopback",
                file=sys.stderr,
            )
            config = tmp / "config.yml"
            config.write_text(
                config_text(tmp / "unused", free_port(), storage=s3_storage_block(server, "/" + ROOT)), encoding="utf-8"
            )
            # Both tools read the bucket from the configuration alone, as an operator would run them.
            env = registry_environment()
            env["XDG_CACHE_HOME"] = str(tmp / "cache")
            orphans_args = ["orphans", "--delete-untagged", "--no-cache", str(config)]
            steps: dict[str, Callable[[], Row]] = {
                "floor": lambda: bare_listing(server, len(contents)),
                "scan": lambda: run_command(
                    server, "storage-audit scan", [*storage_audit, "scan", "--no-cache", str(config)], args.timeout, env
                ),
                "orphans": lambda: run_command(
                    server,
                    "storage-audit orphans --delete-untagged",
                    [*storage_audit, *orphans_args],
                    args.timeout,
                    env,
                ),
            }
            if args.baseline is not None:
                baseline = baseline_argv(args.baseline)
                steps["baseline"] = lambda: run_command(
                    server,
                    f"orphans --delete-untagged from {args.baseline}",
                    [*baseline, *orphans_args],
                    args.timeout,
                    env,
                )
            runs: dict[str, list[Row]] = {}
            for round_ in range(args.repeat):
                for name, step in steps.items():
                    print(f"running {name} ({round_ + 1}/{args.repeat}) ...", file=sys.stderr)
                    runs.setdefault(name, []).append(step())
            rows = {name: _median(found) for name, found in runs.items()}
            if not args.no_gc:
                assert registry is not None
                print("running gc ...", file=sys.stderr)
                rows["gc"] = run_command(
                    server,
                    "registry garbage-collect --dry-run --delete-untagged",
                    [registry, "garbage-collect", "--dry-run", "--delete-untagged", str(config)],
                    args.gc_timeout,
                    env,
                )
            if "gc" not in rows:
                rows["gc"] = Row("registry garbage-collect (not run)", "-", None, {})
            print(render(rows, args.blobs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
