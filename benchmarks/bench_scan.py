"""Time storage-audit side by side with `find` and the reference garbage collector on synthetic registries.

Each size is a tree written once by synth.py under the temp directory and reused afterwards. Every command
runs `--repeat` times (the collector `--gc-repeat` times) in alternating order after a warm-up that reads
the small files once. Tables are Markdown: median wall time, median CPU (user + system of the process and
the children it waited for), peak RSS (the largest run's; summed over all of a run's processes, sampled
every 0.1 s, or the largest single process's peak if that is higher), and the ratios to the scan, the collector with
`--delete-untagged` and the `find | wc -l` pipeline. With several sizes, a scaling table follows.
"""

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
BENCH_DIR = Path(tempfile.gettempdir()) / "storage-audit-bench"

# Tokens replaced in every argv before it runs.
ROOT = "{root}"
CONFIG = "{config}"
SNAPSHOT = "{snapshot}"
STORAGE_AUDIT = "storage-audit"
COLLECTOR = "docker-registry"

GC_SUMMARY = r"blobs marked, .* eligible for deletion"
BLOBS_PER_UNIT = 100_000


@dataclass(frozen=True, slots=True)
class Command:
    """One program to time; its first argv word is resolved on PATH (or is `storage-audit`)."""

    label: str
    argv: tuple[str, ...]
    # Runs once, untimed, before the timed runs: e.g. writing the snapshot a report reads.
    setup: tuple[str, ...] = ()
    # A stdout line worth showing in the table; when set, stdout goes to a temp file, not /dev/null.
    summary: str | None = None
    # How the summary line reads in the table's note column.
    note: str = "{}"

    @property
    def is_storage_audit(self) -> bool:
        return self.argv[0] == STORAGE_AUDIT

    @property
    def is_collector(self) -> bool:
        return self.argv[0] == COLLECTOR


SCAN_LABEL = "scan"
GC_LABEL = "gc -m"
FIND_LABEL = "find | wc -l"

COMMANDS: list[Command] = [
    Command(SCAN_LABEL, (STORAGE_AUDIT, "scan", ROOT, "--quiet")),
    Command("report", (STORAGE_AUDIT, "report", ROOT, "--by", "repository", "--quiet")),
    Command("orphans -m", (STORAGE_AUDIT, "orphans", ROOT, "--delete-untagged", "--quiet")),
    Command(
        "report snapshot",
        (STORAGE_AUDIT, "report", SNAPSHOT, "--by", "repository", "--quiet"),
        setup=(STORAGE_AUDIT, "scan", ROOT, "-o", SNAPSHOT, "--quiet"),
    ),
    # Through a shell, so the timed process is the whole pipeline and wait4 counts both sides of it.
    Command(FIND_LABEL, ("sh", "-c", 'find "$1" -type f | wc -l', "sh", ROOT), summary=r"^\s*\d+\s*$", note="{} files"),
    Command(
        GC_LABEL,
        (COLLECTOR, "garbage-collect", "--dry-run", "--delete-untagged", CONFIG),
        summary=GC_SUMMARY,
    ),
]

