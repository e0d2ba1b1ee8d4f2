"""The conventions of the shell: the default ROOT, completion, help with examples, tables that keep their columns,
compound durations and sizes in one style."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st

from storage_audit.cli.app import app
from storage_audit.cli.options import parse_duration
from storage_audit.core.errors import UsageError
from storage_audit.core.text import size
from storage_audit.roots import resolve as roots
from storage_audit.roots.resolve import RootError, find_default
from tests.conftest import cli
from tests.registry_harness import required

TOP = Path(__file__).resolve().parents[1]
DEMO = TOP / "fixtures" / "demo"


# --------------------------------------------------------------------------
# ROOT when none is given


def rerooted(top: Path) -> list[Path]:
    """The places looked at by default, in their order, moved under `top`: the machine's own are never read."""
    return [top / path.relative_to("/") for path in roots.CANDIDATES]


def registry_tree(root: Path) -> Path:
    shutil.copytree(DEMO, root, symlinks=True)
    return root


def test_the_places_looked_at_are_the_configuration_then_the_image_tree_then_debian_tree() -> None:
    assert (
        Path("/etc/docker/registry/config.yml"),
        Path("/var/lib/registry"),
        Path("/var/lib/docker-registry"),
    ) == roots.CANDIDATES


def test_the_first_place_that_holds_a_registry_is_chosen(tmp_path: Path) -> None:
    config, image, debian = rerooted(tmp_path)
    with pytest.raises(RootError) as refused:
        find_default([config, image, debian])
    message = str(refused.value)
    for path in (config, image, debian):
        assert f"{path} (not there)" in message
    assert message.startswith("no ROOT given, and no registry where one is kept by default: ")
    image.mkdir(parents=True)  # a directory without docker/registry/v2 is passed over, and said why
    registry_tree(debian)
    found = find_default([config, image, debian])
    assert (found.path, found.what) == (debian, "a registry's storage tree")
    with pytest.raises(RootError, match=re.escape(f"{image} (no docker/registry/v2 in it)")):
        find_default([config, image])
    image.rmdir()
    registry_tree(image)
    assert find_default([config, image, debian]).path == image
    config.parent.mkdir(parents=True)
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {debian}\n")
    found = find_default([config, image, debian])
    assert (found.path, found.what) == (config, "the registry's configuration")


def test_without_root_a_debian_host_reads_its_configuration_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As Debian's docker-registry package lays it out: the configuration naming /var/lib/docker-registry.
    config, _, debian = rerooted(tmp_path)
    registry_tree(debian)
    config.parent.mkdir(parents=True)
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {debian}\nhttp:\n  addr: :5000\n")
    monkeypatch.setattr(roots, "CANDIDATES", (config, *rerooted(tmp_path)[1:]))
    code, out, err = cli("report", "-f", "json")
    assert code == 0, err
    assert err == f"ROOT: {config} (the registry's configuration), found by default\n"
    assert out == cli("report", str(debian), "-f", "json")[1]
    # Wide enough for every column: a narrower table would say on stderr which it left out.
    code, _, err = cli("untagged", "-q", env={"COLUMNS": "200"})
    assert (code, err) == (0, "")


def test_without_root_and_no_registry_the_error_names_every_place_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    places = rerooted(tmp_path)
    monkeypatch.setattr(roots, "CANDIDATES", tuple(places))
    for command in ("scan", "untagged", "orphans", "report", "check", "plan"):
        code, out, err = cli(command)
        assert (code, out) == (2, ""), command
        assert err.count("\n") == 1 and err.startswith("storage-audit: error: no ROOT given, and no registry where")
        for path in places:
            assert f"{path} (not there)" in err
        assert "give ROOT: " in err


# --------------------------------------------------------------------------
# Shell completion


@pytest.fixture(scope="module")
def on_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PATH finds `storage-audit`: this checkout's, through this interpreter."""
    bin_dir = tmp_path_factory.mktemp("bin")
    script = bin_dir / "storage-audit"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m storage_audit "$@"\n')
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(TOP))


def shell(name: str) -> str:
    return required(shutil.which(name), f"{name} is not installed")


