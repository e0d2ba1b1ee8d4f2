"""The one place the library reads the wall clock: `now()`, which `STORAGE_AUDIT_NOW` can pin to a given time."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Final

from storage_audit.core.errors import UsageError

ENV: Final = "STORAGE_AUDIT_NOW"
"""An ISO 8601 time with a timezone, e.g. 2036-12-07T00:00:00Z: what `now()` answers instead of the clock."""

# pandas holds times as nanoseconds since 1970 in 64 bits: a pinned time outside them could not be compared.
EARLIEST: Final = datetime(1678, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2262, 4, 11, tzinfo=UTC)


class ClockError(UsageError):
    """`STORAGE_AUDIT_NOW` holds no usable time."""


def now() -> datetime:
    """The current time, timezone-aware in UTC: `STORAGE_AUDIT_NOW` when it is set, else the machine's clock.

    Everything the audit judges by age (a scan's time, hence stale uploads; a plan's grace period) reads
    it here, so that one variable moves them all. Raises ClockError when the variable holds no usable time.
    """
    pinned = os.environ.get(ENV, "")
    if not pinned:
        return machine_now()
    return parse(pinned)


def parse(text: str) -> datetime:
    """An ISO 8601 time with a timezone, in UTC; raises ClockError for anything else."""
    usage = f"{ENV}={text!r}: not an ISO 8601 time with a timezone, such as 2036-12-07T00:00:00Z"
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClockError(usage) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ClockError(usage)
    if not EARLIEST <= when < LATEST:
        raise ClockError(f"{ENV}={text!r}: outside the years {EARLIEST.year} to {LATEST.year - 1} the audit can hold")
    return when.astimezone(UTC)


def machine_now() -> datetime:
    """The machine's clock, never pinned: for deadlines other code compares with that clock (a credential's
    expiry); what the audit judges by age reads `now()`."""
    return datetime.now(UTC)
