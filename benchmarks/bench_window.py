"""Time the registry's read-only window: the storage phase of the two-phase clean-up against the stock collector.

The synthetic registry of bench_s3.py (here by default 2,000 repositories,
20,000 manifests of which half are tagged, 120,000 blobs) is written twice,
on disk and, with `--backend s3` or `both`, into a local SeaweedFS bucket.
On each backend, side by side in one run:

- the stock collector, `registry garbage-collect --delete-untagged`, on the
  first copy: the registry must be read-only for all of it;
- on the second copy, the two-phase clean-up: `storage-audit plan
  --delete-untagged --min-age 0s` and `apply PLAN --registry-url URL`
  through a registry serving that copy (both while it serves: not in the
  window), then `apply PLAN` on storage, its fresh re-checks included: the
  only part that needs the registry read-only.

On S3, `plan` and `apply` share a manifest cache (the default, beside each
other on one host): the storage phase's fresh scan then reads from it the
manifests `plan` read, each checked against its listed ETag and digest;
`--no-cache` measures them with none.

Both copies must end with the same blobs. A Markdown table per backend gives
each step's wall time (and, on S3, the requests the server answered) and the
window's ratio to the collector's time, with the targets: at most 0.5 on
disk, at most 0.1 on S3.
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

from bench_s3 import Row, _positive, _seconds, registry_keys, run_command  # noqa: E402
from bench_s3_listing import write_all  # noqa: E402
from bench_scan import _storage_audit_argv, markdown_table, measure  # noqa: E402

from tests.registry_harness import Registry, config_text, free_port, registry_binary  # noqa: E402
from tests.s3_harness import (  # noqa: E402
    SeaweedS3,
    bucket_for,
    raw_keys,
    registry_environment,
    s3_storage_block,
    v2_prefix,
)

COLLECTED = "window-collector"
TWO_PHASE = "window-two-phase"
TARGETS = {"disk": 0.5, "s3": 0.1}
"""The most the storage phase may take, as a share of the collector's time."""


def timed(name: str, argv: list[str], timeout: float) -> Row:
    """Run argv (on disk: no server to count requests) and note its wall time."""
    run = measure(argv, None, timeout)
    shown = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
    if run.timed_out:
        return Row(name, shown, timeout, {}, f"killed at {timeout:.0f} s", lower_bound=True)
    if run.status not in (0, 3):
        return Row(name, shown, None, {}, f"exit {run.status}: {run.stderr_tail[-300:]}")
    return Row(name, shown, run.wall, {})


def write_tree(v2: Path, contents: dict[str, bytes]) -> None:
    for rel, data in contents.items():
        path = v2 / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def blobs_on_disk(v2: Path) -> set[str]:
    return {p.parent.name for p in (v2 / "blobs").glob("sha256/*/*/data")}


def blobs_in_bucket(server: SeaweedS3, rootdirectory: str) -> set[str]:
    prefix = v2_prefix(rootdirectory) + "blobs/"
    return {key.split("/")[-2] for key in raw_keys(server, prefix) if key.endswith("/data")}


def _ok(row: Row) -> Row:
    if row.wall is None or row.lower_bound:
        raise SystemExit(f"{row.name} failed: {row.note}")
    return row


def two_phase_argv(storage_audit: list[str], root: str, plan: Path, url: str, cache: list[str]) -> list[list[str]]:
    """The command lines of the plan, the online phase through the registry at `url`, and the storage phase."""
    return [
        [*storage_audit, "plan", root, "--delete-untagged", "--min-age", "0s", *cache, "-q", "-o", str(plan)],
        [*storage_audit, "apply", str(plan), "--registry-url", url, "--yes", "-q"],
        [*storage_audit, "apply", str(plan), "--yes", "-q", *cache],
    ]


STEPS = ("plan (serving)", "apply --registry-url (serving)", "apply (read-only window)")
COLLECTOR = "collector: garbage-collect --delete-untagged"


def on_disk(args: argparse.Namespace, contents: dict[str, bytes], tmp: Path) -> list[Row]:
    storage_audit, registry = _storage_audit_argv() or [], registry_binary() or ""
    collected, two = tmp / COLLECTED, tmp / TWO_PHASE
    for root in (collected, two):
        write_tree(root / "docker" / "registry" / "v2", contents)
    config = tmp / "collector.yml"
    config.write_text(config_text(collected, free_port()), encoding="utf-8")
    print("disk: running the collector ...", file=sys.stderr)
    gc = timed(COLLECTOR, [registry, "garbage-collect", "--delete-untagged", str(config)], args.gc_timeout)
    v2, plan = two / "docker" / "registry" / "v2", tmp / "plan-disk.json"
    rows = [gc]
    with Registry(two) as reg:
        argvs = two_phase_argv(storage_audit, str(v2), plan, reg.base_url, [])
        for name, argv in zip(STEPS[:2], argvs[:2], strict=True):
            print(f"disk: {name} ...", file=sys.stderr)
            rows.append(_ok(timed(name, argv, args.timeout)))
    print(f"disk: {STEPS[2]} ...", file=sys.stderr)
    rows.append(_ok(timed(STEPS[2], argvs[2], args.timeout)))
    if not gc.lower_bound and blobs_on_disk(collected / "docker" / "registry" / "v2") != blobs_on_disk(v2):
        raise SystemExit("disk: the collector and the two phases left different blobs")
    return rows