@pytest.mark.parametrize("name", ["bash", "zsh", "fish"])
def test_completion_script_of_each_shell_is_valid_in_it(name: str, tmp_path: Path) -> None:
    code, out, _ = cli("--show-completion", name)
    assert code == 0 and "_STORAGE_AUDIT_COMPLETE" in out and "storage-audit" in out
    script = tmp_path / f"completion.{name}"
    script.write_text(out)
    checked = subprocess.run([shell(name), "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
def test_bash_completes_commands_options_and_choices(on_path: dict[str, str]) -> None:
    def complete(*words: str) -> list[str]:
        script = (
            'source <(storage-audit --show-completion bash); COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            '_storage_audit_completion storage-audit; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            [shell("bash"), "-c", script, "bash", *words], env=on_path, capture_output=True, text=True, check=True
        )
        return done.stdout.split()

    assert complete("storage-audit", "re") == ["report"]
    assert complete("storage-audit", "report", "--b") == ["--by"]
    assert complete("storage-audit", "report", "--by", "rep") == ["repository"]
    assert "--older-than" in complete("storage-audit", "plan", "--o")


@pytest.mark.slow
def test_fish_completes_commands_and_choices(on_path: dict[str, str]) -> None:
    def complete(line: str) -> list[str]:
        script = f"storage-audit --show-completion fish | source; complete -C {shlex.quote(line)}"
        done = subprocess.run([shell("fish"), "-c", script], env=on_path, capture_output=True, text=True, check=True)
        return [entry.split("\t")[0] for entry in done.stdout.splitlines()]

    assert complete("storage-audit ap") == ["apply"]
    assert complete("storage-audit diff a b --by t") == ["tag"]


@pytest.mark.slow
def test_zsh_is_answered_with_descriptions(on_path: dict[str, str]) -> None:
    # What typer's zsh script asks (the words so far) and evaluates: an _arguments spec of each value and its help.
    env = dict(on_path, _TYPER_COMPLETE_ARGS="storage-audit ch", _STORAGE_AUDIT_COMPLETE="complete_zsh")
    done = subprocess.run(["storage-audit"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.startswith("""_arguments '*: :(("check":"Check the storage for damage""")


# --------------------------------------------------------------------------
# Help


def commands() -> dict[str, Any]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_help_ends_with_examples_that_parse(name: str) -> None:
    code, out, _ = cli(name, "--help", env={"COLUMNS": "80"})
    assert code == 0
    section = out.split("\nExamples:\n", 1)[1]
    lines = [line.strip() for line in section.splitlines() if line.strip()]
    examples = [line for line in lines if line.startswith(f"storage-audit {name}")]
    assert 2 <= len(examples) <= 3 and len(lines) == 2 * len(examples), section
    for example in examples:
        # Every example's options exist and its values are valid: typer parses it as the command would.
        command = commands()[name]
        with command.make_context(name, shlex.split(example)[2:]) as ctx:
            assert ctx.params


def test_the_command_list_says_each_command_in_a_whole_sentence() -> None:
    code, out, _ = cli("--help", env={"COLUMNS": "80"})
    assert code == 0
    listed = " ".join(out.split("\nCommands:\n", 1)[1].split())
    for name, command in commands().items():
        summary = command.short_help or ""
        assert summary.endswith(".") and "..." not in summary and len(summary.split()) >= 8, name
        assert f"{name} {summary}" in listed, name


@pytest.mark.parametrize("name", sorted(commands()))
def test_no_metavar_names_an_implementation_type(name: str) -> None:
    out = cli(name, "--help", env={"COLUMNS": "200"})[1]
    for option in re.findall(r"^\s+(?:-\w, )?(--[\w-]+.*?)(?:\s{2,}|$)", out, flags=re.M):
        assert not re.search(r"INTEGER|FLOAT|TEXT|PATH|RANGE|BOOLEAN|<", option), (name, option)
    assert "x>=" not in out


# --------------------------------------------------------------------------
# Tables


def header(out: str) -> list[str]:
    """The column names of a table, from its header row (the first row between vertical rules)."""
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


TAG_COLUMNS = ["repository", "tag", "digest", "media_type", "platforms", "pushed_at", "image_bytes"]


def test_a_piped_table_takes_columns_and_keeps_every_column() -> None:
    code, out, err = cli("report", str(DEMO), "--by", "tag", "-q", env={"COLUMNS": "200"})
    assert code == 0 and err == ""
    assert header(out) == [*TAG_COLUMNS, "exclusive_bytes", "history"]
    assert max(len(line) for line in out.splitlines()) <= 200
    # Without COLUMNS: as wide as its cells, every column.
    code, out, err = cli("report", str(DEMO), "--by", "tag", "-q", env={"COLUMNS": None})
    assert code == 0 and err == "" and header(out) == [*TAG_COLUMNS, "exclusive_bytes", "history"]


def test_a_table_narrower_than_its_columns_says_which_it_left_out() -> None:
    code, out, err = cli("report", str(DEMO), "--by", "tag", "-q", env={"COLUMNS": "80"})
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80
    kept = header(out)
    left = [c for c in [*TAG_COLUMNS, "exclusive_bytes", "history"] if c not in kept]
    assert left and "history" in left
    said = re.fullmatch(
        r"storage-audit: the table leaves out (.+) to fit 80 columns; --wide \(-w\) keeps every column\n", err
    )
    assert said is not None and sorted(said.group(1).split(", ")) == sorted(left), err
    code, out, err = cli("report", str(DEMO), "--by", "tag", "-q", "--wide", env={"COLUMNS": "80"})
    assert code == 0 and err == "" and header(out) == [*TAG_COLUMNS, "exclusive_bytes", "history"]


def on_a_terminal(*args: str, columns: int) -> tuple[str, str]:
    """What a command writes to a terminal `columns` wide (a pseudo-terminal), and to stderr."""
    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(TOP), COLUMNS=str(columns), TERM="dumb")
    done = subprocess.run(
        [sys.executable, "-m", "storage_audit", *args], stdout=follower, stderr=subprocess.PIPE, env=env, check=False
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal's other end closed: all was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert done.returncode == 0, done.stderr
    return b"".join(chunks).decode().replace("\r\n", "\n"), done.stderr.decode()


@pytest.mark.slow
def test_on_a_terminal_a_table_fits_it_and_says_what_it_left_out() -> None:
    out, err = on_a_terminal("report", str(DEMO), "--by", "tag", "-q", columns=72)
    assert max(len(line) for line in out.splitlines()) <= 72
    assert "history" not in header(out) and "history" in err and "--wide (-w)" in err
    out, err = on_a_terminal("report", str(DEMO), "--by", "tag", "-q", "--wide", columns=72)
    assert header(out) == [*TAG_COLUMNS, "exclusive_bytes", "history"] and err == ""


@pytest.mark.slow
@pytest.mark.parametrize("columns", ["80", "60", None])
def test_diff_never_breaks_a_header(columns: str | None, tmp_path: Path) -> None:
    snapshot = tmp_path / "snap"
    assert cli("scan", str(DEMO), "-o", str(snapshot), "-q")[0] == 0
    for by in ("repository", "tag", "blob"):
        code, out, _ = cli("diff", str(snapshot), str(DEMO), "--by", by, "-q", env={"COLUMNS": columns})
        assert code == 0
        csv_columns = cli("diff", str(snapshot), str(DEMO), "--by", by, "-q", "-f", "csv")[1].splitlines()[0]
        assert set(header(out)) <= set(csv_columns.split(",")), (by, header(out))


# --------------------------------------------------------------------------
# Durations

UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(UNITS)), st.integers(0, 5000)), min_size=1, max_size=6))
def test_a_compound_duration_is_the_sum_of_its_parts(parts: list[tuple[str, int]]) -> None:
    text = "".join(f"{n}{unit}" for unit, n in parts)
    seconds = sum(n * UNITS[unit] for unit, n in parts)
    if seconds > 100_000 * 86400:
        with pytest.raises(UsageError, match="is longer than 100000d"):
            parse_duration(text, "--older-than")
    else:
        assert parse_duration(text, "--older-than") == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1d12h", 129600), ("1h30m", 5400), ("90m", 5400), ("2w", 1209600), ("0s", 0), ("1h30m15s", 5415)],
)
def test_durations_the_registry_writes_are_taken(text: str, seconds: int) -> None:
    assert parse_duration(text, "--min-age") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["1.5h", "90ms", "1h30", "h", "", "-1h", "1 h", "1H"])
