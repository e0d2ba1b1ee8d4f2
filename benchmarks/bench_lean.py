"""Peak memory and wall time of the analyses per blob, from S to ten million blobs, beside a baseline checkout.

Each size is a synthetic snapshot written once by gen_snapshot.py under the temp directory. `orphans
--delete-untagged` and `report --by repository` run from it with this checkout and, with `--baseline DIR`,
with the checkout at DIR (imported from there first, reading a format-1 copy of the snapshot when it reads no
other). `--tree-l` also times bench_scan.py's commands on its L tree with both. Tables are Markdown: median
wall time, peak RSS summed over the run's processes, and both per blob; the last columns say whether the
ten-million-blob targets (3 GB, 120 s) and the L targets (400 MB, no slower than the baseline) hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import (
    BENCH_DIR,
    HERE,
    SIZES,
    Run,
    Tree,
    baseline_argv,
    default_root,
    ensure_tree,
    markdown_table,
    measure,
    warm_up,
)

from storage_audit.inventory.schema import SCHEMA

SNAPSHOT_SIZES: dict[str, tuple[int, int, int]] = {
    # label: (repositories, manifests, blobs), the shape of bench_scan.py's trees and the 10M.
    "S": (500, 10_000, 60_000),
    "L": (5_000, 100_000, 600_000),
    "10M": (5_000, 1_700_000, 10_000_000),
}
COMMANDS = {
    "orphans -m": ("orphans", "{snapshot}", "--delete-untagged", "--quiet"),
    "report": ("report", "{snapshot}", "--by", "repository", "--quiet"),
}
FORMAT_COMMAND = ("orphans", "{snapshot}", "--delete-untagged", "--quiet", "--format", "{format}", "-o", "{out}")
"""`--formats`: every orphan row written to a file (a table shows 100)."""
TREE_COMMANDS = {
    "scan": ("scan", "{root}", "--quiet"),
    "report": ("report", "{root}", "--by", "repository", "--quiet"),
    "orphans -m": ("orphans", "{root}", "--delete-untagged", "--quiet"),
    "untagged": ("untagged", "{root}", "--quiet"),
}
TARGET_10M = (3 * 1024, 120.0)  # MiB, seconds
TARGET_L_MIB = 400


@dataclass(frozen=True)
class Build:
    """One checkout of storage-audit to time: this one, or a baseline imported from its directory."""

    label: str
    checkout: Path | None  # None: this checkout

    def argv(self, words: tuple[str, ...]) -> list[str]:
        if self.checkout is not None:
            return [*baseline_argv(self.checkout), *words]
        return [sys.executable, "-m", "storage_audit", *words]


def ensure_snapshot(label: str, seed: int) -> Path:
    """The generated snapshot of size `label`, written by gen_snapshot.py when absent."""
    repositories, manifests, blobs = SNAPSHOT_SIZES[label]
    path = BENCH_DIR / "snapshots" / f"r{repositories}-m{manifests}-b{blobs}-s{seed}"
    if (path / "metadata.json").is_file():
        print(f"reusing {path}", file=sys.stderr)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(HERE / "gen_snapshot.py"), str(path)]
    argv += [f"--repositories={repositories}", f"--manifests={manifests}", f"--blobs={blobs}", f"--seed={seed}"]
    print(f"generating {path}", file=sys.stderr)
    run = measure(argv, r"^wrote ", timeout=4 * 3600)
    if run.status:
        sys.exit(f"gen_snapshot.py failed ({run.status}): {run.stderr_tail}")
    return path


def format_one(snapshot: Path) -> Path:
    """A copy of `snapshot` in format 1 (one Parquet file per table), for checkouts that read no other."""
    meta = json.loads((snapshot / "metadata.json").read_text())
    if meta["format"] == 1:
        return snapshot
    copy = snapshot.with_name(snapshot.name + "-format1")
    if (copy / "metadata.json").is_file():
        return copy
    copy.mkdir(exist_ok=True)
    for name, parts in meta["tables"].items():
        schema = pq.read_schema(snapshot / parts[0])
        with pq.ParquetWriter(copy / f"{name}.parquet", schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(snapshot / part, schema=schema))
    old = {k: v for k, v in meta.items() if k != "tables"} | {"format": 1, "views": []}
    (copy / "metadata.json").write_text(json.dumps(old, indent=2) + "\n")
    assert set(meta["tables"]) == set(SCHEMA)
    return copy


@dataclass
class Row:
    size: str
    blobs: int
    build: str
    command: str
    runs: list[Run]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.status in (0, 3) for r in self.runs)

    @property
    def stopped(self) -> bool:
        return any(r.timed_out for r in self.runs)

    @property
    def wall(self) -> float | None:
        return statistics.median(r.wall for r in self.runs) if self.ok else None

    @property
    def mib(self) -> float | None:
        # A stopped run's peak so far is a lower bound, shown as such.
        return max(r.maxrss_kib for r in self.runs) / 1024 if self.ok or self.stopped else None


def time_one(build: Build, words: tuple[str, ...], repeat: int, timeout: float) -> list[Run]:
    runs = []
    for _ in range(repeat):
        run = measure(build.argv(words), None, timeout)
        print(f"  {build.label} {' '.join(words)}: {run.wall:.1f}s exit {run.status}", file=sys.stderr)
        runs.append(run)
        if run.status not in (0, 3):  # 3: findings, a whole answer
            print(run.stderr_tail, file=sys.stderr)
            break
    return runs


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def per_size_table(rows: list[Row]) -> str:
    body = []
    for row in rows:
        wall, mib = row.wall, row.mib
        target = "-"
        if row.size == "10M" and row.ok and wall is not None and mib is not None:
            target = "met" if mib <= TARGET_10M[0] and wall <= TARGET_10M[1] else "MISSED"
        elif row.size == "10M" and row.stopped:
            target = "MISSED"
        status = _fmt(wall, 1) if row.ok else "failed"
        if row.stopped:
            status = f"> {max(r.wall for r in row.runs):.0f} (stopped)"
        body.append(
            [
                row.size,
                f"{row.blobs:,}",
                row.build,
                row.command,
                status,
                (">= " if row.stopped else "") + _fmt(mib, 0),
                _fmt(None if wall is None else wall / row.blobs * 1e6, 1),
                _fmt(None if mib is None else mib * 2**20 / row.blobs, 0),
                target,
            ]
        )
    header = ["size", "blobs", "build", "command", "wall s", "peak MiB", "µs/blob", "bytes/blob", "10M target"]
    return markdown_table(header, body, lefts=(0, 2, 3))


def tree_table(rows: list[Row], builds: list[Build]) -> str:
    body = []
    for command in TREE_COMMANDS:
        cells = [command]
        found = {r.build: r for r in rows if r.command == command}
        for build in builds:
            r = found.get(build.label)
            cells += [_fmt(r.wall if r else None, 1), _fmt(r.mib if r else None, 0)]
        mine, base = found.get(builds[0].label), found.get(builds[-1].label) if len(builds) > 1 else None
        memory = "met" if mine and mine.mib is not None and mine.mib <= TARGET_L_MIB else "MISSED"
        speed = "-"
        if mine and base and mine.wall is not None and base.wall is not None:
            speed = "met" if mine.wall <= base.wall * 1.05 else "MISSED"
        body.append([*cells, memory, speed])
    header = ["command"]
    for build in builds:
        header += [f"{build.label} wall s", f"{build.label} peak MiB"]
    header += [f"<= {TARGET_L_MIB} MiB", "no slower (5%)"]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="S,L,10M", help="comma-separated, of " + ",".join(SNAPSHOT_SIZES))
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with (e.g. main)")
    parser.add_argument("--baseline-sizes", default="S,L", help="sizes the baseline runs at (default S,L)")
    parser.add_argument("--tree-l", action="store_true", help="also time the commands on bench_scan.py's L tree")
    parser.add_argument("--tree-only", action="store_true", help="time only the commands on the L tree")
    parser.add_argument(
        "--formats", default="", help="also time `orphans -m` writing every row as these, e.g. json,csv,parquet"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    pa.set_memory_pool(pa.system_memory_pool())
    builds = [Build("lean", None)]
    if args.baseline:
        builds.append(Build("baseline", args.baseline.resolve()))
    rows: list[Row] = []
    for size in [] if args.tree_only else args.sizes.split(","):
        snapshot = ensure_snapshot(size, args.seed)
        blobs = SNAPSHOT_SIZES[size][2]
        for build in builds:
            if build.checkout is not None and size not in args.baseline_sizes.split(","):
                continue
            path = snapshot if build.checkout is None else format_one(snapshot)
            commands = dict(COMMANDS)
            for fmt in filter(None, args.formats.split(",")):
                out = BENCH_DIR / "out" / f"{build.label}-{size}.{fmt}"
                out.parent.mkdir(parents=True, exist_ok=True)
                words = tuple(w.replace("{format}", fmt).replace("{out}", str(out)) for w in FORMAT_COMMAND)
                commands[f"orphans -m -f {fmt}"] = words
            for command, words in commands.items():
                resolved = tuple(w.replace("{snapshot}", str(path)) for w in words)
                runs = time_one(build, resolved, args.repeat, args.timeout)
                rows.append(Row(size, blobs, build.label, command, runs))
    if rows:
        print("## From a generated snapshot, per size\n")
        print(per_size_table(rows))
    if args.tree_l or args.tree_only:
        counts = SIZES["L"]
        tree = Tree("L", counts, args.seed, default_root(counts, args.seed))
        ensure_tree(tree)
        # The snapshots above push the tree out of the page cache: every command starts warm, as in bench_scan.
        warm_up(tree.root, args.timeout)
        tree_rows = []
        for command, words in TREE_COMMANDS.items():
            for build in builds:
                resolved = tuple(w.replace("{root}", str(tree.root)) for w in words)
                runs = time_one(build, resolved, args.repeat, args.timeout)
                tree_rows.append(Row("L", counts.blobs, build.label, command, runs))
        print(f"\n## L tree ({tree.root}), {counts.blobs:,} blobs\n")
        print(tree_table(tree_rows, builds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
