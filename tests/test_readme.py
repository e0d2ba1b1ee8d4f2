"""The README and the pages of docs/ document every inventory column and finding kind, and their commands run as written."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage_audit.cli.app import app
from storage_audit.core.findings import Kind
from storage_audit.inventory.tables import SCHEMA

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


def run_commands(page: Path, tmp_path: Path) -> int:
    """Run the page's commands from the checkout, `/tmp/` being `tmp_path`; returns how many storage-audit ran."""
    ran = 0
    for words in command_lines(page):
        words = [w.replace("/tmp/", f"{tmp_path}/") for w in words]
        if words[:2] == ["cp", "-r"]:
            shutil.copytree(words[2], words[3], symlinks=True)
        elif words[0] == "storage-audit":
            result = CliRunner().invoke(app, words[1:])
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


def test_readme_commands_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TOP)  # fixtures/demo resolves from the checkout
    assert run_commands(README, tmp_path) >= 2


@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_doc_page_commands_run_in_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TOP)
    ran = run_commands(page, tmp_path)
    assert ran == sum(1 for words in command_lines(page) if words[0] == "storage-audit")


def test_the_doc_pages_show_runnable_commands() -> None:
    # Counted, not run: the test above runs them, page by page.
    counted = sum(1 for page in DOC_PAGES for words in command_lines(page) if words[0] == "storage-audit")
    assert counted >= 30
