"""What could not be read is said, never answered around: commands run as a user the tree denies.

Permissions mean nothing to root (CAP_DAC_OVERRIDE), so as root each command runs
as nobody through setpriv, over a copy of the tree that nobody may read except
where a test takes the permission away.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, unpack

V2 = Path("docker/registry/v2")
NOBODY = 65534
# Each test starts the command line in new processes, a second or more each.
pytestmark = pytest.mark.slow


def unprivileged() -> list[str]:
    """The command prefix that runs a program without the power to read what its mode denies."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): permissions cannot be denied")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def storage_audit(*args: str | Path) -> tuple[int, str, str]:
    done = subprocess.run(
        [*unprivileged(), sys.executable, "-m", "storage_audit", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, "COLUMNS": "80"},
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="storage-audit-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in (path, *path.rglob("*")):
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IRWXU)
        shutil.rmtree(path)


def readable_tree(into: Path, name: str = "basic") -> Path:
    root = unpack(FIXTURES / f"{name}.tar.gz", into / name)
    for p in (root, *root.rglob("*")):
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
    return root


def test_the_tree_is_readable_as_the_test_user(shared_dir: Path) -> None:
    # The control: with nothing denied, every command answers and exits 0.
    root = readable_tree(shared_dir)
    for command in ("report", "untagged", "orphans", "scan"):
        code, _, err = storage_audit(command, root)
        assert code == 0, (command, err)
        assert "could not be read" not in err


@pytest.mark.parametrize("command", ["orphans", "report", "untagged", "scan"])
def test_unreadable_repositories_make_every_answer_uncertain(shared_dir: Path, command: str) -> None:
    root = readable_tree(shared_dir)
    (root / V2 / "repositories").chmod(0)
    code, out, err = storage_audit(command, root)
    assert code == 3, err
    assert err.endswith(
        "storage-audit: warning: 1 path could not be read, the first: repositories (relative to v2); "
        "this answer leaves out whatever it holds; see `storage-audit check`\n"
    ), err
    if command != "scan":
        assert out  # the answer is still given, for what it is worth


@pytest.mark.parametrize("command", ["orphans", "report", "untagged", "scan"])
def test_an_unreadable_v2_makes_every_answer_uncertain(shared_dir: Path, command: str) -> None:
    root = readable_tree(shared_dir)
    (root / V2).chmod(0)
    code, _, err = storage_audit(command, root)
    assert code == 3, err
    assert "storage-audit: warning: 1 path could not be read, the first: " in err
    assert "; see `storage-audit check`\n" in err


def test_plan_refuses_an_unreadable_tree(shared_dir: Path) -> None:
    root = readable_tree(shared_dir)
    (root / V2 / "repositories").chmod(0)
    code, out, err = storage_audit("plan", root, "--delete-untagged", "--min-age", "0s")
    assert (code, out) == (3, "")
    assert err.startswith("storage-audit: error: unreadable at repositories: 1 finding leaves references unknown;")


def test_a_snapshot_of_an_unreadable_tree_stays_uncertain(shared_dir: Path) -> None:
    root = readable_tree(shared_dir)
    (root / V2 / "repositories").chmod(0)
    snapshot = shared_dir / "snapshot"
    snapshot.mkdir()
    snapshot.chmod(0o777)
    code, _, err = storage_audit("scan", root, "-o", snapshot, "-q")
    assert code == 3 and "1 path could not be read, the first: repositories" in err
    for args in (["report"], ["report", "--by", "repository"], ["orphans"]):
        code, _, err = storage_audit(*args[:1], snapshot, *args[1:])
        assert code == 3, (args, err)
        assert "1 path could not be read, the first: repositories" in err


@pytest.mark.parametrize("command", ["report", "scan", "check", "plan"])
def test_an_unreadable_root_is_one_line_and_exit_2(shared_dir: Path, command: str) -> None:
    root = readable_tree(shared_dir)
    (root / V2).chmod(0)
    v2 = root / V2
    code, out, err = storage_audit(command, v2)
    assert (code, out) == (2, "")
    assert err == f"storage-audit: error: {v2}: cannot read: permission denied\n"
    inner = v2 / "repositories"
    code, out, err = storage_audit(command, inner)
    assert (code, out) == (2, "")
    assert err == f"storage-audit: error: {inner}: permission denied\n"
