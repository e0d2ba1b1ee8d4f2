"""What the inventory does to hold less memory keeps every value as it was read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from storage_audit.inventory.codes import CodedArray
from storage_audit.inventory.frames import sorted_rows
from storage_audit.scan.run import ScanOptions, scan
from storage_audit.storage.base import LocalStorage

from .conftest import BROKEN, FIXTURES

V2 = Path("docker/registry/v2")


def test_every_digest_column_is_coded_against_one_dictionary(
    tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    inv = scan(LocalStorage(shared_root(FIXTURES / "multiarch.tar.gz") / V2), ScanOptions(workers=1))
    blobs = inv.blobs["digest"].array
    assert isinstance(blobs, CodedArray)
    for table, column in (
        ("layer_links", "target"),
        ("revisions", "target"),
        ("references", "digest"),
        ("tags", "digest"),
    ):
        values = getattr(inv, table)[column]
        assert len(values) > 0
        assert values.array.dictionary is blobs.dictionary
        # A code names the same string wherever it is found.
        strings = dict(zip(blobs.codes.tolist(), inv.blobs["digest"].tolist(), strict=True))
        for code, text in zip(values.array.codes.tolist(), values.tolist(), strict=True):
            assert code not in strings or strings[code] == text
    assert inv.layer_links["target"].tolist() == inv.layer_links["digest"].tolist()


def test_a_link_naming_another_digest_keeps_its_own_targets(
    tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    root = shared_root(BROKEN / "layer-link-names-another.tar.gz")
    links = scan(LocalStorage(root / V2), ScanOptions(workers=1)).layer_links
    differ = links[links["target"] != links["digest"]]
    assert len(differ) == 1
    assert differ["target"].iloc[0] != differ["digest"].iloc[0]


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
