"""Time `report --format html` on a synthetic tree: the command's run time, the page's size, and its load in chromium.

The tree is one bench_scan.py writes (`--size S` by default, under the same temp directory) or any --root.
The browser is headless chromium with the network blocked (tests/browser.py); its load time runs from the
navigation to the load event, when every chart has been drawn (plotly draws while the page's scripts run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from benchmarks.bench_scan import SIZES, default_root  # noqa: E402
from tests.browser import browser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="S", choices=sorted(SIZES), help="a bench_scan.py size (default S)")
    parser.add_argument("--root", type=Path, help="a registry root or snapshot instead of --size's tree")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the command and of the page load")
    parser.add_argument("--keep", type=Path, help="also copy the page here")
    args = parser.parse_args()
    root = args.root or default_root(SIZES[args.size], args.seed)
    if not root.exists():
        sys.exit(f"{root}: no tree; write it with: python benchmarks/bench_scan.py --size {args.size} --only scan")
    with tempfile.TemporaryDirectory(prefix="bench-html-") as scratch:
        page = Path(scratch) / "report.html"
        command = [
            sys.executable,
            "-m",
            "storage_audit",
            "report",
            str(root),
            "--format",
            "html",
            "-o",
            str(page),
            "-q",
        ]
        runs = []
        for _ in range(args.repeat):
            start = time.monotonic()
            subprocess.run(command, check=True)
            runs.append(time.monotonic() - start)
        loads = []
        with browser() as tab:
            for _ in range(args.repeat):
                loaded = tab.open(page)
                if loaded.requests != [loaded.url]:
                    sys.exit(f"the page made requests: {loaded.requests}")
                loads.append(loaded.seconds)
            charts = tab.evaluate("document.querySelectorAll('.js-plotly-plot .main-svg').length")
        size = page.stat().st_size
        if args.keep:
            args.keep.write_bytes(page.read_bytes())
    print(f"| tree | command (median of {args.repeat}) | page size | browser load (median of {args.repeat}) |")
    print("| ---- | ---: | ---: | ---: |")
    print(
        f"| `{root}` | {statistics.median(runs):.2f} s | {size / 2**20:.2f} MiB ({size:,} bytes) "
        f"| {statistics.median(loads):.2f} s |"
    )
    print(
        f"\ncommand runs: {', '.join(f'{r:.2f}' for r in runs)} s; loads: {', '.join(f'{x:.2f}' for x in loads)} s; "
        f"plot surfaces drawn: {charts}"
    )


if __name__ == "__main__":
    main()
