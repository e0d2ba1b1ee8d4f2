"""check: each broken fixture yields exactly its findings, clean ones none, random damage never crashes it."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_audit.analysis.check import CheckOptions, check, verify_digests
from storage_audit.core.findings import Kind
from storage_audit.inventory.tables import SCHEMA, Inventory
from storage_audit.scan.run import scan
from storage_audit.storage.base import LocalStorage

from .conftest import BROKEN, FIXTURES, REAL_FIXTURES, as_of, built_at, cli, unpack

V2 = Path("docker/registry/v2")
CASES = sorted(p.name.removesuffix(".json") for p in BROKEN.glob("*.json"))
LOUD = ("error", "warning")
ALL = ("error", "warning", "info")
# Far beyond any fixture's age: CLI runs judge uploads as of today, not as of the fixture's build.
NEVER_STALE = "100000d"


def expected(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((BROKEN / f"{name}.json").read_text())


def pairs(findings: pd.DataFrame, severities: tuple[str, ...] = LOUD) -> set[tuple[str, str]]:
    chosen = findings[findings["severity"].isin(severities)]
    return set(zip(chosen["kind"], chosen["path"], strict=True))


def as_pairs(items: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(f["kind"], f["path"]) for f in items}


# -- the library ----------------------------------------------------------------


@pytest.mark.parametrize("verify", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["plain", "verify-digests"])
@pytest.mark.parametrize("name", CASES)
def test_broken_fixture_yields_exactly_its_findings(
    name: str, verify: bool, tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    want = expected(name)
    root = shared_root(BROKEN / f"{name}.tar.gz")
    inv = as_of(scan(LocalStorage(root / V2)), want["as_of"])
    found = check(inv, CheckOptions(verify_digests=verify, workers=2))
    key = "check_verify_digests" if verify else "check"
    assert pairs(found) == as_pairs(want[key]), (want["note"], found.to_string())
    assert as_pairs(want["check_info"]) <= pairs(found, ("info",)), (want["note"], found.to_string())


def basic_as_built(v2: Path) -> Inventory:
    """The scan of the `basic` fixture at `v2`, as of its build: its upload in progress is not stale yet."""
    return as_of(scan(LocalStorage(v2)), built_at(FIXTURES / "basic.tar.gz"))


def vanished_blob(v2: Path) -> tuple[pd.DataFrame, str]:
    """Check the `basic` tree, hashing blobs, after one blob vanished since its scan: unreadable even as root."""
    inv = basic_as_built(v2)
    data = next((v2 / "blobs/sha256").glob("*/*/data"))
    data.unlink()
    return check(inv, CheckOptions(verify_digests=True)), data.relative_to(v2).as_posix()


def test_every_kind_is_produced_by_a_fixture_or_a_test(fixture_copy) -> None:  # type: ignore[no-untyped-def]
    produced = set()
    for name in CASES:
        want = expected(name)
        produced |= {f["kind"] for f in want["check_verify_digests"] + want["check_info"]}
    found, _ = vanished_blob(fixture_copy("basic") / V2)
    produced |= set(found["kind"])
    assert produced == {kind.value for kind in Kind}


def test_a_blob_gone_since_the_scan_is_unreadable(fixture_copy) -> None:  # type: ignore[no-untyped-def]
    found, rel = vanished_blob(fixture_copy("basic") / V2)
    assert pairs(found) == {("unreadable", rel)}


def test_a_file_without_read_permission_is_unreadable(fixture_root, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # Tests run as root, where file modes cannot deny a read: give the kernel's answer instead.
    v2 = fixture_root("basic") / V2
    link = v2 / "repositories/team/app/_manifests/tags/1.0/current/link"
    real_open = os.open

    def deny(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) == str(link):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    found = check(scan(LocalStorage(v2)))
    assert ("unreadable", link.relative_to(v2).as_posix()) in pairs(found)


@pytest.mark.parametrize("name", REAL_FIXTURES)
def test_clean_fixture_has_no_error_or_warning(name: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = as_of(scan(LocalStorage(fixture_root(name) / V2)), built_at(FIXTURES / f"{name}.tar.gz"))
    found = check(inv, CheckOptions(verify_digests=True))
    assert pairs(found) == set(), found.to_string()


def test_an_abandoned_upload_goes_stale_after_upload_age(fixture_root) -> None:  # type: ignore[no-untyped-def]
    inv = scan(LocalStorage(fixture_root("basic") / V2))
    built = built_at(FIXTURES / "basic.tar.gz")
    week = CheckOptions(upload_age=timedelta(days=7))
    assert pairs(check(as_of(inv, built + timedelta(days=6)), week)) == set()
    stale = pairs(check(as_of(inv, built + timedelta(days=8)), week))
    assert [kind for kind, _ in stale] == ["stale-upload"]
    assert pairs(check(as_of(inv, built + timedelta(days=8)), CheckOptions(upload_age=timedelta(days=9)))) == set()


def test_findings_have_the_inventory_columns_and_errors_come_first(
    tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    root = shared_root(BROKEN / "dangling-tag.tar.gz")
    inv = scan(LocalStorage(root / V2))
    found = check(inv)
    assert list(found.columns) == list(SCHEMA["findings"])
    assert found.dtypes.equals(inv.findings.dtypes)
    ranks = found["severity"].map({"error": 0, "warning": 1, "info": 2})
    assert ranks.is_monotonic_increasing and found["severity"].iloc[-1] == "info"


def test_missing_blob_names_the_tags_whose_pulls_fail(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    inv = scan(LocalStorage(shared_root(BROKEN / "missing-layer.tar.gz") / V2))
    found = check(inv)
    (detail,) = found[found["kind"] == "missing-blob"]["detail"]
    assert "team/app:1.2" in detail and "team/app:latest" in detail and "team/app:1.0" not in detail


def test_index_child_missing_names_the_tag(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    inv = scan(LocalStorage(shared_root(BROKEN / "index-child-missing.tar.gz") / V2))
    found = check(inv)
    (detail,) = found[found["kind"] == "index-child-missing"]["detail"]
    assert "tools/multi:v2" in detail and "tools/multi:v1" not in detail


def test_verify_never_follows_a_symlink_put_there_after_the_scan(fixture_copy) -> None:  # type: ignore[no-untyped-def]
    v2 = fixture_copy("basic") / V2
    inv = basic_as_built(v2)
    data = next((v2 / "blobs/sha256").glob("*/*/data"))
    data.unlink()
    data.symlink_to("/etc/passwd")
    found = check(inv, CheckOptions(verify_digests=True))
    rel = data.relative_to(v2).as_posix()
    assert pairs(found) == {("stray-file", rel)}


class Recorder:
    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def start(self, total_bytes: int) -> None:
        self.total = total_bytes

    def advance(self, nbytes: int) -> None:
        self.done += nbytes


def test_verify_reports_every_byte_and_any_worker_count_agrees(
    tmp_path: Path, shared_root: Callable[[Path], Path]
) -> None:
    inv = scan(LocalStorage(shared_root(BROKEN / "truncated-layer.tar.gz") / V2))
    recorder = Recorder()
    one = verify_digests(inv.root, inv.blobs, workers=1, progress=recorder)
    many = verify_digests(inv.root, inv.blobs, workers=7)
    assert recorder.total == recorder.done == int(inv.blobs["size"].sum())
    assert [f.path for f in one] == [f.path for f in many] and len(one) == 1


# -- the command -----------------------------------------------------------------


def test_clean_tree_exits_0_with_a_table_and_a_summary(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", str(fixture_root("basic")))
    assert code == 0
    assert "findings by kind" in out and "deleted-revision" in out
    assert err.startswith("check: 0 errors") and err.count("\n") == 1


def test_errors_exit_3(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = shared_root(BROKEN / "missing-layer.tar.gz")
    code, out, err = cli("check", str(root), "-f", "json")
    rows = json.loads(out)
    assert code == 3 and "1 error" in err
    assert all(list(row) == list(SCHEMA["findings"]) for row in rows)
    assert [r["kind"] for r in rows if r["severity"] == "error"] == ["missing-blob"]


def test_strict_makes_warnings_exit_3(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = str(shared_root(BROKEN / "stray-file.tar.gz"))
    assert cli("check", root, "-q", "--upload-age", NEVER_STALE)[0] == 0
    assert cli("check", root, "-q", "--upload-age", NEVER_STALE, "--strict")[0] == 3


@pytest.mark.slow
def test_digest_mismatch_only_with_verify_digests(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = str(shared_root(BROKEN / "flipped-byte.tar.gz"))
    assert cli("check", root, "-q")[0] == 0
    code, out, _ = cli("check", root, "-q", "--verify-digests", "--workers", "3", "-f", "csv")
    frame = pd.read_csv(io.StringIO(out))
    assert code == 3 and list(frame.columns) == list(SCHEMA["findings"])
    assert list(frame[frame["severity"] == "error"]["kind"]) == ["digest-mismatch"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--upload-age", "a week"], "not a duration"),
        (["--workers", "0"], "--workers"),
        (["--format", "xml"], "--format"),
    ],
)
def test_unusable_arguments_exit_2(args: list[str], words: str, fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("check", str(fixture_root("basic")), *args)
    assert code == 2 and out == "" and words in err


def test_unusable_root_exits_2(tmp_path: Path) -> None:
    assert cli("check", str(tmp_path / "nope"))[0] == 2
    assert cli("check", str(tmp_path))[0] == 2


def test_verify_digests_needs_the_tree_not_a_snapshot(fixture_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    snap = tmp_path / "snap"
    assert cli("scan", str(fixture_root("basic")), "-o", str(snap), "-q")[0] == 0
    assert cli("check", str(snap), "-q")[0] == 0
    code, _, err = cli("check", str(snap), "--verify-digests")
    assert code == 2 and "snapshot" in err


def test_output_file_is_written_after_the_work(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    root = str(shared_root(BROKEN / "dangling-tag.tar.gz"))
    target = tmp_path / "findings.json"
    code, out, _ = cli("check", root, "-f", "json", "-o", str(target), "-q")
    assert code == 3 and out == ""
    assert {r["kind"] for r in json.loads(target.read_text())} >= {"dangling-tag", "deleted-revision"}
    refused = tmp_path / "refused.json"
    assert cli("check", root, "--upload-age", "soon", "-o", str(refused))[0] == 2
    assert not refused.exists()


def test_table_fits_80_columns(tmp_path: Path, shared_root: Callable[[Path], Path]) -> None:
    # Piped or to a file, a table takes the width COLUMNS says.
    root = str(shared_root(BROKEN / "index-child-missing.tar.gz"))
    code, out, _ = cli("check", root, "-q", env={"COLUMNS": "80"})
    assert code == 3 and "index-child-missing (error, 1)" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    target = tmp_path / "findings.txt"
    assert cli("check", root, "-q", "-o", str(target), env={"COLUMNS": "80"})[0] == 3
    text = target.read_text()
    assert "findings by kind" in text and max(len(line) for line in text.splitlines()) <= 80


def test_help_names_the_exit_codes() -> None:
    code, out, _ = cli("check", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Exit codes: 0 no error findings; 3 error findings" in text and "2 unusable" in text and "1 internal" in text


def test_quiet_prints_nothing_on_stderr(fixture_root) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("check", str(fixture_root("multiarch")), "-q", "--verify-digests")
    assert (code, err) == (0, "")


# -- random damage ----------------------------------------------------------------

OPERATIONS = ("truncate", "garble", "delete", "chmod", "symlink", "file-to-dir", "dir-to-file")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(FIXTURES / "basic.tar.gz", tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def entries(pristine: Path) -> list[str]:
    v2 = pristine / V2
    return sorted(p.relative_to(v2).as_posix() for p in v2.rglob("*"))


def _inside_upload(rel: str) -> bool:
    """Below an upload's own directory: partial data the registry owns, which nothing else reads."""
    parts = rel.split("/")
    return "_uploads" in parts and len(parts) > parts.index("_uploads") + 2


