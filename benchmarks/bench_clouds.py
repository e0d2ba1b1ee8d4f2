"""Time storage-audit on a registry in Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite).

The synthetic registry of `bench_s3.py` (real image manifests, every other
one tagged, a pool of small layers) is written as objects into each emulator.
Then, per service:

- one bare flat listing of every key under the prefix (the floor: every key
  must be listed once), through obstore;
- the tool's own sharded listing alone (delimiter listings, then each shard
  flat, concurrently), in this process;
- `storage-audit --version`, the start-up every command pays;
- `storage-audit orphans --delete-untagged --no-cache` on the `gs://` or
  `az://` URL, its wall time;
- `storage-audit scan --no-cache`, for the requests it counts by kind (the
  emulators keep no request metrics: these are the tool's own counters);
- what walking the tree directory by directory would cost, worked out from
  the keys: one listing per directory, a GET per link file and per manifest.

A Markdown table gives wall times, requests, requests per 1,000 blobs, and the
ratios the targets bound (orphans / bare listing <= 1.5; requests / walk <= 0.25).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for extra in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_s3 import add_size_arguments, registry_keys  # noqa: E402
from bench_scan import measure  # noqa: E402

from storage_audit.storage.bucket import S3Bucket, parse_bucket_url  # noqa: E402
from storage_audit.storage.clouds import settings_for  # noqa: E402
from tests.cloud_harness import Azurite, CloudServer, FakeGCS, azurite_binary, fake_gcs_binary  # noqa: E402

ROOT = "bench"


def walk_requests(keys: dict[str, bytes]) -> int:
    """Requests a walk directory by directory takes: a listing per directory, a GET per link and per manifest."""
    directories = {"/".join(k.split("/")[:i]) for k in keys for i in range(len(k.split("/")))}
    links = sum(1 for k in keys if k.endswith("/link"))
    manifests = sum(1 for k in keys if "/_manifests/revisions/" in k)
    return len(directories) + links + manifests


def timed_listing(server: CloudServer, expected: int, sharded: bool) -> tuple[float, int]:
    """A listing of the tree, in this process: bare (one flat listing, the yardstick) or the tool's own
    (`list_all_async`: delimiter listings, then the shards flat, concurrently), which is what `orphans` waits on
    before and while it reads the manifests. Its wall time and requests."""
    location = parse_bucket_url(server.url(f"/{ROOT}"))
    saved = dict(os.environ)
    os.environ.update(server.environment())
    try:
        bucket = S3Bucket(location, settings_for(location))
        start = time.perf_counter()
        if sharded:
            found = len(bucket.run(bucket.list_all_async()).objects)
        else:
            found = len(bucket.run(bucket.list_range_async("", "", "\U0010ffff")))
        wall = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if found != expected:
        raise SystemExit(f"the {'sharded' if sharded else 'bare'} listing found {found} keys of {expected}")
    return wall, bucket.counters.total


def run(server: CloudServer, args: list[str]) -> tuple[float, str]:
    argv = [sys.executable, "-m", "storage_audit", *args]
    saved = dict(os.environ)
    os.environ.update(server.environment())
    try:
        result = measure(argv, None, 600)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if result.status not in (0, 3):
        raise SystemExit(f"{' '.join(args)}: exit {result.status}: {result.stderr_tail}")
    return result.wall, ""


def scan_requests(server: CloudServer) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "storage_audit", "scan", server.url(f"/{ROOT}"), "--no-cache"],
        env={**os.environ, **server.environment()},
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"^requests: (.*)$", done.stderr, re.MULTILINE)
    if found is None:
        raise SystemExit(f"scan: no request counts: {done.stderr[-500:]}")
    return found.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed command (median shown)")
    parser.add_argument("--service", choices=["gcs", "azure"], action="append", help="default: both")
    args = parser.parse_args(argv)
    keys = registry_keys(args.repositories, args.manifests, args.blobs, args.seed)
    walk = walk_requests(keys)
    print(f"{len(keys):,} keys, {args.blobs:,} blobs; a walk directory by directory: {walk:,} requests", flush=True)
    rows = []
    for name in args.service or ["gcs", "azure"]:
        binary = fake_gcs_binary() if name == "gcs" else azurite_binary()
        if binary is None:
            raise SystemExit(f"{name}: the emulator is not installed")
        objects = {f"{ROOT}/docker/registry/v2/{k}": v for k, v in keys.items()}
        start = time.perf_counter()
        if name == "gcs":
            # fake-gcs-server's PUTs slow down as the bucket grows: it loads a directory of files at start instead.
            data = Path(tempfile.mkdtemp(prefix="bench-gcs-"))
            for key, body in objects.items():
                target = data / "registry" / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body)
            try:
                server: CloudServer = FakeGCS(binary, data)
            except BaseException:
                shutil.rmtree(data, ignore_errors=True)  # an emulator that did not start leaves no copy behind
                raise
        else:
            server = Azurite(binary)
        try:
            if name != "gcs":
                server.put_many(objects)
            print(f"{name}: {len(keys):,} keys written in {time.perf_counter() - start:.1f} s", flush=True)
            listing = [timed_listing(server, len(keys), sharded=False) for _ in range(args.repeat)]
            sharded = [timed_listing(server, len(keys), sharded=True) for _ in range(args.repeat)]
            startup = [run(server, ["--version"])[0] for _ in range(args.repeat)]
            orphans = [
                run(server, ["orphans", server.url(f"/{ROOT}"), "--delete-untagged", "--no-cache", "-q", "-f", "csv"])[
                    0
                ]
                for _ in range(args.repeat)
            ]
            requests = scan_requests(server)
        finally:
            server.stop()
            if name == "gcs":
                shutil.rmtree(data, ignore_errors=True)
        total = int(requests.split()[0])
        list_wall = statistics.median(w for w, _ in listing)
        orphans_wall = statistics.median(orphans)
        sharded_wall = statistics.median(w for w, _ in sharded)
        startup_wall = statistics.median(startup)
        rows.append(
            f"| {name} | {list_wall:.2f} s ({listing[0][1]} requests) | {sharded_wall:.2f} s ({sharded[0][1]}) "
            f"| {startup_wall:.2f} s | {orphans_wall:.2f} s | {orphans_wall / list_wall:.2f}x "
            f"| {(orphans_wall - startup_wall) / list_wall:.2f}x | {requests} | {total * 1000 / args.blobs:.0f} "
            f"| {walk:,} | {total / walk:.2f}x |"
        )
    print()
    print(
        "| service | bare listing | the tool's sharded listing | start-up (`--version`) | orphans --delete-untagged "
        "| ratio | ratio less start-up | requests (scan) | per 1,000 blobs | walk, dir by dir | requests / walk |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
