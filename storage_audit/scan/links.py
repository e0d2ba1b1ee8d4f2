"""Read the registry's link files through the storage layer: the digest each names, and a finding when it is bad."""

from __future__ import annotations

from storage_audit.core.findings import Kind
from storage_audit.core.paths import LINK_READ, Digest, InvalidDigest, is_digest
from storage_audit.scan.listing import Recorder, Unreadable
from storage_audit.storage.base import AccessError, NotRegular, Small


class LinkReader:
    """Reads links for a scan; what is wrong with one becomes a finding of the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.storage = recorder.storage

    def read(self, rel: str, repo: str | None, mtime: bool = True) -> tuple[str | None, int] | None:
        """(digest or None, mtime_ns) of the link at `rel`; None when absent. See `take`."""
        try:
            got: Small | AccessError | None = self.storage.read_small(rel, LINK_READ, mtime)
        except AccessError as exc:
            got = exc
        return self.take(rel, repo, got)

    def take(
        self, rel: str, repo: str | None, got: Small | AccessError | None, own: str | None = None
    ) -> tuple[str | None, int] | None:
        """(digest or None, mtime_ns) of the link at `rel`, from what reading it gave; None when absent.

        `own` is the digest the link's directory is named for: a link naming
        exactly that, the usual case, needs no further checks.

        A link whose content is bad yields a finding; a trailing newline is
        tolerated for the digest (keeping what it names alive is the safe side),
        but reported, because it makes the reference registry abort. A link that
        cannot be read at all raises Unreadable, after its finding.
        """
        if got is None:
            return None
        if isinstance(got, NotRegular):
            self.rec.find(Kind.BAD_LINK, rel, "link is not a regular file", repo)
            return None, 0
        if isinstance(got, AccessError):
            self.rec.access(got, repo)
            raise Unreadable from got
        raw = got[0]
        if own is not None and raw == own.encode():
            return own, got[2]
        return self.digest(rel, raw, repo), got[2]

    def digest(self, rel: str, raw: bytes, repo: str | None) -> str | None:
        if not raw:
            self.rec.find(Kind.BAD_LINK, rel, "link file is empty", repo)
            return None
        text = raw.decode("ascii", "replace")
        if is_digest(text):
            return text
        digest = text.strip()
        if not is_digest(digest):
            try:
                Digest.parse(digest)
                detail = "link content is not a digest"
            except InvalidDigest as exc:
                detail = f"link content is not a digest: {exc}"
            self.rec.find(Kind.BAD_LINK, rel, detail, repo)
            return None
        self.rec.find(Kind.BAD_LINK, rel, "link content has surrounding whitespace or a newline", repo, digest)
        return digest
