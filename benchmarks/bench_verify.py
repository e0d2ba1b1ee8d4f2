"""Time `storage-audit check --verify-digests` against `sha256sum` run with the same parallelism on large blobs."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20
CHUNK = 64 * MIB
V2 = Path("docker/registry/v2")


def make_blobs(root: Path, files: int, size: int, seed: int) -> int:
    """Write `files` blobs of `size` pseudo-random bytes (incompressible, not sparse) in the blob layout."""
    rng = np.random.default_rng(seed)
    blobs = root / V2 / "blobs/sha256"
    total = 0
    for _ in range(files):
        tmp = root / "incoming"
        hasher = hashlib.sha256()
        with open(tmp, "wb") as fh:
            left = size
            while left:
                chunk = rng.bytes(min(CHUNK, left))
                hasher.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        hexpart = hasher.hexdigest()
        target = blobs / hexpart[:2] / hexpart
        target.mkdir(parents=True)
        tmp.rename(target / "data")
        total += size
    (root / V2 / "repositories").mkdir(parents=True, exist_ok=True)
    return total


def storage_audit() -> list[str]:
    # This interpreter, not a console script: a version manager's shim would add its own start-up to every run.
    return [sys.executable, "-m", "storage_audit"]


def timed(argv: list[str], shell: bool = False) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        argv if not shell else " ".join(argv), shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the blobs (default: a new dir in /tmp).")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.dir))
    try:
        total = make_blobs(base, args.files, args.size_mib * MIB, seed=1)
        v2 = base / V2
        ours = [*storage_audit(), "check", str(base), "--verify-digests", "--workers", str(args.workers), "-q"]
        ours += ["-f", "json"]
        plain = [*storage_audit(), "check", str(base), "-q", "-f", "json"]
        # -n 1: one file per sha256sum process, so that -P runs N of them at once.
        theirs = ["find", str(v2 / "blobs"), "-name", "data", "-print0", "|"]
        theirs += ["xargs", "-0", "-n", "1", "-P", str(args.workers), "sha256sum"]
        # For context: the same hashing through OpenSSL's command, which uses the CPU's SHA instructions.
        openssl = [*theirs[: theirs.index("xargs")], "xargs", "-0", "-n", "1", "-P", str(args.workers)]
        openssl += ["openssl", "dgst", "-sha256"]
        commands = {
            "storage-audit check --verify-digests": (ours, False),
            "xargs -P N sha256sum": (theirs, True),
            "xargs -P N openssl dgst -sha256": (openssl, True),
        }
        times: dict[str, list[float]] = {label: [] for label in commands}
        # Warm the page cache (it cannot be dropped here): every timed run reads from memory.
        for argv, shell in commands.values():
            timed(argv, shell)
        startup = statistics.median(timed(plain) for _ in range(3))
        for rep in range(args.repeat):
            order = list(commands.items()) if rep % 2 == 0 else list(reversed(commands.items()))
            for label, (argv, shell) in order:
                times[label].append(timed(argv, shell))

        gib = total / (1 << 30)
        print(f"{args.files} files x {args.size_mib} MiB = {gib:.2f} GiB, {args.workers} workers, {args.repeat} runs")
        medians = {label: statistics.median(values) for label, values in times.items()}
        for label, median in medians.items():
            runs = " ".join(f"{t:.2f}" for t in times[label])
            print(f"{label:40} median {median:6.2f} s  {gib / median:6.2f} GiB/s   runs: {runs}")
        ratio = medians["xargs -P N sha256sum"] / medians["storage-audit check --verify-digests"]
        print(f"storage-audit throughput / sha256sum throughput: {ratio:.0%}")
        net = medians["storage-audit check --verify-digests"] - startup
        print(f"storage-audit check without --verify-digests (start-up, scan, analyses): {startup:.2f} s")
        if net > 0:
            print(f"hashing alone: {gib / net:.2f} GiB/s, {medians['xargs -P N sha256sum'] / net:.0%} of sha256sum")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
