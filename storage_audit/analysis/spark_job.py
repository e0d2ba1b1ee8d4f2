"""`spark-submit` entry point: one answer of the SQL analysis (`analysis/engine.py`) of a snapshot, on a cluster.

    spark-submit [--conf ...] spark_job.py SNAPSHOT untagged|orphans|report [options] [--output URL]

SNAPSHOT is a directory or URL Spark reads (`s3a://bucket/snapshots/2026-12-07`, `hdfs://...`, a local path):
the snapshot `scan -o` wrote, or the directory of a sharded scan's shares (`--shards`). The rows are written
as Parquet to `--output` by the executors, or, without it, the first rows shown. Times are written as Spark
timestamps (to the microsecond).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from storage_audit.analysis.engine import TABLES, TIMES, Analysis, Keep, Spark
from storage_audit.analysis.options import Collector

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_paths(snapshot: str, shards: bool) -> dict[str, list[str]]:
    """What Spark reads for each table: its directory of parts, or those of every share."""
    base = snapshot.rstrip("/")
    below = "shard-*-of-*/" if shards else ""
    return {table: [f"{base}/{below}{table}/part-*.parquet"] for table in TABLES}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark_job.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshot", help="the snapshot's directory or URL")
    parser.add_argument("answer", choices=["untagged", "orphans", "report"])
    parser.add_argument("--shards", action="store_true", help="SNAPSHOT holds the shares of a sharded scan")
    parser.add_argument("--delete-untagged", "-m", action="store_true", help="orphans: keep only what tags reach")
    parser.add_argument("--no-keep-referrers", action="store_true", help="do not keep referrers of kept images")
    parser.add_argument(
        "--gc-compatible",
        nargs="?",
        const=Collector.V2_8.value,
        choices=[Collector.V2_8.value],
        help="answer as registry 2.8's garbage-collect",
    )
    parser.add_argument("--output", "-o", help="write the rows as Parquet to this directory or URL")
    return parser


def answer(analysis: Analysis, args: argparse.Namespace) -> DataFrame:
    """The rows asked for, as a Spark DataFrame in the answer's order, times as timestamps."""
    assert isinstance(analysis.sql, Spark)
    collector = Collector(args.gc_compatible) if args.gc_compatible else None
    keep = Keep(args.delete_untagged, not args.no_keep_referrers, collector)
    if args.answer == "untagged":
        query = analysis.untagged_query(keep)
    elif args.answer == "orphans":
        query = analysis.orphans_query(keep)
    else:
        query = analysis.repositories_query(collector)
    frame = analysis.sql.spark.sql(query)
    return frame.selectExpr(*[f"timestamp_micros({c} div 1000) AS {c}" if c in TIMES else c for c in frame.columns])


def main(argv: list[str] | None = None, spark: SparkSession | None = None) -> int:
    args = parser().parse_args(argv)
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.appName(f"storage-audit {args.answer}").getOrCreate()
    analysis = Analysis(Spark(spark), table_paths(args.snapshot, args.shards), args.shards)
    try:
        rows = answer(analysis, args)
        if args.output:
            rows.write.mode("errorifexists").parquet(args.output)
        else:
            rows.show(20, truncate=False)
    finally:
        analysis.sql.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
