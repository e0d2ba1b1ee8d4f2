"""The README and docs/: every inventory column and finding kind documented, commands run and options exist as shown."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from storage_audit.cli.app import app
from storage_audit.core.findings import Kind
from storage_audit.inventory.tables import SCHEMA
from tests import registry_harness
from tests.conftest import cli, fixtures_built
from tests.facts import Facts, load_expected
from tests.registry_harness import Registry, RegistryError

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
        if words[:2] == ["cp", "-a"]:
            shutil.copytree(words[2], words[3], symlinks=True)  # which keeps the times, as `cp -a` does
        elif words[0] == "storage-audit":
            answer = "y\n" if words[1] == "apply" and not {"--yes", "-y", "--dry-run"} & set(words) else None
            result = cli(*words[1:], input=answer)
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


NOW = fixtures_built() + timedelta(minutes=1)
"""The time the documentation's commands run at: past, whatever today is, for a plan made then may be applied now."""


def demo_copy(into: Path) -> Path:
    """A copy of fixtures/demo at `into` whose files all date from 30 days before NOW."""
    shutil.copytree(TOP / "fixtures" / "demo", into, symlinks=True)
    # Older than the grace period as of NOW: the walkthrough keeps `plan`'s default --min-age.
    then = int((NOW - timedelta(days=30)).timestamp()) * 10**9
    for path in [into, *into.rglob("*")]:
        os.utime(path, ns=(then, then), follow_symlinks=False)
    return into


