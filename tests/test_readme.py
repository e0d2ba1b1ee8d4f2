"""The README and the pages of docs/ document every inventory column and finding kind, and their commands run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage_audit.cli.app import app
from storage_audit.core.findings import Kind
from storage_audit.inventory.tables import SCHEMA
from tests.facts import Facts, load_expected

TOP = Path(__file__).resolve().parents[1]
README = TOP / "README.md"
DOCS = TOP / "docs"
DOC_PAGES = sorted(DOCS.glob("*.md"))


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def blocks(page: Path, language: str) -> list[str]:
    """The fenced blocks of `page` marked `language`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text(page), flags=re.S)


def command_lines(page: Path) -> list[list[str]]:
    """Every command line of the page's `sh` blocks, in order, split into words (`a && b` is two)."""
    lines = []
    for block in blocks(page, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    lines.append(words)
    return lines


def run_commands(page: Path, tmp_path: Path, root: Path | None = None) -> int:
    """Run the page's commands from the checkout, `/tmp/` being `tmp_path` and `$ROOT` being `root`.

    Returns how many storage-audit commands ran. `apply` without `--yes` is answered yes at its prompt.
    """
    ran = 0
    for words in command_lines(page):
        words = [w.replace("/tmp/", f"{tmp_path}/") for w in words]
        if root is not None:
            words = [w.replace("$ROOT", str(root)) for w in words]
        assert not any(re.search(r"\$[A-Za-z_{(]", w) for w in words), (page.name, words)  # no variable left
        if words[:2] == ["cp", "-r"]:
            shutil.copytree(words[2], words[3], symlinks=True)
        elif words[0] == "storage-audit":
            answer = "y\n" if words[1] == "apply" and not {"--yes", "-y", "--dry-run"} & set(words) else None
            result = CliRunner().invoke(app, words[1:], input=answer)
            assert result.exit_code == 0, (page.name, words, result.output)
            ran += 1
        else:
            assert words[0] in ("pip", "python"), (page.name, words)  # installing and testing run outside this test
    return ran


def test_every_inventory_column_is_documented() -> None:
    inventory = text(DOCS / "inventory.md")
    for table, columns in SCHEMA.items():
        assert f"**{table}**" in inventory
        for column in columns:
            assert f"`{column}`" in inventory, (table, column)


def test_every_finding_kind_is_documented() -> None:
    findings = text(DOCS / "findings.md")
    for kind in Kind:
        assert f"`{kind.value}`" in findings, kind


def test_the_first_two_commands_install_run_and_test() -> None:
    first, second = blocks(README, "sh")[:2]
    assert first.startswith("pip install . && storage-audit ")
    assert second.strip() == "pip install '.[test]' && python -m pytest"
    assert second.strip() in (TOP / ".ci" / "run").read_text()


# The README's walkthrough reads "$ROOT": Debian's configuration file, or the container's volume directory.
DEBIAN_CONFIG = """\
version: 0.1
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {tree}
  delete:
    enabled: true
http:
  addr: :5000
"""
DAY = 86400


def stand_in(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A copy of fixtures/demo whose files are 30 days older than checked out, and the ROOT naming it."""
    tree = tmp_path / "srv" / "registry"
    shutil.copytree(TOP / "fixtures" / "demo", tree, symlinks=True)
    # Older than the grace period whatever today is: the walkthrough keeps `plan`'s default --min-age.
    for path in [tree, *tree.rglob("*")]:
        st = path.lstat()
        os.utime(path, ns=(st.st_atime_ns - 30 * DAY * 10**9, st.st_mtime_ns - 30 * DAY * 10**9), follow_symlinks=False)
    if kind == "directory":
        return tree, tree
    config = tmp_path / "etc" / "config.yml"
    config.parent.mkdir()
    config.write_text(DEBIAN_CONFIG.format(tree=json.dumps(str(tree))), encoding="utf-8")
    return tree, config


def blob_digests(tree: Path) -> set[str]:
    return {"sha256:" + p.parent.name for p in tree.glob("docker/registry/v2/blobs/sha256/*/*/data")}


def needed_by_tags(facts: Facts) -> set[str]:
    """The blobs the tags need, from what the registry was sent: manifests, children, referrers, configs, layers."""
    refs: dict[str, list[dict[str, str]]] = {}
    for ref in facts["references"]:
        refs.setdefault(ref["manifest"], []).append(ref)
    referrers: dict[str, list[str]] = {}
    for manifest in facts["manifests"]:
        if manifest["subject"]:
            referrers.setdefault(manifest["subject"], []).append(manifest["digest"])
    needed: set[str] = set()
    todo = [tag["digest"] for tag in facts["tags"]]
    while todo:
        digest = todo.pop()
        if digest not in needed:
            needed.add(digest)
            todo += [r["digest"] for r in refs.get(digest, []) if r["ref_type"] == "child"]
            needed |= {r["digest"] for r in refs.get(digest, []) if r["ref_type"] in ("config", "layer", "fslayer")}
            todo += referrers.get(digest, [])
    return needed


@pytest.mark.parametrize("kind", ["config", "directory"])
def test_readme_commands_run_in_order(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TOP)  # fixtures/demo resolves from the checkout
    tree, root = stand_in(tmp_path, kind)
    facts = load_expected(TOP / "fixtures" / "basic.expected.json")  # fixtures/demo is basic's tree
    before = blob_digests(tree)
    assert before == {blob["digest"] for blob in facts["blobs"]}
    ran = run_commands(README, tmp_path, root)
    assert ran >= 12
    # No tag loses anything, and everything else went (no tag is beyond --keep-last 10), into the quarantine.
    after = blob_digests(tree)
    assert after == needed_by_tags(facts) & before
    assert len(after) < len(before)
    quarantined = {"sha256:" + p.parent.name for p in (tmp_path / "registry-quarantine").glob("blobs/sha256/*/*/data")}
    assert quarantined == before - after


@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_doc_page_commands_run_in_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TOP)
    ran = run_commands(page, tmp_path)
    assert ran == sum(1 for words in command_lines(page) if words[0] == "storage-audit")


def test_the_doc_pages_show_runnable_commands() -> None:
    # Counted, not run: the test above runs them, page by page.
    counted = sum(1 for page in DOC_PAGES for words in command_lines(page) if words[0] == "storage-audit")
    assert counted >= 30
