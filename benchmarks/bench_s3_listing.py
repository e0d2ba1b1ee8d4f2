"""Time listing every key under a registry prefix in a local SeaweedFS: one flat listing against the sharded one.

A synthetic registry is written directly as objects (blob data, layer and
revision links, tags), then each way of listing runs `--repeat` times in
alternating order. Requests are counted twice: by the library's own
counters and by the server's metrics (what it actually answered).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from storage_audit.storage.bucket import S3Bucket  # noqa: E402
from tests.s3_harness import SeaweedS3, bucket_for  # noqa: E402

ROOT = "bench"


def synthetic_keys(repositories: int, manifests: int, blobs: int, seed: int = 1) -> dict[str, bytes]:
    """Paths under `v2/` and their content for a registry of that size (layers are a few bytes each)."""
    rng = random.Random(seed)
    digests = ["sha256:" + hashlib.sha256(rng.randbytes(16)).hexdigest() for _ in range(blobs)]
    out: dict[str, bytes] = {}
    for d in digests:
        out[f"blobs/sha256/{d[7:9]}/{d[7:]}/data"] = d.encode()[:12]
    repos = [f"org{i % 7}/app{i}" for i in range(repositories)]
    for i in range(manifests):
        repo = repos[i % repositories]
        manifest = digests[i % blobs]
        out[f"repositories/{repo}/_manifests/revisions/sha256/{manifest[7:]}/link"] = manifest.encode()
        if i % 2 == 0:
            tag = f"v{i}"
            out[f"repositories/{repo}/_manifests/tags/{tag}/current/link"] = manifest.encode()
            out[f"repositories/{repo}/_manifests/tags/{tag}/index/sha256/{manifest[7:]}/link"] = manifest.encode()
        for layer in rng.sample(digests, 3):
            out[f"repositories/{repo}/_layers/sha256/{layer[7:]}/link"] = layer.encode()
    return out


async def write_all(bucket: S3Bucket, contents: dict[str, bytes]) -> None:
    import obstore

    semaphore = asyncio.Semaphore(32)

    async def put(path: str, data: bytes) -> None:
        async with semaphore:
            await obstore.put_async(bucket.store, bucket.location.key(path), data)

    await asyncio.gather(*(put(p, d) for p, d in contents.items()))


LAST_KEY = "\U0010ffff"


def flat_listing(bucket: S3Bucket) -> int:
    """One flat listing of the whole prefix, page after page: the floor every audit pays once (a range of keys
    from the first to the last, below the top directory, as apply lists its ranges)."""
    return len(bucket.run(bucket.list_range_async("", "", LAST_KEY)))


def sharded_listing(bucket: S3Bucket) -> int:
    """The sharded listing an S3Storage reads the tree from."""
    return len(bucket.run(bucket.list_all_async()).objects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repositories", type=int, default=20)
    parser.add_argument("--manifests", type=int, default=400)
    parser.add_argument("--blobs", type=int, default=2400)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="listings in flight for the sharded one")
    args = parser.parse_args(argv)

    contents = synthetic_keys(args.repositories, args.manifests, args.blobs)
    with SeaweedS3() as server:
        asyncio.run(write_all(bucket_for(server, ROOT), contents))
        print(
            f"{len(contents):,} keys ({args.repositories} repositories, {args.manifests} manifests, "
            f"{args.blobs} blobs) in SeaweedFS on loopback; median of {args.repeat} runs",
            file=sys.stderr,
        )
        ways: dict[str, Callable[[S3Bucket], int]] = {"flat": flat_listing, "sharded": sharded_listing}
        times: dict[str, list[float]] = {name: [] for name in ways}
        requests: dict[str, tuple[int, int]] = {}
        for run in range(args.repeat):
            for name, way in ways.items() if run % 2 == 0 else reversed(ways.items()):
                bucket = bucket_for(server, ROOT, concurrency=args.concurrency)
                before = server.request_counts()["LIST"]
                start = time.perf_counter()
                found = way(bucket)
                times[name].append(time.perf_counter() - start)
                if found != len(contents):
                    raise SystemExit(f"{name} listing found {found} keys of {len(contents)}")
                requests[name] = (bucket.counters.requests["list"], server.request_counts()["LIST"] - before)
        print("| listing | wall time (median) | LIST requests (library) | LIST requests (server) |")
        print("|---|---|---|---|")
        for name in ways:
            mine, served = requests[name]
            print(f"| {name} | {statistics.median(times[name]):.3f} s | {mine} | {served} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
