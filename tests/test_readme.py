"""The README documents every inventory column and every finding kind, and its commands run as written."""

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
README = (TOP / "README.md").read_text(encoding="utf-8")


def test_every_inventory_column_is_documented() -> None:
    for table, columns in SCHEMA.items():
        assert f"**{table}**" in README
        for column in columns:
            assert f"`{column}`" in README, (table, column)


def test_every_finding_kind_is_documented() -> None:
    for kind in Kind:
        assert f"`{kind.value}`" in README, kind


def readme_lines() -> list[list[str]]:
    """Every command line of the README's shell blocks, in order, split into words."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    lines.append(words)
    return lines


def test_the_first_two_commands_install_run_and_test() -> None:
    first, second = re.findall(r"```sh\n(.*?)```", README, flags=re.S)[:2]
    assert first.startswith("pip install . && storage-audit ")
    assert second.strip() == "pip install '.[test]' && python -m pytest"
    assert second.strip() in (TOP / ".ci" / "run").read_text()


def test_readme_commands_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from the checkout so fixtures/demo resolves; /tmp paths become this test's own directory.
    monkeypatch.chdir(TOP)
    ran = 0
    for words in readme_lines():
        words = [w.replace("/tmp/", f"{tmp_path}/") for w in words]
        if words[:2] == ["cp", "-r"]:
            shutil.copytree(words[2], words[3], symlinks=True)
        elif words[0] == "storage-audit":
            result = CliRunner().invoke(app, words[1:])
            assert result.exit_code == 0, (words, result.output)
            ran += 1
        else:
            assert words[0] in ("pip", "python"), words  # installing and testing run outside this test
    assert ran >= 15
