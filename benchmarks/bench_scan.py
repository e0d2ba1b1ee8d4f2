"""Time storage-audit side by side with `find` and the reference garbage collector on a synthetic registry."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

# Tokens replaced in every argv before it runs.
ROOT = "{root}"
CONFIG = "{config}"
SNAPSHOT = "{snapshot}"
STORAGE_AUDIT = "storage-audit"

GC_SUMMARY = r"blobs marked, .* eligible for deletion"


@dataclass(frozen=True, slots=True)
class Command:
    """One program to time; its first argv word is resolved on PATH (or is `storage-audit`)."""

    label: str
    argv: tuple[str, ...]
    # Runs once, untimed, before the timed runs: e.g. writing the snapshot a report reads.
    setup: tuple[str, ...] = ()
    # A stdout line worth showing in the table; when set, stdout goes to a temp file, not /dev/null.
    summary: str | None = None


GC_LABEL = "registry gc --dry-run -m"
FIND_LABEL = "find -type f"

COMMANDS: list[Command] = [
    Command("storage-audit scan", (STORAGE_AUDIT, "scan", ROOT, "--quiet")),
    Command(FIND_LABEL, ("find", ROOT, "-type", "f")),
    Command(
        "registry gc --dry-run",
        ("docker-registry", "garbage-collect", "--dry-run", CONFIG),
        summary=GC_SUMMARY,
    ),
    Command(
        GC_LABEL,
        ("docker-registry", "garbage-collect", "--dry-run", "--delete-untagged", CONFIG),
        summary=GC_SUMMARY,
    ),
]

# Commands of the CLI that are still being written; `--extra` adds them.
EXTRA_COMMANDS: list[Command] = [
    Command("storage-audit untagged", (STORAGE_AUDIT, "untagged", ROOT, "--quiet")),
    Command("storage-audit orphans -m", (STORAGE_AUDIT, "orphans", ROOT, "--delete-untagged", "--quiet")),
    Command("storage-audit report --by repo", (STORAGE_AUDIT, "report", ROOT, "--by", "repository", "--quiet")),
    Command(
        "storage-audit report (snapshot)",
        (STORAGE_AUDIT, "report", SNAPSHOT, "--by", "repository", "--quiet"),
        setup=(STORAGE_AUDIT, "scan", ROOT, "-o", SNAPSHOT, "--quiet"),
    ),
]

REGISTRY_CONFIG = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
"""


@dataclass(frozen=True, slots=True)
class Run:
    """What one child process cost, from wait4."""

    wall: float
    cpu: float
    maxrss_kib: int
    status: int
    stderr_tail: str
    summary: str | None


@dataclass(slots=True)
class Result:
    command: Command
    argv: list[str] | None
    runs: list[Run] = field(default_factory=list)
    failure: str | None = None

    @property
    def wall(self) -> float | None:
        return statistics.median(r.wall for r in self.runs) if self.runs and not self.failure else None


def _storage_audit_argv() -> list[str] | None:
    # The console script next to this interpreter comes first: a pyenv or asdf shim on
    # PATH would add a shell and a version lookup to every measured start-up.
    beside = Path(sys.executable).with_name(STORAGE_AUDIT)
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(STORAGE_AUDIT)
    if found:
        return [found]
    if (REPO_ROOT / "storage_audit" / "__main__.py").is_file():
        return [sys.executable, "-m", "storage_audit"]
    return None


def resolve(argv: tuple[str, ...], tokens: dict[str, str]) -> list[str] | None:
    """The argv to execute, or None when its program is not installed."""
    if not argv:
        return []
    if argv[0] == STORAGE_AUDIT:
        head = _storage_audit_argv()
    else:
        found = shutil.which(argv[0])
        head = [found] if found else None
    if head is None:
        return None
    rest = list(argv[1:])
    for i, word in enumerate(rest):
        for token, value in tokens.items():
            word = word.replace(token, value)
        rest[i] = word
    return head + rest


def _tail(fd: int, limit: int = 2000) -> str:
    size = os.lseek(fd, 0, os.SEEK_END)
    os.lseek(fd, max(0, size - limit), os.SEEK_SET)
    return os.read(fd, limit).decode(errors="replace").strip()


def _find_line(fd: int, pattern: str) -> str | None:
    os.lseek(fd, 0, os.SEEK_SET)
    regex = re.compile(pattern)
    # Line by line, because a collector dry run prints one line per blob.
    with os.fdopen(os.dup(fd), "r", errors="replace") as f:
        for line in f:
            if regex.search(line):
                return line.strip()
    return None


