"""Words for people: names read from the storage made inert on a terminal, counted nouns, and sizes in bytes."""

from __future__ import annotations

import unicodedata

import humanize

# Control and format characters (ESC, newline, bidirectional overrides) and the
# surrogates that stand for bytes of a name that is not UTF-8.
_INERT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 name, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character but those in `keep` written as an escape (`\\x1b`).

    A table cell keeps its line breaks (`keep="\\n"`): a finding's cell is its path over its detail.
    """
    if text.isprintable():
        return text
    return "".join(_escape(c) if c not in keep and unicodedata.category(c) in _INERT_CATEGORIES else c for c in text)


def count(n: int, singular: str, plural: str | None = None) -> str:
    """`1 blob`, `2 blobs`, `1,024 entries` (with `plural` for nouns that do not just take an s)."""
    return f"{n:,} {singular if n == 1 else (plural or singular + 's')}"


def size(n: float) -> str:
    """A number of bytes in binary units, as every table, message and page shows sizes: `913 B`, `11.4 KiB`,
    `1.5 GiB`.

    humanize's binary sizes, but for its "913 Bytes" and "1 Byte": a byte is `B` beside `KiB` as in them.
    """
    if abs(n) < 1024:
        return f"{round(n)} B"
    return humanize.naturalsize(n, binary=True)