def damage(path: Path, operation: str, fraction: float) -> bool:
    """Apply `operation` to `path`; True when the result is damage the layout cannot contain silently."""
    st_ = path.lstat()
    is_file = stat.S_ISREG(st_.st_mode)
    if operation in ("truncate", "garble"):
        if not is_file or st_.st_size == 0:
            return False
        data = bytearray(path.read_bytes())
        at = int(fraction * len(data))
        if operation == "truncate":
            del data[at:]
        else:
            data[at] ^= 0x80  # an ASCII byte becomes invalid UTF-8, a binary one a different byte
        path.write_bytes(bytes(data))
        return True
    if operation == "delete":
        shutil.rmtree(path) if stat.S_ISDIR(st_.st_mode) else path.unlink()
        return False  # the registry itself deletes most things
    if operation == "chmod":
        path.chmod(0)
        return os.geteuid() != 0  # root reads through any mode
    if operation == "symlink":
        shutil.rmtree(path) if stat.S_ISDIR(st_.st_mode) else path.unlink()
        path.symlink_to("/etc/passwd")
        return True
    if operation == "file-to-dir":
        if not is_file:
            return False
        path.unlink()
        path.mkdir()
        return True
    if not stat.S_ISDIR(st_.st_mode):
        return False
    shutil.rmtree(path)
    path.write_bytes(b"not a directory")
    return True


