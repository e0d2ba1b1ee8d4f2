"""JSON: an array of row objects (one object for a single-row view), raw integers, ISO 8601 UTC times."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from storage_audit.core.view import View

# pandas writes `/` as `\/`; a `\/` preceded by an even run of backslashes is that escape.
_ESCAPED_SLASH = re.compile(r"(?<!\\)((?:\\\\)*)\\/")


def write(view: View, dest: Path | None) -> None:
    frame = view.frame
    if view.single:
        # As objects, a row of ints and floats keeps its ints (a plain row Series upcasts them to float).
        text = frame.astype(object).iloc[0].to_json(date_format="iso", date_unit="us", indent=2)
    else:
        text = frame.to_json(orient="records", date_format="iso", date_unit="us", indent=2)
    if frame.empty and not view.single:
        text = "[]"  # pandas writes two newlines between brackets for an empty frame
    text = _ESCAPED_SLASH.sub(r"\1/", text)
    if dest is None:
        sys.stdout.write(text + "\n")
    else:
        dest.write_text(text + "\n", encoding="utf-8")
