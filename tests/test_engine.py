"""The SQL analysis (`analysis/engine.py`) on DuckDB gives the graph's answers, every row of them, on every fixture
tree, a shard set and generated snapshots; `--engine duckdb` prints what the default prints."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest

from storage_audit.analysis import collect, report
from storage_audit.analysis.collect import ORPHAN_COLUMNS
from storage_audit.analysis.engine import (
    Analysis,
    Answer,
    Keep,
    default_memory,
    default_threads,
    duckdb_analysis,
)
from storage_audit.analysis.graph import Graph, ReachOptions
from storage_audit.analysis.options import By, Collector, ReportOptions
from storage_audit.inventory.tables import read_snapshot
from tests.conftest import BROKEN, FIXTURES, REAL_FIXTURES, cli
from tests.test_gen_snapshot import generator
from tests.test_shards import split

KEEPS = [
    Keep(),
    Keep(delete_untagged=True),
    Keep(delete_untagged=True, keep_referrers=False),
    Keep(collector=Collector.V2_8),
    Keep(delete_untagged=True, collector=Collector.V2_8),
]
"""Every mode of `orphans` the engine offers (untagged takes the same, delete_untagged implied)."""

TREES = [*REAL_FIXTURES, *sorted(f"broken/{p.name.removesuffix('.tar.gz')}" for p in BROKEN.glob("*.tar.gz"))]
NOW = "2026-12-01T00:00:00Z"


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its text as plain strings (the graph's are coded), every other column as it is."""
    out = frame.copy()
    for name in out.columns:
        dtype = out[name].dtype
        if not (
            pd.api.types.is_numeric_dtype(dtype)
            or pd.api.types.is_bool_dtype(dtype)
            or isinstance(dtype, pd.DatetimeTZDtype)
        ):
            out[name] = out[name].astype(object).astype(pd.StringDtype())
    return out


def assert_same(engine: pd.DataFrame, graph: pd.DataFrame, what: str) -> None:
    assert list(engine.columns) == list(graph.columns), what
    pd.testing.assert_frame_equal(comparable(engine), comparable(graph), obj=what)


def assert_same_answers(analysis: Analysis, graph: Graph) -> dict[str, int]:
    """Every answer of the engine equals the graph's, row for row and column for column; the rows of each."""
    rows = {}
    for keep in KEEPS:
        options = ReachOptions(keep.delete_untagged, keep.keep_referrers, keep.collector)
        orphans = analysis.orphans(keep)
        assert_same(orphans, collect.orphans(graph, options), f"orphans {keep}")
        untagged = analysis.untagged(keep)
        assert_same(untagged, collect.untagged(graph, options), f"untagged {keep}")
        rows[f"orphans {keep}"], rows[f"untagged {keep}"] = len(orphans), len(untagged)
    for collector in (None, Collector.V2_8):
        options = ReportOptions(by=By.REPOSITORY, collector=collector)
        repositories = report.finish(analysis.repositories(collector), options)
        assert_same(repositories, report.report(graph, options), f"report --by repository, {collector}")
        rows[f"report {collector}"] = len(repositories)
    return rows