def _restore_modes(top: Path) -> None:
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(base) / name
            if not p.is_symlink():
                p.chmod(0o700)
    top.chmod(0o700)


@pytest.fixture(scope="module")
def baseline(pristine: Path) -> set[tuple[str, str]]:
    options = CheckOptions(verify_digests=True, upload_age=timedelta(days=int(NEVER_STALE.removesuffix("d"))))
    return pairs(check(scan(LocalStorage(pristine / V2)), options), ALL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_never_crashes_and_is_reported(
    pristine: Path, entries: list[str], baseline: set[tuple[str, str]], data: st.DataObject
) -> None:
    rel = data.draw(st.sampled_from(entries), label="path")
    operation = data.draw(st.sampled_from(OPERATIONS), label="operation")
    fraction = data.draw(st.floats(0, 1, exclude_max=True), label="fraction")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        shutil.copytree(pristine, root, symlinks=True)
        try:
            breaking = damage(root / V2 / rel, operation, fraction) and not _inside_upload(rel)
            # The command scans and checks: an exception in either is caught by cli() or is exit 1.
            code, out, _ = cli("check", str(root), "-q", "--verify-digests", "-f", "json", "--upload-age", NEVER_STALE)
            assert code in (0, 3)
            if breaking:
                found = {(f["kind"], f["path"]) for f in json.loads(out)}
                assert found - baseline, (rel, operation, out)
        finally:
            _restore_modes(Path(tmp))