def on_s3(args: argparse.Namespace, contents: dict[str, bytes], tmp: Path) -> list[Row]:
    storage_audit, registry = _storage_audit_argv() or [], registry_binary() or ""
    with SeaweedS3() as server:
        start = time.perf_counter()
        asyncio.run(write_both(server, contents))
        print(f"s3: 2 x {len(contents):,} keys written in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        config = tmp / "collector-s3.yml"
        block = s3_storage_block(server, "/" + COLLECTED)
        config.write_text(config_text(tmp / "unused", free_port(), storage=block), encoding="utf-8")
        print("s3: running the collector ...", file=sys.stderr)
        gc_argv = [registry, "garbage-collect", "--delete-untagged", str(config)]
        gc = run_command(server, COLLECTOR, gc_argv, args.gc_timeout, registry_environment())
        env = registry_environment() | server.environment()
        env["XDG_CACHE_HOME"] = str(tmp / "cache")
        url, plan = f"s3://{server.bucket}/{TWO_PHASE}", tmp / "plan-s3.json"
        storage = s3_storage_block(server, "/" + TWO_PHASE)
        rows = [gc]
        cache = ["--no-cache"] if args.no_cache else []
        with Registry(tmp / "unused", storage=storage, env=registry_environment()) as reg:
            argvs = two_phase_argv(storage_audit, url, plan, reg.base_url, cache)
            for name, argv in zip(STEPS[:2], argvs[:2], strict=True):
                print(f"s3: {name} ...", file=sys.stderr)
                rows.append(_ok(run_command(server, name, argv, args.timeout, env)))
        print(f"s3: {STEPS[2]} ...", file=sys.stderr)
        rows.append(_ok(run_command(server, STEPS[2], argvs[2], args.timeout, env)))
        if not gc.lower_bound and blobs_in_bucket(server, COLLECTED) != blobs_in_bucket(server, TWO_PHASE):
            raise SystemExit("s3: the collector and the two phases left different blobs")
    return rows


async def write_both(server: SeaweedS3, contents: dict[str, bytes]) -> None:
    """Both copies at once: the server, not one client's requests in flight, bounds the writing."""
    await asyncio.gather(*(write_all(bucket_for(server, root), contents) for root in (COLLECTED, TWO_PHASE)))


def render(backend: str, rows: list[Row], tmp: Path) -> str:
    gc, window = rows[0], rows[-1]
    table = []
    for row in rows:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(row.requests.items()))
        table.append(
            [row.name, _seconds(row), f"{row.total:,}" if row.requests else "-", kinds or "-", row.note or "-"]
        )
    header = ["step", "wall time", "requests", "by kind", "note"]
    lines = [f"### {backend}", "", markdown_table(header, table, lefts=(0, 3, 4)), ""]
    if gc.wall and window.wall:
        bound = "< " if gc.lower_bound else ""
        ratio = window.wall / gc.wall
        lines.append(
            f"read-only window / collector: {bound}{ratio:.3f} (target <= {TARGETS[backend]}: "
            f"{'met' if ratio <= TARGETS[backend] else 'NOT met'})"
        )
        lines.append("")
    lines.append("Commands:")
    lines += [f"- {row.name}: `{row.command.replace(str(tmp) + '/', '')}`" for row in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=_positive, default=2000, help="repositories (default 2,000)")
    parser.add_argument("--manifests", type=_positive, default=20000, help="manifests, half tagged (default 20,000)")
    parser.add_argument("--blobs", type=_positive, default=120000, help="blobs in all (default 120,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="on S3, plan and apply read every manifest afresh")
    parser.add_argument("--backend", choices=("disk", "s3", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a storage-audit run is killed")
    parser.add_argument("--gc-timeout", type=float, default=3600.0, help="seconds before the collector is killed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if _storage_audit_argv() is None or registry_binary() is None:
        raise SystemExit("storage-audit and docker-registry must be installed")
    contents = registry_keys(args.repositories, args.manifests, args.blobs, args.seed)
    print(f"{args.repositories:,} repositories, {args.manifests:,} manifests, {args.blobs:,} blobs", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-window-"))
    try:
        out = []
        if args.backend in ("disk", "both"):
            out.append(render("disk", on_disk(args, contents, tmp), tmp))
        if args.backend in ("s3", "both"):
            out.append(render("s3", on_s3(args, contents, tmp), tmp))
        print("\n".join(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
