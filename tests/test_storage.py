"""The storage layer on a local tree, and the rows a scan makes."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from storage_audit.core.errors import StorageError
from storage_audit.core.paths import BlobData, BlobDir, Digest, TagCurrentLink, path_for
from storage_audit.inventory.schema import SCHEMA
from storage_audit.scan.rows import ROW_TYPES, TABLES
from storage_audit.scan.run import scan
from storage_audit.storage.base import (
    AccessError,
    EntryKind,
    LocalStorage,
    NotRegular,
    SymlinkRefused,
    TooLarge,
    open_regular,
    read_regular,
)

from .conftest import FIXTURES, unpack

V2 = Path("docker/registry/v2")


def within(seconds: float, fn, *args):  # type: ignore[no-untyped-def]
    """fn(*args) run in a thread that must finish within `seconds`: a read blocked on a FIFO fails the test."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__}{args} still blocked after {seconds} s"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


# --------------------------------------------------------------------------
# Rows


def test_every_row_type_has_its_tables_columns_in_order() -> None:
    assert set(ROW_TYPES) == set(TABLES)
    for table, row in ROW_TYPES.items():
        assert row._fields == tuple(SCHEMA[table]), table  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# LocalStorage


@pytest.fixture
def tree(tmp_path: Path) -> LocalStorage:
    v2 = tmp_path / "v2"
    (v2 / "d" / "sub").mkdir(parents=True)
    (v2 / "d" / "file").write_bytes(b"sha256:" + b"0" * 64)
    (v2 / "d" / "empty").write_bytes(b"")
    (v2 / "d" / "big").write_bytes(b"x" * 1000)
    os.mkfifo(v2 / "d" / "fifo")
    (v2 / "d" / "symlink").symlink_to(v2 / "d" / "file")
    return LocalStorage(v2)


def test_listing_names_each_kind(tree: LocalStorage) -> None:
    listing = dict(tree.list_dir("d") or [])
    assert listing == {
        "sub": EntryKind.DIR,
        "file": EntryKind.FILE,
        "empty": EntryKind.FILE,
        "big": EntryKind.FILE,
        "fifo": EntryKind.OTHER,
        "symlink": EntryKind.SYMLINK,
    }
    dirs, others = tree.subdirs("d")
    assert dirs == ["sub"] and {e.name for e in others} == {"file", "empty", "big", "fifo", "symlink"}
    assert tree.list_dir("missing") is None and tree.subdirs("missing") == ([], [])


@pytest.mark.parametrize("stat", [True, False])
def test_small_reads_are_safe(tree: LocalStorage, stat: bool) -> None:
    small = tree.read_small("d/file", 511, stat)
    assert small is not None and small.data == b"sha256:" + b"0" * 64
    assert (small.size, small.mtime_ns > 0) == ((71, True) if stat else (-1, False))
    empty = tree.read_small("d/empty", 511, stat)
    assert empty is not None and empty.data == b""
    # One byte more than the limit tells that the file is bigger; stat tells how big.
    big = tree.read_small("d/big", 10, stat)
    assert big is not None and len(big.data) == 11 and big.size == (1000 if stat else -1)
    assert tree.read_small("d/missing", 511, stat) is None
    with pytest.raises(AccessError):  # a file where a directory belongs is no absence
        tree.read_small("d/file/below", 511, stat)
    with pytest.raises(NotRegular):
        within(10, tree.read_small, "d/fifo", 511, stat)
    with pytest.raises(SymlinkRefused):
        tree.read_small("d/symlink", 511, stat)
    with pytest.raises(NotRegular):
        tree.read_small("d/sub", 511, stat)
    with tree.directory("d") as d:
        with pytest.raises(NotRegular):
            within(10, d.read_small, "fifo", 511, stat)
        with pytest.raises(SymlinkRefused):
            d.read_small("symlink", 511, stat)
        again = d.read_small("file", 511, stat)
        assert again is not None and again.data == small.data


