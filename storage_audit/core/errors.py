"""The one exception base of the library: each error the command line reports carries its exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FINDINGS = 3
EXIT_CLOSED_PIPE = 141
"""The reader of stdout went away (`| head`): 128 + SIGPIPE, as a shell reports a process that signal ended."""


class AuditError(Exception):
    """An error the command line reports as one line on stderr, exiting with `exit_code`; `details` are lines
    said after it (every mistake of a file, say)."""

    exit_code: int = EXIT_INTERNAL
    details: tuple[str, ...] = ()


class UsageError(AuditError):
    """Arguments, ROOT, a plan file or a snapshot that cannot be used as given."""

    exit_code = EXIT_USAGE


class UncertainError(AuditError):
    """The storage could not be read well enough to answer, or to delete anything, safely."""

    exit_code = EXIT_FINDINGS


class StorageError(AuditError):
    """A storage access that failed in a way no finding can describe (the backend itself is unusable)."""

    exit_code = EXIT_USAGE
