"""The expected-facts format of fixtures: load it, sort it, and project an inventory onto it."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

# Field order per section; it is also the sort key, so two fact sets that hold
# the same rows compare equal whatever order they were produced in.
FIELDS: dict[str, tuple[str, ...]] = {
    "tags": ("repository", "tag", "digest"),
    "tag_history": ("repository", "tag", "digest"),
    "revisions": ("repository", "digest", "linked"),
    "manifests": ("digest", "kind", "media_type", "artifact_type", "subject", "size"),
    "references": ("manifest", "ref_type", "digest", "platform"),
    "layer_links": ("repository", "digest"),
    "blobs": ("digest", "size"),
    "uploads": ("repository", "id", "bytes"),
}
SECTIONS: tuple[str, ...] = ("repositories", *FIELDS)

Facts = dict[str, Any]


def _sort_key(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    # None sorts first and never meets a str or int in a comparison.
    return tuple((0, "") if row[f] is None else (1, f"{row[f]!s}") for f in fields)


def canonical(facts: Facts) -> Facts:
    """Return `facts` with every section present, rows reduced to their fields, and lists sorted."""
    out: Facts = {"repositories": sorted(set(facts.get("repositories", [])))}
    for section, fields in FIELDS.items():
        rows = [{f: row.get(f) for f in fields} for row in facts.get(section, [])]
        out[section] = sorted(rows, key=partial(_sort_key, fields=fields))
    return out


def dumps_facts(facts: Facts) -> str:
    """`facts` as canonical JSON with one row per line, so a diff shows which rows changed."""
    sections = []
    for section, rows in canonical(facts).items():
        lines = [json.dumps(row) for row in rows]
        body = "[\n" + ",\n".join(f"  {line}" for line in lines) + "\n ]" if lines else "[]"
        sections.append(f" {json.dumps(section)}: {body}")
    return "{\n" + ",\n".join(sections) + "\n}\n"


def dump_facts(facts: Facts, path: Path) -> None:
    path.write_text(dumps_facts(facts), encoding="utf-8")


def load_expected(path: str | Path) -> Facts:
    """Read an `<name>.expected.json` file into canonical form."""
    return canonical(json.loads(Path(path).read_text(encoding="utf-8")))


def _plain(value: Any) -> Any:
    """Turn a DataFrame cell into a JSON value: missing values become None, numpy scalars Python ones."""
    if value is None:
        return None
    if type(value).__name__ == "NAType":
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        # numpy scalars (int64, bool_, float64, str_) know their Python equivalent.
        value = item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def _rows(frame: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    columns = [frame[f].tolist() for f in fields]
    return [{f: _plain(v) for f, v in zip(fields, values, strict=True)} for values in zip(*columns, strict=True)]


def inventory_facts(inv: Any) -> Facts:
    """Project an inventory (one DataFrame attribute per section) onto the expected-facts format."""
    facts: Facts = {"repositories": [_plain(v) for v in inv.repositories["repository"].tolist()]}
    for section, fields in FIELDS.items():
        facts[section] = _rows(getattr(inv, section), fields)
    return canonical(facts)
