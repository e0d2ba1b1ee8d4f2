"""Wall time and peak RSS of the SQL engine (`--engine duckdb`, and Spark in local mode) beside pandas, from
generated snapshots, from S to a hundred million blobs.

Each size is a synthetic snapshot written once by gen_snapshot.py under the temp directory (the shape of the
issue's ten million blobs, scaled: 100M has ten times the repositories and manifests of 10M).
`orphans --delete-untagged` (its capped table, and every row as CSV, JSON and Parquet) and `report --by
repository` run from it with `--engine duckdb` at every size, and with `--engine pandas` at the sizes the graph
fits (`--pandas-sizes`); with `--spark-sizes`, spark_job.py runs `orphans --delete-untagged` under `spark-submit
--master local[2]`, writing every row as Parquet. Peak RSS sums every process of a run (Spark's JVM included);
the table is Markdown, with time and memory per blob and whether the size's targets hold (L: at most 300 MiB
and no slower than pandas; 10M: at most 1 GiB and 30 s; 100M: at most 6 GiB and 15 minutes).
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
    "100M": (50_000, 17_000_000, 100_000_000),
}
COMMANDS = {
    "orphans -m": ("orphans", "{snapshot}", "--delete-untagged", "--quiet"),
    "orphans -m -f csv": ("orphans", "{snapshot}", "--delete-untagged", "--quiet", "-f", "csv", "-o", "{out}.csv"),
    "orphans -m -f json": ("orphans", "{snapshot}", "--delete-untagged", "--quiet", "-f", "json", "-o", "{out}.json"),
    "orphans -m -f parquet": (
        *("orphans", "{snapshot}", "--delete-untagged", "--quiet"),
        *("-f", "parquet", "-o", "{out}.parquet"),
    ),
    "report --by repository": ("report", "{snapshot}", "--by", "repository", "--quiet"),
}
ENGINES = ("pandas", "duckdb")
TARGETS = {"10M": (1024, 30.0), "100M": (6144, 900.0), "L": (300, None)}
"""Per size: peak MiB and wall seconds at most (L: no slower than pandas in the same run)."""


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


def _target(row: Row, rows: list[Row]) -> str:
    """Whether the size's target holds for a DuckDB run."""
    if row.build != "duckdb" or row.size not in TARGETS:
        return "-"
    if not row.ok or row.wall is None or row.mib is None:
        return "MISSED"
    mib, seconds = TARGETS[row.size]
    if seconds is None:  # no slower than pandas on the same command, in this run
        pandas = [r.wall for r in rows if (r.size, r.command, r.build) == (row.size, row.command, "pandas")]
        seconds = pandas[0] if pandas and pandas[0] is not None else float("inf")
    return "met" if row.mib <= mib and row.wall <= seconds else "MISSED"


def table(rows: list[Row]) -> str:
    header = ["size", "blobs", "command", "engine", "wall s", "peak MiB", "bytes per blob", "µs per blob", "target"]
    body = []
    for row in rows:
        per_blob = None if row.mib is None else row.mib * 1024 * 1024 / row.blobs
        micros = None if row.wall is None else row.wall * 1e6 / row.blobs
        body.append(
            [
                *(row.size, f"{row.blobs:,}", row.command, row.build),
                *(_fmt(row.wall, 1), _fmt(row.mib, 0), _fmt(per_blob, 0), _fmt(micros, 2), _target(row, rows)),
            ]
        )
    return markdown_table(header, body)


def _words(words: tuple[str, ...], snapshot: Path, out: Path) -> tuple[str, ...]:
    return tuple(w.replace("{snapshot}", str(snapshot)).replace("{out}", str(out)) for w in words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="S,L,1M,10M", help="comma-separated, of " + ",".join(SNAPSHOT_SIZES))
    parser.add_argument("--pandas-sizes", default="S,L,1M,10M", help="sizes pandas runs at beside DuckDB")
    parser.add_argument("--spark-sizes", default="", help="sizes Spark (local mode) runs at, e.g. 1M")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated, of " + ",".join(COMMANDS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600)
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
        engines = [e for e in ENGINES if size in args.sizes.split(",") and (e != "pandas" or size in args.pandas_sizes)]
        for command in args.commands.split(","):
            for engine in engines:
                words = _words(COMMANDS[command], snapshot, out / f"engine-{engine}-{size}")
                runs = time_one(Build(engine), words, args.repeat, args.timeout)
                rows.append(Row(size, blobs, engine, command, runs))
                for written in out.glob(f"engine-*-{size}.*"):  # a hundred million rows take gigabytes
                    written.unlink()
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
