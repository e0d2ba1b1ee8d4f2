"""Make docs/report.png: the HTML report of a realistic synthetic registry, as chromium draws it.

The tree is synth.py's (hundreds of repositories, multi-arch images, signatures, untagged manifests, orphan
blobs, uploads), its files dated over two years before a pinned time, which is also the report's now
(`STORAGE_AUDIT_NOW`): the same arguments give the same page, whatever day it is made.

    python benchmarks/screenshot.py                  # docs/report.png
    python benchmarks/screenshot.py --html-only page.html --repositories 30 --manifests 200 --blobs 800
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOP))

from benchmarks.synth import generate  # noqa: E402

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
"""The report's now, and the end of the two years the tree's files are dated over."""
YEARS = 2
MARK = ".built-by-screenshot"
WIDTH = 1200
"""The page's width in the screenshot: that of a laptop's browser window."""


def _age(path: str, seed: int) -> timedelta:
    """How long before NOW `path` was written: most pushes recent, a long tail two years back."""
    rng = random.Random(hashlib.sha256(f"{seed}:{path}".encode()).digest())
    days = min(YEARS * 365.0, rng.expovariate(1 / 120))
    return timedelta(days=days)


def date_tree(v2: Path, seed: int) -> None:
    """Date every file of the tree before NOW, and every upload's startedat as the registry writes it."""
    for directory, _, files in os.walk(v2):
        for name in files:
            path = os.path.join(directory, name)
            written = NOW - _age(os.path.relpath(path, v2), seed)
            if name == "startedat":
                with open(path, "w", encoding="ascii") as fh:
                    fh.write(written.strftime("%Y-%m-%dT%H:%M:%SZ"))
            stamp = written.timestamp()
            os.utime(path, (stamp, stamp))


def build_tree(root: Path, repositories: int, manifests: int, blobs: int, seed: int) -> Path:
    """A synthetic registry under `root` (which must not exist), dated before NOW; returns `root`."""
    generate(root, repositories, manifests, blobs, seed)
    date_tree(root / "docker" / "registry" / "v2", seed)
    return root


def write_page(root: Path, page: Path) -> None:
    """`storage-audit report ROOT --format html -o PAGE`, as of NOW."""
    env = dict(os.environ, STORAGE_AUDIT_NOW=NOW.isoformat().replace("+00:00", "Z"), PYTHONPATH=str(TOP))
    command = [sys.executable, "-m", "storage_audit", "report", str(root), "-f", "html", "-o", str(page), "-q"]
    subprocess.run(command, env=env, check=True)


def shoot(page: Path, png: Path, height: int | None = None) -> None:
    """The page's top in headless chromium: its headline, cards, treemap and what a clean-up frees (down to the
    end of that row), or its top `height` pixels."""
    from PIL import Image

    from tests.browser import browser

    with browser() as tab:
        loaded = tab.open(page, width=WIDTH)
        if loaded.requests != [loaded.url] or loaded.console_errors:
            sys.exit(f"the page asked for {loaded.requests} or failed: {loaded.console_errors}")
        if height is None:
            bottom = "document.getElementById('section-reclaimable').parentElement.getBoundingClientRect().bottom"
            height = round(tab.evaluate(f"{bottom} + window.scrollY"))
        whole = png.with_suffix(".whole.png")
        tab.screenshot(whole)
    with Image.open(whole) as image:
        image.crop((0, 0, image.width, min(height, image.height))).save(png, optimize=True)
    whole.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=300)
    parser.add_argument("--manifests", type=int, default=3000)
    parser.add_argument("--blobs", type=int, default=15000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--height", type=int, help="pixels of the page's top to keep (default: down to the bars)")
    parser.add_argument("--out", type=Path, default=TOP / "docs" / "report.png", help="the PNG (docs/report.png)")
    parser.add_argument("--html-only", type=Path, metavar="PAGE", help="write the page here; take no screenshot")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "storage-audit-screenshot",
        help="where the tree is built, and shown in the page (default: $TMPDIR/storage-audit-screenshot)",
    )
    args = parser.parse_args()
    root = args.work / "registry"
    # A tree a previous run built goes; anything else there (a real registry, say) is never touched.
    if root.exists() and not (root / MARK).exists():
        sys.exit(f"{root} exists and was not built by this script: choose another --work")
    shutil.rmtree(root, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    build_tree(root, args.repositories, args.manifests, args.blobs, args.seed)
    (root / MARK).touch()
    page = args.html_only or args.work / "report.html"
    write_page(root, page)
    if args.html_only is None:
        shoot(page, args.out, args.height)
        print(f"wrote {args.out}")
    else:
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