def stand_in(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A copy of fixtures/demo 30 days old as of NOW, and the ROOT naming it."""
    tree = demo_copy(tmp_path / "srv" / "registry")
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["config", "directory"])
def test_readme_commands_run_in_order(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TOP)  # fixtures/demo resolves from the checkout
    monkeypatch.setenv("STORAGE_AUDIT_NOW", NOW.isoformat())
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


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_doc_page_commands_run_in_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # From a copy of the checkout's fixtures/demo, dated as of NOW, at the same relative path (docs/examples too).
    top = tmp_path / "checkout"
    demo_copy(top / "fixtures" / "demo")
    shutil.copytree(DOCS / "examples", top / "docs" / "examples")  # the example policy files
    monkeypatch.chdir(top)
    monkeypatch.setenv("STORAGE_AUDIT_NOW", NOW.isoformat())
    ran = run_commands(page, tmp_path)
    assert ran == sum(1 for words in command_lines(page) if words[0] == "storage-audit")


def test_the_doc_pages_show_runnable_commands() -> None:
    # Counted, not run: the test above runs them, page by page.
    counted = sum(1 for page in DOC_PAGES for words in command_lines(page) if words[0] == "storage-audit")
    assert counted >= 30


# Options: every storage-audit command shown anywhere (run or not, in a block or in the text) takes the options
# it is shown with, and a choice it is given is one of its choices.
COMMANDS = typer.main.get_command(app)
SUBCOMMANDS = COMMANDS.commands  # type: ignore[attr-defined]
TOP_LEVEL = {opt: param for param in COMMANDS.params for opt in param.opts}


def shown_commands(page: Path) -> list[list[str]]:
    """Every `storage-audit ...` (or `COMMAND --option ...`) of the page, from its code blocks and code spans."""
    body = text(page)
    pieces = [line for block in re.findall(r"```\w*\n(.*?)```", body, flags=re.S) for line in block.splitlines()]
    prose = re.sub(r"```\w*\n.*?```", "", body, flags=re.S)
    pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    shown = []
    for piece in pieces:
        # storage-audit as a command, not as the name an image is tagged with (`podman build -t storage-audit`).
        for command in re.findall(r"(?:^|[\s(;])(?<!-t )storage-audit\s+([^|;)]*)", piece):
            shown.append(command.split())
        words = piece.split()
        if len(words) > 1 and words[0] in SUBCOMMANDS and any(w.startswith("-") for w in words[1:]):
            shown.append(words)
    return shown


def check_options(command: str, words: list[str], where: str) -> int:
    """Assert that each option in `words` is one `command` takes, with a valid choice; returns how many."""
    sub = SUBCOMMANDS[command]
    options = {opt: param for param in sub.params for opt in [*param.opts, *param.secondary_opts]}
    checked = 0
    for i, word in enumerate(words):
        name = word.split("=", 1)[0]
        if not re.fullmatch(r"--?[a-z][a-z0-9-]*", name):
            continue
        assert name in options, (where, command, name)
        param = options[name]
        # An option that takes one of a few values names them in its metavar, `[table|csv|json]`.
        named = re.fullmatch(r"\[([\w|]+)\]", param.metavar or "")
        choices = None if named is None else named.group(1).split("|")
        if choices is not None and i + 1 < len(words) and re.fullmatch(r"[a-z]+", words[i + 1]):
            assert words[i + 1] in choices, (where, command, name, words[i + 1])
        checked += 1
    return checked


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=[p.name for p in [README, *DOC_PAGES]])
def test_every_option_shown_is_one_the_command_takes(page: Path) -> None:
    checked = 0
    for words in shown_commands(page):
        words = [w.strip("\"'") for w in words]
        while words and words[0].startswith("-"):
            # The global options before the command: --debug, --version, --show-completion SHELL.
            assert words[0] in TOP_LEVEL, (page.name, words)
            words = words[1:] if TOP_LEVEL[words[0]].is_flag else words[2:]
        if words and words[0] in SUBCOMMANDS:
            checked += check_options(words[0], words[1:], page.name)
    # Enough found to show the search works: the walkthrough's, and the examples of every command.
    assert checked >= {"README.md": 12, "commands.md": 30}.get(page.name, 0), checked


def test_the_registry_cli_table_maps_to_options_of_plan() -> None:
    section = text(README).split("| registry-cli |", 1)[1].split("\n\n", 1)[0]
    rows = [row.split(" | ") for row in section.splitlines()[2:]]
    assert len(rows) >= 12
    checked = 0
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row[1]):
            words = span.split()
            command = words.pop(0) if words[0] in SUBCOMMANDS else "plan"
            checked += check_options(command, words, "README registry-cli table")
    assert checked >= 10


# Links between the pages lead to a page, and to a heading of it.
def slugs(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", text(page), flags=re.S), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=[p.name for p in [README, *DOC_PAGES]])
def test_every_link_leads_somewhere(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", text(page)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), (page.name, target)
        if anchor:
            assert anchor in slugs(linked), (page.name, target, sorted(slugs(linked)))


@pytest.mark.slow
def test_the_python_examples_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(TOP)
    examples = blocks(DOCS / "python.md", "python")
    assert len(examples) >= 4
    for example in examples:
        exec(compile(example, "docs/python.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    # The demo's largest repository, how many orphan blobs it has and whether check fails (exit 3) on it;
    # its three largest blobs, its orphan blobs, and the rows of a diff of a tree with itself.
    assert printed[:2] == ["['tools/multi'] []", "3 False"]
    assert printed[3:] == ["[3.0]", "0"]
    assert printed[2].count("sha256:") == 3


# Step 4 of the walkthrough: what the README says makes the registry read-only does, in the registry itself.
def with_readme_readonly(config: dict[str, Any], snippet: dict[str, Any]) -> dict[str, Any]:
    """`config` with `snippet` merged in, key by key, as an operator adds it to their file."""
    merged = dict(config)
    for key, value in snippet.items():
        merged[key] = with_readme_readonly(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


@pytest.mark.parametrize(
    ("how", "status"), [("as-installed", 202), ("configuration", 405), ("environment", 405), ("wrong-variable", None)]
)
def test_the_readme_makes_the_registry_read_only(
    how: str, status: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(os.environ)
    if how == "configuration":
        (snippet,) = [yaml.safe_load(block) for block in blocks(README, "yaml") if "readonly" in block]
        plain = registry_harness.config_text

        def config_text(*args: Any, **kwargs: Any) -> str:
            return yaml.safe_dump(with_readme_readonly(yaml.safe_load(plain(*args, **kwargs)), snippet))

        monkeypatch.setattr(registry_harness, "config_text", config_text)
    elif how == "environment":
        (value,) = re.findall(r"REGISTRY_STORAGE_MAINTENANCE_READONLY='([^']+)'", text(README))
        env["REGISTRY_STORAGE_MAINTENANCE_READONLY"] = value
    elif how == "wrong-variable":
        assert "refuses to start with\n`REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true`" in text(README)
        env["REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED"] = "true"
    registry = Registry(tmp_path / "root", env=env, startup_timeout=10)
    if status is None:
        with pytest.raises(RegistryError):
            registry.start()
        return
    with registry:
        # A push starts with an upload; pulls (here the catalog) go on.
        assert registry.request("POST", "/v2/team/app/blobs/uploads/", headers={"Content-Length": "0"}).status == status
        assert registry.request("GET", "/v2/_catalog").status == 200
