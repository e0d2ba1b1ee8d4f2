"""The README documents every inventory column and every finding kind, and its commands run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage_audit.cli import app
from storage_audit.findings import Kind
from storage_audit.inventory import SCHEMA

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_inventory_column_is_documented() -> None:
    for table, columns in SCHEMA.items():
        assert f"**{table}**" in README
        for column in columns:
            assert f"`{column}`" in README, (table, column)


def test_every_finding_kind_is_documented() -> None:
    for kind in Kind:
        assert f"`{kind.value}`" in README, kind


def readme_commands() -> list[list[str]]:
    """Every `storage-audit ...` line in the README's shell blocks, split into arguments."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "storage-audit":
                    commands.append(words[1:])
    return commands


def test_the_readme_shows_commands() -> None:
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a))
def test_readme_command_runs(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from the repository root so fixtures/demo resolves, writing /tmp paths under tmp_path.
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = [a.replace("/tmp/", f"{tmp_path}/") for a in args]
    if args[0] == "scan" and args[1].startswith(str(tmp_path)):
        CliRunner().invoke(app, ["scan", "fixtures/demo", "-o", args[1], "-q"])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