def snapshot_of(root: Path, into: Path) -> Path:
    ran = cli("scan", str(root), "-o", str(into), "-q", env={"STORAGE_AUDIT_NOW": NOW})
    assert ran.exit_code == 0, ran.output
    return into


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated snapshot with broken references (index children whose revisions were deleted)."""
    gen = generator()
    where = tmp_path_factory.mktemp("engine") / "snapshot"
    gen.Plan(gen.Spec(blobs=3000, manifests=500, repositories=20, seed=12)).write(where, "synthetic")
    return where


@pytest.fixture(scope="module")
def synthetic_analysis(synthetic: Path) -> Iterator[Analysis]:
    with duckdb_analysis(synthetic) as analysis:
        yield analysis


@pytest.mark.slow
@pytest.mark.parametrize("tree", TREES)
def test_duckdb_gives_the_graphs_answers_on_every_fixture_tree(
    tree: str, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    snapshot = snapshot_of(shared_root(FIXTURES / f"{tree}.tar.gz"), tmp_path / "snapshot")
    with duckdb_analysis(snapshot) as analysis:
        assert_same_answers(analysis, Graph(read_snapshot(snapshot)))


@pytest.mark.slow
def test_duckdb_gives_the_graphs_answers_on_the_demo_tree(tmp_path: Path) -> None:
    snapshot = snapshot_of(FIXTURES / "demo", tmp_path / "snapshot")
    with duckdb_analysis(snapshot) as analysis:
        rows = assert_same_answers(analysis, Graph(read_snapshot(snapshot)))
    assert rows[f"untagged {Keep(delete_untagged=True)}"] > 0


@pytest.mark.slow
def test_duckdb_reads_a_shard_set_as_one_snapshot(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    # Each share reads the manifests its links name: the engine takes each once, as the reader does.
    shares = split(shared_root(FIXTURES / "multiarch.tar.gz"), tmp_path / "shares", 3)
    with duckdb_analysis(shares) as analysis:
        assert_same_answers(analysis, Graph(read_snapshot(shares)))


@pytest.mark.slow
def test_duckdb_gives_the_graphs_answers_on_a_generated_snapshot(synthetic: Path, synthetic_analysis: Analysis) -> None:
    rows = assert_same_answers(synthetic_analysis, Graph(read_snapshot(synthetic)))
    # Not a comparison of empty answers: every mode finds something, and the modes differ.
    assert all(count > 0 for count in rows.values()), rows
    orphans = [rows[f"orphans {keep}"] for keep in KEEPS]
    assert len(set(orphans)) == len(orphans), rows


def test_a_wrong_answer_is_caught(synthetic: Path, synthetic_analysis: Analysis) -> None:
    """The comparison fails when one blob the graph keeps is reported orphan (or one row is off)."""
    graph = Graph(read_snapshot(synthetic))
    engine = synthetic_analysis.orphans(Keep(delete_untagged=True))
    expected = collect.orphans(graph, ReachOptions(delete_untagged=True))
    kept = graph.inv.blobs[~graph.inv.blobs["digest"].isin(expected["digest"])].iloc[:1]
    wrong = pd.concat(
        [engine, comparable(kept.assign(kind="layer", linked_from="")[list(engine.columns)])], ignore_index=True
    )
    with pytest.raises(AssertionError):
        assert_same(wrong, expected, "one more orphan")
    with pytest.raises(AssertionError):
        assert_same(engine.iloc[::-1].reset_index(drop=True), expected, "another order")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["untagged"],
        ["untagged", "--gc-compatible"],
        ["orphans"],
        ["orphans", "-m"],
        ["orphans", "-m", "--no-keep-referrers"],
        ["orphans", "-m", "--gc-compatible"],
        ["report", "--by", "repository"],
        ["report", "--by", "repository", "--sort", "reclaimable_bytes", "--top", "5", "-r", "*/*"],
    ],
)
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_the_engine_option_prints_what_the_default_prints(synthetic: Path, args: list[str], fmt: str) -> None:
    answers = [
        cli(args[0], str(synthetic), *args[1:], "-f", fmt, "-q", *engine, env={"STORAGE_AUDIT_NOW": NOW})
        for engine in ([], ["--engine", "duckdb"])
    ]
    assert answers[0].exit_code == 0, answers[0].output
    assert answers[1].exit_code == 0, answers[1].output
    assert answers[1].stdout == answers[0].stdout
    assert len(answers[0].stdout.splitlines()) > 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["untagged", "{tree}", "--engine", "duckdb"], "--engine duckdb reads a snapshot"),
        (["orphans", "{snapshot}", "--engine", "duckdb", "--gc-compatible=3"], "registry 3's mark"),
        (["report", "{snapshot}", "--engine", "duckdb", "--by", "tag"], "--by repository only"),
        (["report", "{snapshot}", "--engine", "duckdb", "-f", "prometheus"], "--by repository only"),
        (["orphans", "{snapshot}", "--engine", "spark"], "--engine"),
    ],
)
def test_what_the_engine_does_not_offer_is_a_usage_error(
    args: list[str], words: str, synthetic: Path, tmp_path: Path
) -> None:
    filled = [a.format(tree=FIXTURES / "demo", snapshot=synthetic) for a in args]
    ran = cli(*filled, "-q")
    assert ran.exit_code == 2, ran.output
    assert words in ran.stderr


def test_duckdbs_memory_limit_grows_with_the_snapshot(tmp_path: Path) -> None:
    from storage_audit.analysis.engine import DuckDB

    # 100 bytes a blob, at least 64 MB and at most 500 MB, then 40 bytes a blob (no machine here has under 2 GB).
    assert [default_memory(blobs) for blobs in (0, 600_000, 2_000_000, 10_000_000)] == [64, 64, 190, 500]
    assert default_memory(20_000_000) == 762
    # A thread for each 32 MB at most, and one at least.
    assert [default_threads(mb) for mb in (1, 63, 64)] == [1, 1, min(2, os.cpu_count() or 1)]
    # DuckDB is given them; a limit in its own notation (the variable's) keeps a thread a CPU.
    for memory, threads in ((32, 1), ("32MB", os.cpu_count())):
        sql = DuckDB(tmp_path, memory)
        assert sql.con.sql("SELECT current_setting('threads')").fetchall() == [(threads,)]
        assert sql.memory == "32MB"
        sql.close()


def test_duckdb_out_of_memory_is_a_one_line_error(synthetic: Path) -> None:
    ran = cli("orphans", str(synthetic), "-m", "--engine", "duckdb", "-q", env={"STORAGE_AUDIT_DUCKDB_MEMORY": "1MB"})
    assert ran.exit_code == 1, ran.output
    assert "DuckDB ran out of memory at its limit of 1MB: set STORAGE_AUDIT_DUCKDB_MEMORY higher" in ran.stderr
    assert "Traceback" not in ran.output


@pytest.mark.slow
@pytest.mark.parametrize("args", [["untagged"], ["orphans", "-m"], ["orphans", "--gc-compatible"]])
def test_the_engines_rows_stream_into_a_table_and_parquet_as_the_defaults_do(
    synthetic: Path, args: list[str], tmp_path: Path
) -> None:
    """The engine's answer is read back from its file a batch at a time: the capped table (its caption and totals
    over every row) and the Parquet file are the default's."""
    tables, files = [], []
    for number, engine in enumerate(([], ["--engine", "duckdb"])):
        table = cli(args[0], str(synthetic), *args[1:], "-q", *engine, env={"STORAGE_AUDIT_NOW": NOW})
        assert table.exit_code == 0, table.output
        tables.append(table.stdout)
        files.append(tmp_path / f"{number}.parquet")
        written = cli(args[0], str(synthetic), *args[1:], "-q", "-f", "parquet", "-o", str(files[-1]), *engine)
        assert written.exit_code == 0, written.output
    assert tables[1] == tables[0]
    assert "first 100 of" in tables[0]  # more rows than a table shows: the caption counts them all
    import pyarrow.parquet as pq

    written_by = [pq.read_table(path).to_pandas() for path in files]
    assert_same(written_by[1], written_by[0], f"{args} as parquet")
    assert len(written_by[0]) > 100


