"""A bucket that misleads or misbehaves fails in one line, or reads as findings: against real servers on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3_harness import SilentEndpoint

REPO = Path(__file__).resolve().parents[1]
Done = subprocess.CompletedProcess[str]


def command(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[Done, float]:
    """`storage-audit ARGS` in a child process with `env` laid over this one's (AWS settings left out); its time."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "storage_audit", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


def one_line_exit_2(done: Done) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("storage-audit: error: "), done.stderr
    return lines[0]


# --------------------------------------------------------------------------
# A hung endpoint


@pytest.mark.slow
def test_a_hung_endpoint_fails_within_a_minute() -> None:
    """An endpoint that accepts connections and never answers: every request times out, retried a bounded number
    of times, by obstore (the listing) and by botocore (the multipart uploads) alike."""
    with SilentEndpoint() as hung:
        env = {
            "AWS_ACCESS_KEY_ID": "hung-test-key",
            "AWS_SECRET_ACCESS_KEY": "hung-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": hung.endpoint,
        }
        try:
            done, elapsed = command(["report", "s3://registry/regroot", "--no-cache"], env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("a hung endpoint kept the command waiting for over two minutes")
        assert hung.accepted > 0
    line = one_line_exit_2(done)
    assert "s3://registry/regroot" in line
    assert elapsed < 60, f"{elapsed:.0f}s"
