"""The same SQL analysis on Spark (local mode) gives the graph's answers on a generated snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from storage_audit.analysis import collect, spark_job
from storage_audit.analysis.engine import snapshot_files, spark_analysis
from storage_audit.analysis.graph import Graph, ReachOptions
from storage_audit.inventory.tables import read_snapshot
from tests.test_engine import assert_same_answers
from tests.test_gen_snapshot import generator


@pytest.mark.slow
def test_spark_gives_the_graphs_answers_on_a_generated_snapshot(spark: Any, tmp_path: Path) -> None:
    gen = generator()
    snapshot = tmp_path / "snapshot"
    gen.Plan(gen.Spec(blobs=3000, manifests=500, repositories=20, seed=12)).write(snapshot, "synthetic")
    files, shards = snapshot_files(snapshot)
    analysis = spark_analysis(spark, files, shards)
    try:
        rows = assert_same_answers(analysis, Graph(read_snapshot(snapshot)))
    finally:
        analysis.sql.close()
    assert all(count > 0 for count in rows.values()), rows


@pytest.mark.slow
def test_the_spark_submit_job_writes_the_graphs_orphans(spark: Any, tmp_path: Path) -> None:
    gen = generator()
    snapshot = tmp_path / "snapshot"
    gen.Plan(gen.Spec(blobs=2000, manifests=300, repositories=10, seed=5)).write(snapshot, "synthetic")
    out = tmp_path / "orphans"
    assert spark_job.main([str(snapshot), "orphans", "--delete-untagged", "--output", str(out)], spark=spark) == 0
    written = pq.read_table(out).to_pandas()
    expected = collect.orphans(Graph(read_snapshot(snapshot)), ReachOptions(delete_untagged=True))
    assert len(written) > 0
    assert list(written["digest"]) == [str(d) for d in expected["digest"]]
    assert list(written["size"]) == list(expected["size"])
    # Times to the microsecond, as Spark writes them.
    assert list(written["mtime"].dt.tz_localize(None)) == list(expected["mtime"].dt.floor("us").dt.tz_localize(None))
