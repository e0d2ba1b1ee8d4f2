"""Durations as the registry's own Go durations are written (`30d`, `1d12h`, `90m`, `0s`), read into timedeltas."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Times are pandas timestamps, which begin in 1677: 100,000 days (274 years) back from now stays inside.
MAX_DAYS = 100_000
_WHOLE = re.compile(r"(?:\d+[wdhms])+")
_PART = re.compile(r"(\d+)([wdhms])")


class DurationError(ValueError):
    """Text that is no duration, or one longer than MAX_DAYS."""


def parse(text: str) -> timedelta:
    """`30d`, `1d12h`, `1h30m`, `90m`, `0s`, `2w` -> timedelta: whole numbers of weeks, days, hours, minutes and
    seconds written one after another, in any order, as Go's time.ParseDuration reads them."""
    written = text.strip()
    if _WHOLE.fullmatch(written) is None:
        raise DurationError(f"{text!r} is not a duration such as 30d, 1d12h, 1h30m, 90m or 0s")
    seconds = sum(int(n) * UNITS[unit] for n, unit in _PART.findall(written))
    if seconds > MAX_DAYS * UNITS["d"]:
        raise DurationError(f"{text!r} is longer than {MAX_DAYS}d, the longest duration accepted")
    return timedelta(seconds=seconds)


def written(delta: timedelta) -> str:
    """A duration as it would be written: the largest of d, h, m that divides it (`14d`, `36h`), else seconds."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
