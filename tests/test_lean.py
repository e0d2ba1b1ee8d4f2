"""What the inventory does to hold less memory keeps every value as it was read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from storage_audit.frames import sorted_rows
from storage_audit.scan import ScanOptions, _shared, scan

from .conftest import BROKEN, FIXTURES, unpack

V2 = Path("docker/registry/v2")


def _buffers(column: pd.Series) -> list[int]:
    return [chunk.buffers()[2].address for chunk in pa.array(column).chunks]


def test_targets_equal_to_their_digests_share_their_buffers(tmp_path: Path) -> None:
    inv = scan(unpack(FIXTURES / "multiarch.tar.gz", tmp_path), ScanOptions(workers=1))
    for table in (inv.layer_links, inv.revisions):
        assert len(table) > 0
        assert table["target"].tolist() == table["digest"].tolist()
        assert _buffers(table["target"]) == _buffers(table["digest"])


def test_a_link_naming_another_digest_keeps_its_own_targets(tmp_path: Path) -> None:
    root = unpack(BROKEN / "layer-link-names-another.tar.gz", tmp_path)
    links = scan(root, ScanOptions(workers=1)).layer_links
    differ = links[links["target"] != links["digest"]]
    assert len(differ) == 1
    assert _buffers(links["target"]) != _buffers(links["digest"])


def test_only_identical_columns_are_shared() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    for target in ([a, b], [a, None]):
        table = pa.table({"digest": pa.array([a, a], pa.large_string()), "target": pa.array(target, pa.large_string())})
        assert _shared(table, "target", "digest")["target"].to_pylist() == target


def test_rows_sort_as_pandas_sorts_them() -> None:
    frame = pd.DataFrame(
        {
            "digest": pd.array(["sha256:b", "sha256:a", "sha256:c", "sha256:ab", "sha256:B"], dtype="string"),
            "size": [10, 10, 3, 10, 3],
            "kind": pd.array(["layer", "config", "layer", "manifest", "layer"], dtype="string"),
        },
        index=[4, 3, 2, 1, 0],
    )
    expected = frame.sort_values(["size", "digest"], ascending=[False, True], ignore_index=True)
    got = sorted_rows(frame, [("size", "descending"), ("digest", "ascending")])
    pd.testing.assert_frame_equal(got, expected)
    assert got["digest"].tolist() == ["sha256:a", "sha256:ab", "sha256:b", "sha256:B", "sha256:c"]
