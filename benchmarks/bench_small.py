"""`orphans --delete-untagged` and `report --by repository` against `scan` and the collector on a small tree.

The tree is bench_scan.py's S (500 repositories, 10,000 manifests, 60,000 blobs), written once by synth.py under
the temp directory. `scan`, `orphans --delete-untagged` and `report --by repository` (all `--quiet`, the table
printed to /dev/null), and the reference collector's `garbage-collect --dry-run --delete-untagged`, run in
alternating order after a warm-up that reads the small files once and runs each command once (their bytecode
then cached, as an installed package has it); with `--baseline DIR` the same three commands of the checkout at
DIR run among them. One Markdown table: median wall and CPU seconds (the command and the processes it waited
for), each command's wall and CPU time over its own build's `scan`, its wall time over the collector's, and
whether the targets hold (at most 1.3x `scan` and at most 0.25x the collector). The load average is printed
before and after: the machine's other work lengthens every wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import (
    GC_SUMMARY,
    REGISTRY_CONFIG,
    SIZES,
    Run,
    Tree,
    baseline_argv,
    default_root,
    ensure_tree,
    markdown_table,
    measure,
    resolve,
    warm_up,
)

SCAN = "scan"
GC = "gc -m"
COMMANDS = {
    SCAN: ("scan", "{root}", "--quiet"),
    "orphans -m": ("orphans", "{root}", "--delete-untagged", "--quiet"),
    "report": ("report", "{root}", "--by", "repository", "--quiet"),
}
COLLECTOR = ("docker-registry", "garbage-collect", "--dry-run", "--delete-untagged", "{config}")
TARGET_SCAN = 1.3
TARGET_GC = 0.25


@dataclass
class Timed:
    """The runs of one command of one build."""

    label: str
    build: str
    argv: list[str]
    summary: str | None = None
    repeat: int = 1
    runs: list[Run] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)


def _words(words: tuple[str, ...], tokens: dict[str, str]) -> list[str]:
    return [w.format(**tokens) for w in words]


def plan(args: argparse.Namespace, tokens: dict[str, str]) -> list[Timed]:
    """Every command to time, this checkout's first, the collector last."""
    builds = [("this", [sys.executable, "-m", "storage_audit"])]
    if args.baseline:
        builds.append(("baseline", baseline_argv(args.baseline)))
    timed = [
        Timed(label, build, [*head, *_words(words, tokens)], repeat=args.repeat)
        for build, head in builds
        for label, words in COMMANDS.items()
    ]
    if args.gc_repeat:
        collector = resolve(COLLECTOR, {"{config}": tokens["config"]})
        if collector is None:
            print("docker-registry is not installed: the collector is left out", file=sys.stderr)
        else:
            timed.append(Timed(GC, "docker-registry", collector, GC_SUMMARY, args.gc_repeat))
    return timed


def compiled_once(pycache: Path) -> None:
    """Bytecode cached under `pycache` from the first run on, as an installed package has it.

    Where PYTHONDONTWRITEBYTECODE is set and a checkout has no `__pycache__`, every run would compile the
    package's modules again (about a tenth of a second of `orphans`); a prefix keeps the checkouts clean.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(pycache)


def run_all(timed: list[Timed], timeout: float) -> None:
    """Each command its number of runs, in alternating order, so that drift in the machine's load spreads evenly.

    First each storage-audit command once, untimed: it compiles what it imports.
    """
    for t in timed:
        if t.label != GC:
            measure(t.argv, None, timeout)
    for rep in range(max(t.repeat for t in timed)):
        for t in timed if rep % 2 == 0 else reversed(timed):
            if rep >= t.repeat:
                continue
            run = measure(t.argv, t.summary, timeout)
            if run.status or run.timed_out:
                sys.exit(f"{t.build} {t.label} failed ({run.status}): {run.stderr_tail}")
            t.runs.append(run)
            print(f"  [{rep + 1}/{t.repeat}] {t.build} {t.label}: {run.wall:.2f}s", file=sys.stderr)


def render(timed: list[Timed]) -> str:
    scans = {t.build: t for t in timed if t.label == SCAN}
    gc = next((t.wall for t in timed if t.label == GC), None)
    header = ("command", "build", "runs", "wall s", "cpu s", "x scan", "x scan cpu", "x gc -m", "targets")
    rows = []
    for t in timed:
        scan = scans.get(t.build)
        x_scan = t.wall / scan.wall if scan else None
        x_cpu = t.cpu / scan.cpu if scan else None
        x_gc = t.wall / gc if gc else None
        held = ""
        if t.label not in (SCAN, GC) and x_scan is not None:
            ok = x_scan <= TARGET_SCAN and (x_gc is None or x_gc <= TARGET_GC)
            held = "held" if ok else "missed"
        rows.append(
            (
                t.label,
                t.build,
                str(len(t.runs)),
                f"{t.wall:.2f}",
                f"{t.cpu:.2f}",
                "-" if x_scan is None else f"{x_scan:.2f}",
                "-" if x_cpu is None else f"{x_cpu:.2f}",
                "-" if x_gc is None else f"{x_gc:.3f}",
                held,
            )
        )
    return markdown_table(header, rows, lefts=(0, 1, 8))


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="registry root (default: bench_scan.py's S tree, made when absent)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each storage-audit command (default 7)")
    parser.add_argument("--gc-repeat", type=int, default=1, help="timed runs of the collector (default 1; 0: none)")
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with (e.g. main)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as failed")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.gc_repeat < 0:
        parser.error("--repeat must be at least 1 and --gc-repeat at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = SIZES["S"]
    tree = Tree("S", counts, args.seed, args.root or default_root(counts, args.seed))
    ensure_tree(tree)
    with tempfile.TemporaryDirectory(prefix="bench-small-") as scratch:
        config = Path(scratch, "registry.yml")
        config.write_text(REGISTRY_CONFIG.format(root=tree.root))
        timed = plan(args, {"root": str(tree.root), "config": str(config)})
        compiled_once(Path(scratch, "pycache"))
        warm_up(tree.root, args.timeout)
        before = _load()
        run_all(timed, args.timeout)
        after = _load()
    print(f"`{tree.root}`; {os.cpu_count()} CPUs; load average before {before}, after {after}.\n")
    print(render(timed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
