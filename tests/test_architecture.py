"""The package keeps the shape ARCHITECTURE.md draws: its layers import downwards only, and the map names them all."""

from __future__ import annotations

import re
from pathlib import Path

from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

TOP = Path(__file__).resolve().parents[1]


def test_the_layers_of_the_architecture_hold() -> None:
    # The contracts are in pyproject.toml; lint_imports prints what breaks them.
    status = lint_imports(config_filename=str(TOP / "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == EXIT_STATUS_SUCCESS


def test_the_map_names_every_subpackage_and_module() -> None:
    text = (TOP / "ARCHITECTURE.md").read_text(encoding="utf-8")
    package = TOP / "storage_audit"
    for sub in sorted(p.parent for p in package.glob("*/__init__.py")):
        assert f"`{sub.name}/`" in text, sub.name
        for module in sorted(sub.rglob("*.py")):
            if module.name != "__init__.py":
                assert f"`{module.stem}`" in text, module.relative_to(package)


def test_each_subpackage_says_its_role_in_one_line() -> None:
    for init in sorted((TOP / "storage_audit").glob("*/__init__.py")):
        doc = init.read_text(encoding="utf-8")
        assert re.fullmatch(r'"""[^\n]+"""\n', doc), init