# Timed only with `--extra`.
EXTRA_COMMANDS: list[Command] = [
    Command("untagged", (STORAGE_AUDIT, "untagged", ROOT, "--quiet")),
    Command("gc", (COLLECTOR, "garbage-collect", "--dry-run", CONFIG), summary=GC_SUMMARY),
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
class Counts:
    """What synth.py is asked to write."""

    repositories: int
    manifests: int
    blobs: int


SIZES: dict[str, Counts] = {
    "S": Counts(500, 10_000, 60_000),
    "M": Counts(2_000, 40_000, 250_000),
    "L": Counts(5_000, 100_000, 600_000),
}
CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Tree:
    """One registry root to benchmark, with the counts it is (or would be) generated with."""

    label: str
    counts: Counts
    seed: int
    root: Path

    @property
    def present(self) -> bool:
        return (self.root / "docker" / "registry" / "v2").is_dir()


def default_root(counts: Counts, seed: int) -> Path:
    return BENCH_DIR / f"r{counts.repositories}-m{counts.manifests}-b{counts.blobs}-s{seed}"


@dataclass(frozen=True, slots=True)
class Run:
    """What one child process cost, from wait4."""

    wall: float
    cpu: float
    maxrss_kib: int
    status: int
    stderr_tail: str
    summary: str | None
    timed_out: bool = False


@dataclass(slots=True)
class Result:
    """The runs of one command on one tree."""

    command: Command
    argv: list[str] | None
    repeat: int
    runs: list[Run] = field(default_factory=list)
    failure: str | None = None
    # Set when a run was killed at its time limit: the command takes at least this long.
    at_least: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.failure is None

    @property
    def wall(self) -> float | None:
        return statistics.median(r.wall for r in self.runs) if self.ok else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(r.cpu for r in self.runs) if self.ok else None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(r.maxrss_kib for r in self.runs) / 1024 if self.ok else None


@dataclass(slots=True)
class TreeResults:
    tree: Tree
    results: list[Result]

    def get(self, label: str) -> Result | None:
        return next((r for r in self.results if r.command.label == label), None)

    def wall(self, label: str) -> float | None:
        result = self.get(label)
        return result.wall if result else None


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


def baseline_argv(checkout: Path) -> list[str]:
    """`python -m storage_audit` importing the package from `checkout` before any other.

    Not `-m` with PYTHONPATH: `-m` puts the working directory first, whose package would win.
    """
    source = checkout.resolve()
    if not (source / "storage_audit" / "__main__.py").is_file():
        raise SystemExit(f"--baseline: {source} holds no storage_audit package")
    code = f"import sys; sys.path.insert(0, {str(source)!r}); from storage_audit.__main__ import main; main()"
    return [sys.executable, "-c", code]


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
        killed = threading.Event()
        timer = threading.Timer(timeout, _kill_group, (pid, killed))
        timer.start()
        sampler = SessionMemory(pid)
        sampler.start()
        try:
            # The child's usage includes the descendants it waited for (a pipeline's, a worker pool's).
            _, status, usage = os.wait4(pid, 0)
        finally:
            timer.cancel()
            sampler.stop()
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        return Run(
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            # Worker processes hold memory at the same time: their sum counts, not only the largest.
            maxrss_kib=max(usage.ru_maxrss, sampler.peak_kib),
            status=code,
            stderr_tail=_tail(err.fileno()) if code else "",
            summary=_find_line(out.fileno(), summary) if summary else None,
            timed_out=killed.is_set(),
        )


class SessionMemory(threading.Thread):
    """Samples the summed resident memory of every process in a session, every `interval` seconds."""

    def __init__(self, sid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.sid = sid
        self.interval = interval
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        while not self._done.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self._resident_pages() * page_kib)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def _resident_pages(self) -> int:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    # Fields after the parenthesized command: state ppid pgrp session ...
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[3]) != self.sid:
                    continue
                with open(f"/proc/{entry.name}/statm", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
        return total


def _kill_group(pid: int, killed: threading.Event) -> None:
    killed.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def ensure_tree(tree: Tree) -> str | None:
    """Generate the tree with synth.py when absent; synth.py's summary line when it did."""
    if tree.present:
        print(f"reusing {tree.root}", file=sys.stderr)
        return None
    tree.root.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / "synth.py"),
        str(tree.root),
        f"--repositories={tree.counts.repositories}",
        f"--manifests={tree.counts.manifests}",
        f"--blobs={tree.counts.blobs}",
        f"--seed={tree.seed}",
    ]
    print(f"generating {tree.root}", file=sys.stderr)
    # In a child process, so the generator's bookkeeping never inflates this harness.
    run = measure(argv, r"^wrote ", timeout=4 * 3600)
    if run.status:
        sys.exit(f"synth.py failed ({run.status}): {run.stderr_tail}")
    print(f"generated in {run.wall:.1f}s", file=sys.stderr)
    return run.summary


def warm_up(root: Path, timeout: float) -> None:
    # Every command then starts from the same warm page cache: dentries, inodes and the
    # small files (links, manifests, configs); sparse layer data costs nothing to read.
    argv = resolve(("find", ROOT, "-type", "f", "-size", "-1024k", "-exec", "cat", "{}", "+"), {ROOT: str(root)})
    if argv:
        measure(argv, None, timeout)


def _run_setups(results: list[Result], tokens: dict[str, str], timeout: float) -> None:
    for result in results:
        setup = resolve(result.command.setup, tokens)
        if result.argv is None or setup is None:
            result.argv = None
        elif setup:
            run = measure(setup, None, timeout)
            if run.status:
                result.failure = f"setup exited {run.status}: {run.stderr_tail}"