@pytest.mark.parametrize("batch", [7, 1 << 16])
def test_an_answer_is_read_a_batch_at_a_time_and_closes_its_engine(
    synthetic: Path, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's batches (of 7 rows, or all in one) leave as the batches asked for; the first rows read for a
    table are not asked for again; every row can be read again; and the engine is closed with the answer."""
    import gc

    monkeypatch.setattr(Answer, "BATCH", batch)
    keep = Keep(delete_untagged=True)
    engine = ExitStack()
    analysis = engine.enter_context(duckdb_analysis(synthetic))
    row = analysis.sql.con.execute("SELECT current_setting('temp_directory')").fetchone()
    assert row is not None
    spill = Path(row[0])
    whole = analysis.orphans(keep)
    answer = analysis.orphans_answer(keep)
    answer.keep_open(engine)
    pd.testing.assert_frame_equal(answer.head(5), whole.head(5))
    parts = list(answer.batches(100))
    assert len(whole) > 300
    assert [len(part) for part in parts[:-1]] == [100] * (len(parts) - 1) and 0 < len(parts[-1]) <= 100
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
    pd.testing.assert_frame_equal(pd.concat(list(answer.batches(1000)), ignore_index=True), whole)
    assert len(answer) == len(whole)
    assert answer.total("size") == int(whole["size"].sum())
    assert spill.is_dir()
    del answer, parts
    gc.collect()
    assert not spill.exists()


def test_an_answer_of_no_rows_is_one_empty_batch(synthetic_analysis: Analysis) -> None:
    query = synthetic_analysis.orphans_query(Keep()) + " LIMIT 0"
    answer = Answer(synthetic_analysis.sql, query, ORPHAN_COLUMNS)
    (part,) = list(answer.batches(100))
    assert part.empty and list(part.columns) == list(ORPHAN_COLUMNS)
    assert str(part["digest"].dtype) == "string" and str(part["mtime"].dtype) == "datetime64[ns, UTC]"
    assert len(answer) == 0 and answer.total("size") == 0
    assert answer.head(5).empty


def test_revisions_listed_twice_change_no_blob_answer(synthetic: Path) -> None:
    """Each revision is one row as a registry stores it, which lets the analysis skip a hash table of every
    (revision, blob) row; a snapshot that lists revisions twice takes the way that does not need it."""
    from storage_audit.analysis.engine import DuckDB, snapshot_files

    files, _ = snapshot_files(synthetic)
    doubled = {**files, "revisions": [*files["revisions"], *files["revisions"]]}
    answers = []
    for tables in (files, doubled):
        spill = Path(tempfile.mkdtemp())
        analysis = Analysis(DuckDB(spill, "500MB"), tables)
        holds = analysis.sql.arrow(f"SELECT * FROM {analysis.holds}").to_pandas()
        assert not holds.duplicated().any()
        answers.append(
            (
                holds.sort_values(list(holds.columns), ignore_index=True),
                [analysis.orphans(keep) for keep in KEEPS],
                analysis.repositories(),
            )
        )
        analysis.sql.close()
        shutil.rmtree(spill)
    (holds, orphans, repositories), (holds2, orphans2, repositories2) = answers
    assert len(holds) > 1000
    pd.testing.assert_frame_equal(holds2, holds)
    for one, two in zip(orphans, orphans2, strict=True):
        pd.testing.assert_frame_equal(two, one)
    counts = ["manifests", "untagged_manifests"]  # rows of revisions, which count twice
    pd.testing.assert_frame_equal(repositories2.drop(columns=counts), repositories.drop(columns=counts))


def test_orphans_linked_from_many_repositories_name_them_all_as_the_graph_does(synthetic: Path, tmp_path: Path) -> None:
    """An orphan's layer links in one, two, three or four repositories (met in any order, one of them twice):
    the engine names the first two from the ids' bounds and lists more, at its least memory limit."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    snapshot = tmp_path / "snapshot"
    shutil.copytree(synthetic, snapshot)
    graph = Graph(read_snapshot(snapshot))
    orphans = comparable(collect.orphans(graph, ReachOptions()))
    unlinked = orphans.loc[orphans["linked_from"] == "", "digest"].tolist()
    names = sorted(comparable(graph.inv.repositories)["repository"].tolist())[:4]
    assert len(unlinked) >= 4 and len(names) == 4
    # Names taken out of order; the one-repository orphan is linked twice, by that same repository.
    wanted = {unlinked[0]: [names[2], names[2]], unlinked[1]: [names[3], names[0]]}
    wanted |= {unlinked[2]: [names[1], names[3], names[0]], unlinked[3]: [names[2], names[0], names[3], names[1]]}
    rows = [(repository, digest) for digest, repositories in wanted.items() for repository in repositories]
    links = pa.table({name: [row[i] for row in rows] for i, name in enumerate(["repository", "digest"])})
    links = links.append_column("target", links["digest"])
    pq.write_table(
        links.cast(pq.read_schema(snapshot / "layer_links" / "part-00000.parquet")),
        snapshot / "layer_links" / "part-00001.parquet",
    )
    meta = json.loads((snapshot / "metadata.json").read_text())
    meta["tables"]["layer_links"].append("layer_links/part-00001.parquet")
    (snapshot / "metadata.json").write_text(json.dumps(meta))

    graph = Graph(read_snapshot(snapshot))
    with duckdb_analysis(snapshot, memory=default_memory(0)) as analysis:
        assert_same_answers(analysis, graph)
        linked = comparable(analysis.orphans(Keep())).set_index("digest")["linked_from"]
    assert {digest: linked[digest] for digest in wanted} == {
        digest: ",".join(sorted(set(repositories))) for digest, repositories in wanted.items()
    }
    assert [linked[digest].count(",") for digest in wanted] == [0, 1, 2, 3]


def test_the_rows_a_table_asks_the_engine_for_are_those_it_shows() -> None:
    from storage_audit.operations.collect import TABLE_ROWS
    from storage_audit.output.table import MAX_ROWS

    assert TABLE_ROWS == MAX_ROWS


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_an_answer_that_cannot_be_written_is_refused_as_the_defaults_is(
    synthetic: Path, tmp_path: Path, fmt: str
) -> None:
    """Every row to a file in a directory that is not there, or to a directory: the engine's answer is refused
    with the default's message and exit code, and no traceback."""
    for dest in (tmp_path / "missing" / f"out.{fmt}", tmp_path):
        ran = [
            cli("orphans", str(synthetic), "-m", "-q", "-f", fmt, "-o", str(dest), *engine)
            for engine in ([], ["--engine", "duckdb"])
        ]
        assert ran[0].exit_code == 2, ran[0].output
        assert ran[1].exit_code == ran[0].exit_code, ran[1].output
        assert ran[1].stderr == ran[0].stderr
        assert f"{dest}: cannot write" in ran[1].stderr
        assert "Traceback" not in ran[1].output and "internal error" not in ran[1].output