def measure(argv: list[str], summary: str | None, timeout: float) -> Run:
    """Run argv once with stdin and stdout detached and report its wall time and rusage."""
    env = dict(os.environ)
    # `python -m storage_audit` from a checkout that is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        if summary:
            actions.append((os.POSIX_SPAWN_DUP2, out.fileno(), 1))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0))
        start = time.perf_counter()
        # A session of its own, so a timeout can kill the whole process group.
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        timer = threading.Timer(timeout, _kill_group, (pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        return Run(
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            maxrss_kib=usage.ru_maxrss,
            status=code,
            stderr_tail=_tail(err.fileno()) if code else "",
            summary=_find_line(out.fileno(), summary) if summary else None,
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def ensure_tree(args: argparse.Namespace) -> Path:
    """The root holding docker/registry/v2, generated with synth.py when absent."""
    root: Path = args.root or Path(tempfile.gettempdir()) / "storage-audit-bench" / (
        f"r{args.repositories}-m{args.manifests}-b{args.blobs}-s{args.seed}"
    )
    if (root / "docker" / "registry" / "v2").is_dir():
        print(f"reusing {root}", file=sys.stderr)
        return root
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / "synth.py"),
        str(root),
        f"--repositories={args.repositories}",
        f"--manifests={args.manifests}",
        f"--blobs={args.blobs}",
        f"--seed={args.seed}",
    ]
    # In a child process, so the generator's bookkeeping never inflates this harness.
    run = measure(argv, r"^wrote ", timeout=3600)
    if run.status:
        sys.exit(f"synth.py failed ({run.status}): {run.stderr_tail}")
    print(f"generated in {run.wall:.1f}s: {run.summary}", file=sys.stderr)
    return root


def warm_up(root: Path) -> None:
    # Every command then starts from the same warm page cache: dentries, inodes and the
    # small files (links, manifests, configs); sparse layer data costs nothing to read.
    argv = resolve(("find", ROOT, "-type", "f", "-size", "-1024k", "-exec", "cat", "{}", "+"), {ROOT: str(root)})
    if argv:
        measure(argv, None, timeout=3600)


def run_all(commands: list[Command], tokens: dict[str, str], repeat: int, timeout: float) -> list[Result]:
    results = [Result(c, resolve(c.argv, tokens)) for c in commands]
    for result in results:
        setup = resolve(result.command.setup, tokens)
        if result.argv is None or setup is None:
            result.argv = None
        elif setup:
            run = measure(setup, None, timeout)
            if run.status:
                result.failure = f"setup exited {run.status}: {run.stderr_tail}"
    for rep in range(repeat):
        # Alternating order spreads cache and thermal drift over every command alike.
        for result in results if rep % 2 == 0 else reversed(results):
            if result.argv is None or result.failure:
                continue
            run = measure(result.argv, result.command.summary, timeout)
            result.runs.append(run)
            print(
                f"  [{rep + 1}/{repeat}] {result.command.label}: {run.wall:.2f}s"
                + (f" exit {run.status}" if run.status else ""),
                file=sys.stderr,
            )
            if run.status:
                result.failure = f"exited {run.status}: {run.stderr_tail}"
    return results


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def render(results: list[Result]) -> str:
    by_label = {r.command.label: r for r in results}
    gc = by_label.get(GC_LABEL)
    find = by_label.get(FIND_LABEL)
    header = ("command", "wall s", "cpu s", "peak RSS MB", "x gc -m", "x find", "note")
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.argv is None:
            rows.append((r.command.label, "n/a", "n/a", "n/a", "-", "-", "not installed"))
            continue
        if r.failure or not r.runs:
            rows.append((r.command.label, "FAILED", "-", "-", "-", "-", ""))
            continue
        wall = statistics.median(run.wall for run in r.runs)
        cpu = statistics.median(run.cpu for run in r.runs)
        rss = max(run.maxrss_kib for run in r.runs) / 1024
        note = r.runs[-1].summary or ""
        rows.append(
            (
                r.command.label,
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{rss:.0f}",
                _ratio(wall, gc.wall if gc else None),
                _ratio(wall, find.wall if find else None),
                note,
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    for r in results:
        if r.failure:
            lines.append(f"\n{r.command.label} ({' '.join(r.argv or [])}) {r.failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, help="registry root (reused when it holds a tree)")
    parser.add_argument("--repositories", type=int, default=500)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    parser.add_argument("--extra", action="store_true", help="also time the commands in EXTRA_COMMANDS")
    parser.add_argument("--only", help="comma-separated substrings; time only commands whose label has one")
    parser.add_argument("--no-warmup", action="store_true", help="skip reading the small files once first")
    args = parser.parse_args(argv)

    root = ensure_tree(args)
    commands = COMMANDS + (EXTRA_COMMANDS if args.extra else [])
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        commands = [c for c in commands if any(w in c.label for w in wanted)]
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as scratch:
        config = Path(scratch, "registry.yml")
        config.write_text(REGISTRY_CONFIG.format(root=root))
        tokens = {ROOT: str(root), CONFIG: str(config), SNAPSHOT: str(Path(scratch, "snapshot"))}
        if not args.no_warmup:
            warm_up(root)
        results = run_all(commands, tokens, max(1, args.repeat), args.timeout)
    print(f"{root}: median of {args.repeat} runs, peak RSS is the largest run's")
    print(render(results))
    return 1 if any(r.failure for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