def test_errors_are_typed_and_name_the_path(tree: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod cannot deny a read: the kernel's answer is simulated.
    real_open = os.open

    def deny(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith("file"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(AccessError) as caught:
        tree.read_small("d/file", 511)
    assert caught.value.path == "d/file" and "Permission denied" in caught.value.reason
    assert isinstance(caught.value, StorageError)


def test_stat_open_remove_and_prune(tree: LocalStorage, tmp_path: Path) -> None:
    st = tree.stat("d/big")
    assert st is not None and (st.size, st.kind) == (1000, EntryKind.FILE)
    assert tree.stat("d/symlink").kind == EntryKind.SYMLINK  # type: ignore[union-attr]
    assert tree.stat("d/sub").kind == EntryKind.DIR  # type: ignore[union-attr]
    assert tree.stat("nothing") is None
    reader = tree.open_blob("d/big")
    assert reader is not None
    buffer = bytearray(300)
    with reader:
        got = b""
        while n := reader.readinto(buffer):
            got += bytes(buffer[:n])
    assert got == b"x" * 1000
    assert tree.open_blob("missing") is None
    with pytest.raises(NotRegular):
        within(10, tree.open_blob, "d/fifo")
    # Every file counts with its own size, a symbolic link with its target's name.
    assert tree.bytes_below("d") == 71 + 1000 + len(os.readlink(Path(tree.v2) / "d" / "symlink"))
    (Path(tree.v2) / "d" / "sub" / "deep").mkdir()
    (Path(tree.v2) / "d" / "sub" / "deep" / "f").write_bytes(b"12")
    tree.remove("d/sub/deep/f")
    tree.prune_empty("d/sub/deep/f", levels=5)
    # Pruning stops at the first directory that is not empty, and never takes `v2` itself.
    assert not (Path(tree.v2) / "d" / "sub").exists() and (Path(tree.v2) / "d").is_dir()
    tree.remove("d")
    tree.prune_empty("d/x", levels=3)
    assert Path(tree.v2).is_dir() and tree.list_dir("") == []


def test_paths_used_by_the_layer_are_the_layouts(tmp_path: Path) -> None:
    # A table check that the tree the fixtures hold is addressed by the same paths the specs make.
    v2 = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic") / V2
    storage = LocalStorage(v2)
    inv = scan(LocalStorage(v2))
    row = inv.tags.iloc[0]
    current = storage.read_small(path_for(TagCurrentLink(row["repository"], row["tag"])), 511)
    assert current is not None and current.data.decode() == row["digest"]
    blob = inv.blobs.iloc[0]
    st = storage.stat(path_for(BlobData(Digest.parse(blob["digest"]))))
    assert st is not None and st.size == blob["size"]
    assert storage.bytes_below(path_for(BlobDir(Digest.parse(blob["digest"])))) == blob["size"]


def test_a_blob_prefix_directory_of_another_name_is_a_finding(tmp_path: Path) -> None:
    v2 = unpack(FIXTURES / "basic.tar.gz", tmp_path / "basic") / V2
    before = scan(LocalStorage(v2))
    odd = v2 / "blobs" / "sha256" / "ZZ" / ("ff" * 32)
    odd.mkdir(parents=True)
    (odd / "data").write_bytes(b"x")
    inv = scan(LocalStorage(v2))
    stray = inv.findings[inv.findings["kind"] == "stray-file"]
    assert list(stray["path"]) == ["blobs/sha256/ZZ"]
    assert len(inv.blobs) == len(before.blobs)


def test_the_tools_own_files_are_read_regular_unfollowed_unblocked_and_capped(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    assert read_regular(small, 10) == b"x" * 10
    with open_regular(small) as fh:
        assert fh.read() == b"x" * 10
    with pytest.raises(TooLarge, match="larger than 9 bytes"):
        read_regular(small, 9)
    (tmp_path / "link").symlink_to(small)
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open or read would wait forever
    (tmp_path / "zero").symlink_to("/dev/zero")
    refusals = {"link": SymlinkRefused, "fifo": NotRegular, "zero": SymlinkRefused}
    for name, refusal in refusals.items():
        for read in (lambda path: read_regular(path, 1 << 20), open_regular):
            with pytest.raises(refusal):
                read(tmp_path / name)
    with pytest.raises(NotRegular):
        read_regular("/dev/zero", 1 << 20)
    with pytest.raises(NotRegular):
        open_regular(tmp_path)
    with pytest.raises(AccessError, match="No such file"):
        read_regular(tmp_path / "absent", 1)
