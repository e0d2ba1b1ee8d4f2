"""CSV: a header row, raw integers, ISO 8601 UTC times."""

from __future__ import annotations

import sys
from pathlib import Path

from . import View

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def write(view: View, dest: Path | None) -> None:
    if dest is None:
        view.frame.to_csv(sys.stdout, index=False, date_format=ISO_FORMAT)
    else:
        view.frame.to_csv(dest, index=False, date_format=ISO_FORMAT)