def run_all(
    commands: list[Command], tokens: dict[str, str], repeat: int, gc_repeat: int, timeout: float, gc_timeout: float
) -> list[Result]:
    results = [Result(c, resolve(c.argv, tokens), gc_repeat if c.is_collector else repeat) for c in commands]
    _run_setups(results, tokens, timeout)
    for rep in range(max((r.repeat for r in results), default=0)):
        # Alternating order spreads cache and thermal drift over every command alike.
        for result in results if rep % 2 == 0 else reversed(results):
            if result.argv is None or result.failure or result.at_least or rep >= result.repeat:
                continue
            limit = gc_timeout if result.command.is_collector else timeout
            run = measure(result.argv, result.command.summary, limit)
            if run.timed_out:
                result.at_least = limit
                print(
                    f"  [{rep + 1}/{result.repeat}] {result.command.label}: killed after {limit:.0f}s", file=sys.stderr
                )
                continue
            result.runs.append(run)
            print(
                f"  [{rep + 1}/{result.repeat}] {result.command.label}: {run.wall:.2f}s"
                + (f" exit {run.status}" if run.status else ""),
                file=sys.stderr,
            )
            if run.status:
                result.failure = f"exited {run.status}: {run.stderr_tail}"
    return results


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], lefts: Collection[int] = (0,)) -> str:
    """A pipe table, padded to line up; the columns in `lefts` are left-aligned, the others right-aligned."""
    table = [[_cell(c) for c in row] for row in (header, *rows)]
    widths = [max(3, *(len(row[i]) for row in table)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i in lefts else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i in lefts else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(table[0]), line(rule), *(line(row) for row in table[1:])])


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def _below(value: float | None, bound: float) -> str:
    """The ratio to a command that was killed at `bound` seconds: an upper bound."""
    return "-" if value is None else f"< {value / bound:.3f}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_tree(done: TreeResults) -> str:
    """The per-tree table, followed by what failed."""
    scan, gc, find = (done.wall(label) for label in (SCAN_LABEL, GC_LABEL, FIND_LABEL))
    gc_result = done.get(GC_LABEL)
    gc_at_least = gc_result.at_least if gc_result else None
    header = ("command", "runs", "wall s", "cpu s", "peak RSS MB", "x scan", "x gc -m", "x find", "note")
    rows: list[tuple[str, ...]] = []
    for r in done.results:
        if r.argv is None:
            rows.append((r.command.label, "0", "n/a", "n/a", "n/a", "-", "-", "-", "not installed"))
            continue
        if r.at_least is not None:
            rows.append(
                (
                    r.command.label,
                    "0",
                    f"> {r.at_least:.0f}",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"killed after {r.at_least:.0f} s",
                )
            )
            continue
        if not r.ok:
            rows.append((r.command.label, str(len(r.runs)), "FAILED", "-", "-", "-", "-", "-", ""))
            continue
        summary = r.runs[-1].summary
        rows.append(
            (
                r.command.label,
                str(len(r.runs)),
                _number(r.wall, 2),
                _number(r.cpu, 2),
                _number(r.peak_rss_mib, 0),
                _ratio(r.wall, scan),
                _ratio(r.wall, gc) if gc_at_least is None else _below(r.wall, gc_at_least),
                _ratio(r.wall, find),
                r.command.note.format(summary) if summary else "",
            )
        )
    parts = [markdown_table(header, rows, lefts=(0, len(header) - 1))]
    for r in done.results:
        if r.failure:
            parts.append(f"`{r.command.label}` failed: `{' '.join(r.argv or [])}`\n\n```\n{r.failure}\n```")
    return "\n\n".join(parts)


def render_scaling(done: list[TreeResults]) -> str:
    """Wall seconds per 100,000 blobs and peak RSS per tree; the largest tree's time per blob over the smallest's."""
    ordered = sorted(done, key=lambda d: d.tree.counts.blobs)
    small, large = ordered[0], ordered[-1]
    # The storage-audit commands, then the references they are compared with.
    labels = [r.command.label for r in small.results if r.command.is_storage_audit]
    labels += [label for label in (FIND_LABEL, GC_LABEL) if small.get(label)]
    header = [
        "command",
        *(f"{d.tree.label} s/100k blobs" for d in ordered),
        f"time per blob {small.tree.label}->{large.tree.label}",
        *(f"{d.tree.label} peak RSS MB" for d in ordered),
    ]
    rows: list[list[str]] = []
    for label in labels:
        per_unit = [_per_unit(d, label) for d in ordered]
        rss = [_peak_rss(d, label) for d in ordered]
        rows.append([label, *(_number(v, 3) for v in per_unit), _ratio(per_unit[-1], per_unit[0]), *rss])
    return markdown_table(header, rows)


def _per_unit(done: TreeResults, label: str) -> float | None:
    wall = done.wall(label)
    return None if wall is None else wall / (done.tree.counts.blobs / BLOBS_PER_UNIT)


def _peak_rss(done: TreeResults, label: str) -> str:
    result = done.get(label)
    return _number(result.peak_rss_mib if result else None, 0)


def tree_heading(tree: Tree, generated: str | None) -> str:
    heading = f"### {tree.label}: `{tree.root}`"
    return f"{heading}\n\n{generated}" if generated else heading


