"""The journal beside a plan: which actions an apply settled, so that an interrupted one resumes and none runs twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from storage_audit.cleanup.action import PlanError
from storage_audit.core.errors import EXIT_OK, AuditError
from storage_audit.storage.base import AccessError, read_regular

JOURNAL_LIMIT = 1 << 36
"""As a plan's limit: a journal holds a short line per action of its plan."""

SYNC_INTERVAL = 0.5
"""Seconds between two fsyncs of the journal. A result lost in a crash is only checked again (a removal is then
found gone), so one fsync per action, which took a quarter of a large apply on disk, buys nothing."""

JOURNAL_SUFFIX = ".journal"
JOURNAL_HASH_CHARS = 16
"""Hex characters of the plan's sha256 in its journal's name: enough to tell plans apart."""


class AlreadyApplied(AuditError):
    """The journal beside the plan says it was applied to the end: nothing to do, which is no failure."""

    exit_code = EXIT_OK


class PlanBusy(PlanError):
    """Another apply of the same plan is running: two at once would each find the other's removals."""


def journal_path(plan_path: Path, plan_hash: str | None = None) -> Path:
    """Where the journal of the plan in `plan_path` (with sha256 `plan_hash`, else of its bytes now) is kept."""
    if plan_hash is None:
        plan_hash = hashlib.sha256(plan_path.read_bytes()).hexdigest()
    return plan_path.with_name(f"{plan_path.name}.{plan_hash[:JOURNAL_HASH_CHARS]}{JOURNAL_SUFFIX}")


class Journal:
    """Append-only record beside the plan: resume after an interruption, never apply twice.

    Its name carries the plan's hash, so a plan written again over the same
    file starts a journal of its own; what a crash tore or garbled is checked
    again. An apply holds the plan file locked from before it reads the
    journal until it closes it, so a second apply of the plan meanwhile is
    refused; the lock creates nothing, so a refused or declined apply leaves
    no journal. A dry run only reads it.
    """

    def __init__(self, plan_path: Path, plan_hash: str, actions: int) -> None:
        self.plan_path = plan_path
        self.path = journal_path(plan_path, plan_hash)
        self.plan_hash = plan_hash
        self.actions = actions
        self.done: set[int] = set()
        self._fresh = True
        self._fh: IO[bytes] | None = None
        self._lock: int | None = None
        self._synced = 0.0

    def lock(self) -> None:
        """Hold the plan against any other apply until `close`; raises PlanBusy while another holds it."""
        try:
            fd = os.open(self.plan_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PlanError(f"{self.plan_path}: cannot open: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise PlanBusy("another apply of this plan is running; run it again once that one has ended") from exc
            raise PlanError(f"{self.plan_path}: cannot lock it against a second apply: {exc.strerror or exc}") from exc
        self._lock = fd

    def read(self) -> None:
        """Learn what an earlier apply settled; raises PlanError, or AlreadyApplied when it was applied to the end."""
        try:
            raw = read_regular(self.path, JOURNAL_LIMIT)
        except AccessError as exc:
            if not os.path.lexists(self.path):
                return
            raise PlanError(f"{self.path}: cannot read the journal: {exc.reason}") from exc
        entries = []
        for line in raw.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash, or garbled: its action is simply checked again
            if isinstance(entry, dict):
                entries.append(entry)
        header = [e["plan_sha256"] for e in entries if isinstance(e.get("plan_sha256"), str)]
        if any(h != self.plan_hash for h in header):
            raise PlanError(f"{self.path} belongs to another plan; move it away to apply this one")
        self._fresh = not header  # empty, or its first line torn: it is begun again
        if any(e.get("finished") is True for e in entries):
            raise AlreadyApplied(f"this plan was already applied to the end (see {self.path})")
        self.done = {
            e["index"]
            for e in entries
            if type(e.get("index")) is int and 0 <= e["index"] < self.actions and isinstance(e.get("result"), str)
        }

    def open(self) -> None:
        """Open the journal for writing (the plan locked and the journal read first)."""
        assert self._lock is not None, "a journal is written only under the plan's lock"
        try:
            if self._fresh:
                self._fh = open(self.path, "wb")  # noqa: SIM115 - held for the whole apply
                self._write({"plan_sha256": self.plan_hash})
                for index in sorted(self.done):
                    self._write({"index": index, "result": "resumed"})
            else:
                self._fh = open(self.path, "ab")  # noqa: SIM115 - held for the whole apply
        except OSError as exc:
            raise PlanError(f"{self.path}: cannot write the journal: {exc.strerror or exc}") from exc

    def _write(self, entry: dict[str, Any], sync: bool = True) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps(entry).encode() + b"\n")
        if sync:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def record(self, index: int, result: str) -> None:
        """Append an action's result (buffered); `sync` writes what was recorded and makes it durable."""
        if self._fh is not None:
            self._write({"index": index, "result": result}, sync=False)

    def sync(self, force: bool = False) -> None:
        """Write what was recorded (a batch's results, before the next batch is removed), and make it durable at
        most every SYNC_INTERVAL seconds unless `force`d."""
        if self._fh is None:
            return
        self._fh.flush()
        if force or time.monotonic() >= self._synced + SYNC_INTERVAL:
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def finish(self, complete: bool) -> None:
        """Close the journal; a complete apply marks it finished, so the plan is never applied again."""
        if self._fh is not None and complete:
            self._write({"finished": True})
        self.close()

    def close(self) -> None:
        """Close the journal and release the plan (an apply that was interrupted leaves it to be resumed)."""
        if self._fh is not None:
            self.sync(force=True)
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


__all__ = ["AlreadyApplied", "Journal", "PlanBusy", "journal_path"]