def test_what_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"--min-age: {text!r} is not a duration such as 30d, 1d12h")):
        parse_duration(text, "--min-age")


def test_every_option_taking_a_duration_takes_a_compound_one(fixture_root) -> None:  # type: ignore[no-untyped-def]
    root = str(fixture_root("basic"))
    code, out, err = cli(
        "plan", root, "--older-than", "1d12h", "--uploads-older-than", "1w1d", "--min-age", "1h30m", "-q"
    )
    assert code == 0, err
    policy = json.loads(out)["policy"]
    assert (policy["older_than"], policy["uploads_older_than"], policy["min_age"]) == (129600, 691200, 5400)
    assert cli("check", root, "--upload-age", "6d23h59m", "-q")[0] in (0, 3)
    code, _, err = cli("check", root, "--upload-age", "1.5d")
    assert code == 2 and "not a duration" in err


# --------------------------------------------------------------------------
# Sizes


def test_sizes_are_in_one_style() -> None:
    assert [size(n) for n in (0, 1, 913, 1023)] == ["0 B", "1 B", "913 B", "1023 B"]
    assert [size(n) for n in (1024, 11674, 1.5 * 2**30, 3 * 2**40)] == ["1.0 KiB", "11.4 KiB", "1.5 GiB", "3.0 TiB"]


def test_no_table_or_message_says_bytes_in_words() -> None:
    code, out, err = cli("report", str(DEMO), "--by", "repository", env={"COLUMNS": None})
    assert code == 0 and "Bytes" not in out and " B " in out
    code, _, err = cli("scan", str(DEMO))
    assert code == 0 and "Byte" not in err and re.search(r"upload-bytes: \d+ B\n", err)


def test_bar_axes_tick_in_binary_units() -> None:
    from storage_audit.output.html import binary_ticks

    assert binary_ticks(933) == ([0, 200, 400, 600, 800, 1000], ["0 B", "200 B", "400 B", "600 B", "800 B", "1,000 B"])
    gib = 2**30
    assert binary_ticks(int(1.8 * gib)) == (
        [0, gib // 2, gib, 3 * gib // 2, 2 * gib],
        ["0 B", "0.5 GiB", "1 GiB", "1.5 GiB", "2 GiB"],
    )
    ticks, labels = binary_ticks(300 * 2**20)
    assert labels[1:] == ["50 MiB", "100 MiB", "150 MiB", "200 MiB", "250 MiB", "300 MiB"]
    assert ticks[-1] == 300 * 2**20