def bench_tree(tree: Tree, commands: list[Command], args: argparse.Namespace) -> TreeResults:
    """Generate or reuse the tree, warm the cache, and time every command on it."""
    print(f"== {tree.label}: {tree.root}", file=sys.stderr)
    generated = ensure_tree(tree)
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as scratch:
        config = Path(scratch, "registry.yml")
        config.write_text(REGISTRY_CONFIG.format(root=tree.root))
        tokens = {ROOT: str(tree.root), CONFIG: str(config), SNAPSHOT: str(Path(scratch, "snapshot"))}
        if not args.no_warmup:
            warm_up(tree.root, args.timeout)
        results = run_all(commands, tokens, args.repeat, args.gc_repeat, args.timeout, args.gc_timeout or args.timeout)
    done = TreeResults(tree, results)
    print(f"{tree_heading(tree, generated)}\n\n{render_tree(done)}\n", flush=True)
    return done


def list_trees(trees: list[Tree]) -> str:
    header = ("size", "repositories", "manifests", "blobs", "seed", "root", "present")
    rows = [
        (
            t.label,
            f"{t.counts.repositories:,}",
            f"{t.counts.manifests:,}",
            f"{t.counts.blobs:,}",
            str(t.seed),
            f"`{t.root}`",
            "yes" if t.present else "no",
        )
        for t in trees
    ]
    return markdown_table(header, rows, lefts=(0, 5, 6))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _size_labels(text: str) -> list[str]:
    wanted = {w.strip().upper() for w in text.split(",") if w.strip()}
    unknown = wanted - SIZES.keys()
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SIZES)}, not {text!r}")
    return [label for label in SIZES if label in wanted]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        type=_size_labels,
        help=f"comma-separated sizes among {','.join(SIZES)}, run smallest first (default S)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the sizes, roots and whether they exist; run nothing"
    )
    custom = parser.add_argument_group("custom tree", "any of these times one tree instead of --size")
    custom.add_argument("--root", type=Path, help="registry root (reused when it holds a tree)")
    custom.add_argument("--repositories", type=int, help=f"default {SIZES['S'].repositories}")
    custom.add_argument("--manifests", type=int, help=f"default {SIZES['S'].manifests}")
    custom.add_argument("--blobs", type=int, help=f"default {SIZES['S'].blobs}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=_positive, default=3, help="timed runs per command (default 3)")
    parser.add_argument("--gc-repeat", type=_positive, help="timed runs of the collector (default: --repeat)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    parser.add_argument(
        "--gc-timeout",
        type=float,
        help="seconds before a collector run is killed (default: --timeout); the table then shows a lower bound",
    )
    parser.add_argument(
        "--extra", action="store_true", help="also time `untagged` and the collector without --delete-untagged"
    )
    parser.add_argument("--only", help="comma-separated substrings; time only commands whose label has one")
    parser.add_argument("--no-warmup", action="store_true", help="skip reading the small files once first")
    args = parser.parse_args(argv)
    args.custom = args.root is not None or any(v is not None for v in (args.repositories, args.manifests, args.blobs))
    if args.custom and args.size:
        parser.error("--size cannot be combined with --root, --repositories, --manifests or --blobs")
    if args.gc_repeat is None:
        args.gc_repeat = args.repeat
    return args


def trees_from_args(args: argparse.Namespace) -> list[Tree]:
    if not args.custom:
        return [
            Tree(label, SIZES[label], args.seed, default_root(SIZES[label], args.seed)) for label in args.size or ["S"]
        ]
    base = SIZES["S"]
    counts = Counts(
        args.repositories if args.repositories is not None else base.repositories,
        args.manifests if args.manifests is not None else base.manifests,
        args.blobs if args.blobs is not None else base.blobs,
    )
    return [Tree(CUSTOM, counts, args.seed, args.root or default_root(counts, args.seed))]


def select_commands(extra: bool, only: str | None) -> list[Command]:
    commands = COMMANDS + (EXTRA_COMMANDS if extra else [])
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        commands = [c for c in commands if any(w in c.label for w in wanted)]
    return commands


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = trees_from_args(args)
    if args.list:
        print(list_trees(trees))
        return 0
    commands = select_commands(args.extra, args.only)
    print(
        f"Median wall and CPU (user + system, children included) over `runs` runs; "
        f"peak RSS is the largest run's, all its processes summed. {len(commands)} commands, --repeat {args.repeat}, "
        f"--gc-repeat {args.gc_repeat}.\n",
        flush=True,
    )
    done = [bench_tree(tree, commands, args) for tree in trees]
    if len({d.tree.counts.blobs for d in done}) > 1:
        print(f"### Scaling\n\n{render_scaling(done)}", flush=True)
    return 1 if any(r.failure for d in done for r in d.results) else 0


if __name__ == "__main__":
    sys.exit(main())
