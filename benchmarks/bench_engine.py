"""Wall time and peak RSS of the SQL engine (`--engine duckdb`, and Spark in local mode) beside pandas, from
generated snapshots.

Each size is a synthetic snapshot written once by gen_snapshot.py under the temp directory (the shape of the
issue's ten million blobs, scaled). `orphans --delete-untagged` (its capped table, and every row as CSV) and
`report --by repository` run from it with `--engine pandas` and `--engine duckdb`; with `--spark-sizes`,
spark_job.py runs `orphans --delete-untagged` under `spark-submit --master local[2]`, writing every row as
Parquet. Peak RSS sums every process of a run (Spark's JVM included); the table is Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lean import SNAPSHOT_SIZES as LEAN_SIZES
from bench_lean import Row, _fmt, ensure_snapshot, time_one
from bench_scan import BENCH_DIR, REPO_ROOT, markdown_table

SNAPSHOT_SIZES: dict[str, tuple[int, int, int]] = {
    **LEAN_SIZES,
    # (repositories, manifests, blobs): manifests in the proportion to blobs.
    "1M": (5_000, 170_000, 1_000_000),
}
COMMANDS = {
    "orphans -m": ("orphans", "{snapshot}", "--delete-untagged", "--quiet"),
    "orphans -m -f csv": ("orphans", "{snapshot}", "--delete-untagged", "--quiet", "-f", "csv", "-o", "{out}"),
    "report --by repository": ("report", "{snapshot}", "--by", "repository", "--quiet"),
}
ENGINES = ("pandas", "duckdb")


class Build:
    """How one engine's command line is run."""

    def __init__(self, label: str) -> None:
        self.label = label

    def argv(self, words: tuple[str, ...]) -> list[str]:
        if self.label == "spark":
            submit = shutil.which("spark-submit") or str(Path(sys.executable).parent / "spark-submit")
            job = REPO_ROOT / "storage_audit" / "analysis" / "spark_job.py"
            return [submit, "--master", "local[2]", "--driver-memory", "4g", str(job), *words]
        return [sys.executable, "-m", "storage_audit", *words, "--engine", self.label]


def table(rows: list[Row]) -> str:
    header = ["size", "blobs", "command", "engine", "wall s", "peak MiB", "bytes per blob"]
    body = []
    for row in rows:
        per_blob = None if row.mib is None else row.mib * 1024 * 1024 / row.blobs
        body.append(
            [row.size, f"{row.blobs:,}", row.command, row.build, _fmt(row.wall, 1), _fmt(row.mib, 0), _fmt(per_blob, 0)]
        )
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated, of " + ",".join(SNAPSHOT_SIZES))
    parser.add_argument("--spark-sizes", default="", help="sizes Spark (local mode) runs at, e.g. 1M")
    parser.add_argument("--engines", default=",".join(ENGINES), help="of " + ",".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    LEAN_SIZES.update(SNAPSHOT_SIZES)  # ensure_snapshot reads its own table
    # spark-submit runs the job with this interpreter, which finds the checkout.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    rows: list[Row] = []
    sizes = list(dict.fromkeys(filter(None, [*args.sizes.split(","), *args.spark_sizes.split(",")])))
    out = BENCH_DIR / "out"
    out.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        snapshot = ensure_snapshot(size, args.seed)
        blobs = SNAPSHOT_SIZES[size][2]
        for engine in args.engines.split(",") if size in args.sizes.split(",") else []:
            for command, words in COMMANDS.items():
                target = out / f"engine-{engine}-{size}.csv"
                resolved = tuple(w.replace("{snapshot}", str(snapshot)).replace("{out}", str(target)) for w in words)
                rows.append(
                    Row(size, blobs, engine, command, time_one(Build(engine), resolved, args.repeat, args.timeout))
                )
        if size in args.spark_sizes.split(","):
            target = out / f"engine-spark-{size}"
            shutil.rmtree(target, ignore_errors=True)
            words = (str(snapshot), "orphans", "--delete-untagged", "--output", str(target))
            runs = time_one(Build("spark"), words, 1, args.timeout)  # its output must not exist yet
            rows.append(Row(size, blobs, "spark local[2]", "orphans -m, every row as Parquet", runs))
            shutil.rmtree(target, ignore_errors=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
