"""Read the registry's link files through the storage layer: the digest each names, and a finding when it is bad."""

from __future__ import annotations

from .findings import Kind
from .listing import Recorder, Unreadable
from .paths import Digest, InvalidDigest, is_digest
from .storage import AccessError, Directory, NotRegular

LINK_READ = 511  # a link holds ~71-135 bytes; reading more only exposes garbage


class LinkReader:
    """Reads links for a scan; what is wrong with one becomes a finding of the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.storage = recorder.storage

    def read(
        self,
        rel: str,
        repo: str | None,
        mtime: bool = True,
        directory: Directory | None = None,
        name: str = "",
        own: str | None = None,
    ) -> tuple[str | None, int] | None:
        """(digest or None, mtime_ns) of the link at `rel` (or `name` in an open `directory`); None when absent.

        `own` is the digest the link's directory is named for: a link naming
        exactly that, the usual case, needs no further checks.

        A link whose content is bad yields a finding; a trailing newline is
        tolerated for the digest (keeping what it names alive is the safe side),
        but reported, because it makes the reference registry abort. A link that
        cannot be read at all raises Unreadable, after its finding.
        """
        try:
            if directory is not None:
                small = directory.read_small(name, LINK_READ, mtime)
            else:
                small = self.storage.read_small(rel, LINK_READ, mtime)
        except NotRegular:
            self.rec.find(Kind.BAD_LINK, rel, "link is not a regular file", repo)
            return None, 0
        except AccessError as exc:
            self.rec.access(exc, repo)
            raise Unreadable from exc
        if small is None:
            return None
        raw = small[0]
        if own is not None and raw == own.encode():
            return own, small[2]
        return self.digest(rel, raw, repo), small[2]

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
