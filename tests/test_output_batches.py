"""Formats that write every row write them a batch at a time: the bytes (CSV, JSON) and the values (Parquet) are
those of the whole frame written at once, whatever the batch size, and coded text leaves as its strings."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage_audit.analysis.engine import Answer, DuckDB
from storage_audit.core.view import View
from storage_audit.inventory.codes import CodedArray, TextDictionary
from storage_audit.output import batches
from storage_audit.output import csv as csv_format
from storage_audit.output import json as json_format
from storage_audit.output import parquet as parquet_format

ROWS = 10


def _frame(rows: int) -> pd.DataFrame:
    names = TextDictionary.of([pa.array(["a/b", 'q"uote', "x,y", "é\\/z", "sha256:" + "0" * 64])])
    codes = np.arange(rows, dtype=np.int32) % (len(names) + 1) - 1  # a null now and then
    return pd.DataFrame(
        {
            "name": pd.Series(CodedArray(codes, names)),
            "size": np.arange(rows, dtype=np.int64) * 1000,
            "ratio": np.linspace(0, 1, rows),
            "at": pd.to_datetime(
                (np.arange(rows) - 2) * 10**9 + 123_456_789 * (np.arange(rows) % 4 != 1), utc=True
            ).where(np.arange(rows) % 5 != 3),
            "kept": np.arange(rows) % 3 == 0,
            "note": pd.Series([None if i % 4 else f"n{i}" for i in range(rows)], dtype="string"),
        }
    )


def _whole_csv(frame: pd.DataFrame) -> str:
    """Today's CSV of the frame, written at once."""
    plain = frame.assign(name=frame["name"].astype("string"), kept=frame["kept"].map({True: "true", False: "false"}))
    return plain.to_csv(index=False, date_format=csv_format.ISO_FORMAT)


def assert_json_rows(text: str, frame: pd.DataFrame) -> None:
    """`text` is the JSON array of `frame`'s rows, each row's object on a line of its own after a tab."""
    expected = json.loads(frame.to_json(orient="records", date_format="iso", date_unit="us"))
    assert json.loads(text) == expected
    lines = text.split("\n")
    if frame.empty:
        assert lines == ["[]", ""]
        return
    assert lines[0] == "[" and lines[-2:] == ["]", ""] and len(lines) == len(frame) + 3
    assert all(line.startswith("\t{") and line.endswith(("},", "}")) for line in lines[1:-2])
    assert [json.loads(line.strip().rstrip(",")) for line in lines[1:-2]] == expected
    assert "\\/" not in text.replace("\\\\", "")  # no `\/` but an escaped backslash before a slash


