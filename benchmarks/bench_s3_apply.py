"""Time `storage-audit apply` on a bucket against removing the same keys with one DELETE request each.

The synthetic registry of bench_s3.py (default: 200 repositories, 4,000
manifests, half of them untagged, 24,000 blobs) is written twice into a local
SeaweedFS bucket, under two rootdirectories. On the first,
`storage-audit plan --delete-untagged --min-age 0s` writes a plan and
`storage-audit apply` carries it out; the keys it removed (the listing before
less the listing after) are then removed from the second copy with one
DeleteObject request each, in sequence, by botocore (the reference collector
also sweeps one blob at a time, with a listing and a delete request each). Both copies must end with
the same keys. Requests are counted from the server's own metrics (what it
answered); a Markdown table gives, side by side, the objects removed, wall
time, requests by kind, and objects removed per request and per second.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for extra in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from bench_s3 import Row, _delta, _seconds, add_size_arguments, registry_keys, run_command  # noqa: E402
from bench_s3_listing import write_all  # noqa: E402
from bench_scan import _storage_audit_argv, markdown_table  # noqa: E402

from tests.s3_harness import SeaweedS3, bucket_for, raw_client, raw_keys, registry_environment, v2_prefix  # noqa: E402

APPLIED = "bench-apply"
ONE_BY_ONE = "bench-one-by-one"
MIN_REMOVED = 10_000


def relative_keys(server: SeaweedS3, rootdirectory: str) -> set[str]:
    """Every key under the rootdirectory's v2 prefix, relative to it (listed by botocore, not by the tool)."""
    prefix = v2_prefix(rootdirectory)
    return {key[len(prefix) :] for key in raw_keys(server, prefix)}


def delete_one_by_one(server: SeaweedS3, rootdirectory: str, paths: list[str]) -> Row:
    """One DeleteObject per key, each waiting for the last: the collector's way of sweeping."""
    client = raw_client(server)
    prefix = v2_prefix(rootdirectory)
    before = dict(server.request_counts())
    start = time.perf_counter()
    for path in paths:
        client.delete_object(Bucket=server.bucket, Key=prefix + path)
    wall = time.perf_counter() - start
    return Row(
        "one DELETE per key (botocore, sequential)",
        "client.delete_object(Bucket=..., Key=...) for each key, in order",
        wall,
        _delta(server, before),
    )


def render(rows: list[tuple[Row, int]]) -> str:
    table = []
    for row, removed in rows:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(row.requests.items()))
        per_request = f"{removed / row.total:,.1f}" if row.total else "-"
        per_second = f"{removed / row.wall:,.0f}" if row.wall else "-"
        if not removed:
            per_request = per_second = "-"
        table.append(
            [
                row.name,
                f"{removed:,}" if removed else "-",
                _seconds(row),
                f"{row.total:,}",
                kinds or "-",
                per_request,
                per_second,
            ]
        )
    header = ["removal", "objects removed", "wall time", "requests", "by kind", "objects / request", "objects / s"]
    lines = [markdown_table(header, table, lefts=(0, 4)), ""]
    (applied, _), (one_by_one, _) = rows[-2], rows[-1]
    if applied.wall and one_by_one.wall and applied.total:
        lines.append(
            f"apply / one DELETE per key: wall time {applied.wall / one_by_one.wall:.2f}, "
            f"requests {applied.total / one_by_one.total:.3f}."
        )
        lines.append("")
    lines.append("Commands:")
    lines += [f"- {row.name}: `{row.command}`" for row, _ in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a storage-audit run is killed")
    parser.add_argument(
        "--min-removed",
        type=int,
        default=MIN_REMOVED,
        help=f"fail unless the plan removes at least this many objects (default {MIN_REMOVED:,})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage_audit = _storage_audit_argv()
    if storage_audit is None:
        raise SystemExit("storage-audit is not installed")
    contents = registry_keys(args.repositories, args.manifests, args.blobs, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-apply-"))
    try:
        with SeaweedS3() as server:
            start = time.perf_counter()
            for root in (APPLIED, ONE_BY_ONE):
                asyncio.run(write_all(bucket_for(server, root), contents))
            print(
                f"2 x {len(contents):,} keys ({args.repositories} repositories, {args.manifests} manifests, "
                f"{args.blobs} blobs) written in {time.perf_counter() - start:.1f} s to SeaweedFS on loopback",
                file=sys.stderr,
            )
            env = registry_environment() | server.environment()
            env["XDG_CACHE_HOME"] = str(tmp / "cache")
            url = f"s3://{server.bucket}/{APPLIED}"
            plan = tmp / "plan.json"
            before = relative_keys(server, APPLIED)
            if before != relative_keys(server, ONE_BY_ONE) or len(before) != len(contents):
                raise SystemExit("the two copies of the registry differ")

            print("running plan ...", file=sys.stderr)
            plan_argv = [*storage_audit, "plan", url, "--delete-untagged", "--min-age", "0s", "--no-cache", "-q"]
            planned = run_command(
                server, "storage-audit plan (not compared)", [*plan_argv, "-o", str(plan)], args.timeout, env
            )
            if planned.wall is None or planned.lower_bound or not plan.is_file():
                raise SystemExit(f"plan failed: {planned.note}")

            print("running apply ...", file=sys.stderr)
            applied = run_command(
                server, "storage-audit apply", [*storage_audit, "apply", str(plan), "--yes", "-q"], args.timeout, env
            )
            if applied.wall is None or applied.lower_bound:
                raise SystemExit(f"apply failed: {applied.note}")
            after = relative_keys(server, APPLIED)
            removed = sorted(before - after)
            if after - before:
                raise SystemExit(f"apply added keys: {sorted(after - before)[:3]}")
            if len(removed) < args.min_removed:
                raise SystemExit(f"the plan removed {len(removed):,} objects, fewer than {args.min_removed:,}")

            print(f"removing the same {len(removed):,} keys one at a time ...", file=sys.stderr)
            one_by_one = delete_one_by_one(server, ONE_BY_ONE, removed)
            if relative_keys(server, ONE_BY_ONE) != after:
                raise SystemExit("the two copies differ after removal")
            planned.command = planned.command.replace(str(plan), "plan.json")
            applied.command = applied.command.replace(str(plan), "plan.json")
            print(render([(planned, 0), (applied, len(removed)), (one_by_one, len(removed))]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