@pytest.mark.parametrize("rows", [0, 1, ROWS - 1, ROWS, ROWS + 1, 3 * ROWS + 7])
def test_text_formats_in_batches_are_the_whole_frame_written_at_once(
    rows: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = _frame(rows)
    monkeypatch.setattr(batches, "ROWS", ROWS)
    assert len(list(batches.batches(frame))) == max(1, -(-rows // ROWS))
    csv_format.write(View(frame), tmp_path / "out.csv")
    json_format.write(View(frame), tmp_path / "out.json")
    assert (tmp_path / "out.csv").read_bytes() == _whole_csv(frame).encode()
    assert_json_rows(
        (tmp_path / "out.json").read_text(encoding="utf-8"), frame.assign(name=frame["name"].astype("string"))
    )
    rows_read = json.loads((tmp_path / "out.json").read_text())
    assert [row["name"] for row in rows_read] == frame["name"].astype(object).where(
        frame["name"].notna(), None
    ).tolist()


@pytest.mark.parametrize("rows", [0, ROWS + 1, 3 * ROWS + 7])
def test_parquet_in_batches_holds_the_whole_frame(rows: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _frame(rows)
    monkeypatch.setattr(batches, "ROWS", ROWS)
    parquet_format.write(View(frame), tmp_path / "out.parquet")
    written = pq.ParquetFile(tmp_path / "out.parquet")
    assert written.metadata.num_row_groups == max(1, -(-rows // ROWS))
    assert written.schema_arrow.field("name").type == pa.string()
    read = pd.read_parquet(tmp_path / "out.parquet")
    expected = frame.assign(name=frame["name"].astype("string"))
    pd.testing.assert_frame_equal(read, expected, check_dtype=False)


def test_a_column_null_in_the_first_batch_keeps_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = pd.DataFrame({"late": [None] * ROWS + ["x"]}, dtype=object)
    monkeypatch.setattr(batches, "ROWS", ROWS)
    parquet_format.write(View(frame), tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["late"].tolist()[-1] == "x"


def test_a_single_row_is_one_object(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _frame(2).iloc[1:].reset_index(drop=True)
    json_format.write(View(frame, single=True), None)
    row = json.loads(capsys.readouterr().out)
    assert row["name"] == "a/b" and row["size"] == 1000 and row["kept"] is False


TRICKY = ["", "a,b", 'q"r', "line\nbreak", " padded ", "é\\/z", "sha256:" + "0" * 64]


def _answer(rows: int, tmp_path: Path) -> Answer:
    """An engine's answer of `rows` rows in its Parquet file: text with every character CSV quotes, and none;
    sizes, and times (nanoseconds, as the engines give them) with a null now and then."""
    index = np.arange(rows)
    table = pa.table(
        {
            "digest": pa.array([None if i % 9 == 4 else TRICKY[i % len(TRICKY)] for i in index], pa.string()),
            "size": pa.array(index * 1000, pa.int64()),
            "mtime": pa.array((index - 2) * 10**9 + 123_456_789 * (index % 4 != 1), pa.int64(), mask=index % 5 == 3),
            "subject": pa.array([None if i < 2 * ROWS else f"s{i}" for i in index], pa.string()),
        }
    )
    return _answer_of(table, tmp_path, row_group_size=7)


def _answer_of(table: pa.Table, tmp_path: Path, row_group_size: int | None = None) -> Answer:
    """The rows of `table`, in order, as an answer DuckDB computes from a Parquet file of them."""
    directory = tmp_path / "answer"
    directory.mkdir()
    pq.write_table(table, directory / "answer.parquet", row_group_size=row_group_size)
    sql = DuckDB(directory)
    columns = ", ".join(f'"{name}"' for name in table.column_names)
    query = (
        f"SELECT {columns} FROM read_parquet('{directory / 'answer.parquet'}', file_row_number = true)"
        " ORDER BY file_row_number"
    )
    answer = Answer(sql, query, table.column_names)
    engine = ExitStack()
    engine.callback(sql.close)
    answer.keep_open(engine)
    return answer


@pytest.mark.parametrize("with_duckdb", [True, False])
@pytest.mark.parametrize("rows", [0, 1, ROWS + 1, 5 * ROWS + 7])
def test_rows_kept_out_of_memory_are_written_as_their_whole_frame(
    rows: int, with_duckdb: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engine's rows go out a batch at a time (CSV through DuckDB's writer when it is there, Parquet as Arrow):
    the bytes and values of pandas writing their whole frame at once, in order, to a file and to stdout."""
    answer = _answer(rows, tmp_path)
    whole = pd.concat(list(answer.batches(rows + 1)), ignore_index=True)
    assert len(whole) == rows
    monkeypatch.setattr(batches, "ROWS", ROWS)
    monkeypatch.setattr(batches, "WRITTEN_ROWS", ROWS)
    monkeypatch.setattr(csv_format, "duckdb_present", lambda: with_duckdb)
    monkeypatch.setattr(json_format, "duckdb_present", lambda: with_duckdb)
    kept_out = View(answer.head(3), rows=answer)

    csv_format.write(kept_out, tmp_path / "out.csv")
    expected = whole.to_csv(index=False, date_format=csv_format.ISO_FORMAT)
    assert (tmp_path / "out.csv").read_bytes() == expected.encode()
    if rows > 1:
        assert '"a,b"' in expected and '"q""r"' in expected and ",,\n" in expected
    capsys.readouterr()
    csv_format.write(kept_out, None)
    assert capsys.readouterr().out == expected

    json_format.write(kept_out, tmp_path / "out.json")
    json_format.write(View(whole), tmp_path / "whole.json")
    assert (tmp_path / "out.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert_json_rows((tmp_path / "out.json").read_text(encoding="utf-8"), whole)
    capsys.readouterr()
    json_format.write(kept_out, None)
    assert capsys.readouterr().out == (tmp_path / "whole.json").read_text(encoding="utf-8")

    parquet_format.write(kept_out, tmp_path / "out.parquet")
    parquet_format.write(View(whole), tmp_path / "whole.parquet")
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.equals(pq.read_table(tmp_path / "whole.parquet"))
    assert written.schema.metadata == pq.read_table(tmp_path / "whole.parquet").schema.metadata
    if rows > 2 * ROWS:  # null in the first rows, text later: its type comes from the rows
        assert written.schema.field("subject").type == pa.large_string()
        assert written.column("subject")[rows - 1].as_py() == f"s{rows - 1}"


def test_a_carriage_return_is_quoted_and_read_back(tmp_path: Path) -> None:
    """pandas leaves a lone carriage return unquoted (its line ends are `\\n`); DuckDB's writer quotes it, as RFC
    4180 asks, so that a CSV reader reads the value back whole rather than as a line break."""
    answer = _answer_of(pa.table({"kind": ["carriage\rreturn", "plain"]}), tmp_path)
    csv_format.write(View(answer.head(2), rows=answer), tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_bytes() == b'kind\n"carriage\rreturn"\nplain\n'
    assert pd.read_csv(tmp_path / "out.csv")["kind"].tolist() == ["carriage\rreturn", "plain"]


def test_a_control_character_is_escaped_by_either_writer_and_read_back(tmp_path: Path) -> None:
    """A control character without a short escape is `\\u001f` from pandas and `\\u001F` from DuckDB's JSON writer
    (an engine's every row): the only difference between the two, and both read back as the same text."""
    answer = _answer_of(pa.table({"kind": ["unit\x1fseparator", "line\nfeed"]}), tmp_path)
    json_format.write(View(answer.head(2), rows=answer), tmp_path / "engine.json")
    json_format.write(View(answer.head(2)), tmp_path / "frame.json")
    by_duckdb, by_pandas = ((tmp_path / name).read_text(encoding="utf-8") for name in ("engine.json", "frame.json"))
    assert by_duckdb == '[\n\t{"kind":"unit\\u001Fseparator"},\n\t{"kind":"line\\nfeed"}\n]\n'
    assert by_pandas == by_duckdb.replace("\\u001F", "\\u001f")
    assert json.loads(by_duckdb) == json.loads(by_pandas) == [{"kind": "unit\x1fseparator"}, {"kind": "line\nfeed"}]
