"""What a backend does for the applier: look at an action's target now, remove what was approved, keep a quarantine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from storage_audit.cleanup.action import Action
from storage_audit.cleanup.plan import Plan
from storage_audit.core.errors import StorageError
from storage_audit.storage.base import Storage

Item = tuple[int, Action]
"""An action with its index in the plan."""


class Unlisted(NamedTuple):
    """Data a bucket holds outside its listing: an incomplete multipart upload to `path`, with its bytes."""

    path: str
    upload_id: str
    bytes: int


@dataclass(frozen=True)
class Found:
    """An action's target as it is now: each file or key (relative to `v2`) with its bytes, and why it is not what
    the plan saw (None: it is)."""

    paths: dict[str, int]
    changed: str | None = None
    unlisted: tuple[Unlisted, ...] = field(default=())

    def held(self) -> dict[str, int]:
        """Every path the target holds, with its bytes, unlisted data included."""
        out = dict(self.paths)
        for upload in self.unlisted:
            out[upload.path] = out.get(upload.path, 0) + upload.bytes
        return out


@dataclass(frozen=True)
class Quarantined:
    """Where removed data is kept instead of deleted: moved there, or copied there and then deleted."""

    where: str
    copied: bool
    restore: str | None = None
    """A command that puts it back, where one is known."""


class Remover(ABC):
    """How one storage backend carries out a plan's approved actions.

    It says what an action's target is now (and whether that is what the
    plan saw: the preconditions are its concern), removes what the applier
    approved, in batches of its choosing, and keeps a quarantine. The
    phases, their order, the fresh scans, the vetoes and the journal are the
    applier's, and the same for every backend.
    """

    where: str
    """Where removed data is freed, for messages: `on disk`, `in the bucket`."""
    quarantine: Quarantined | None = None
    untags_with_revision: bool = False
    """Whether a tag whose manifest the plan deletes goes with that manifest, not alone (the registry's API)."""
    leaves_to: str = "another apply"
    """Who carries out what `leaves` leaves, for messages."""

    def __init__(self) -> None:
        self._checked: Plan | None = None

    def check(self, plan: Plan) -> None:
        """Refuse, with PlanError, a plan that is not for this storage or that it cannot carry out safely."""
        if self._checked is not plan:
            self._refuse(plan)
            self._checked = plan

    @abstractmethod
    def _refuse(self, plan: Plan) -> None: ...

    @abstractmethod
    def fresh(self) -> Storage:
        """The tree as it is now, for a new scan (read again, not from an earlier listing)."""

    @abstractmethod
    def batches(self, items: Sequence[Item]) -> list[list[Item]]:
        """The actions, in their order, in groups that are each looked at and removed at once."""

    @abstractmethod
    def look(
        self, plan: Plan, actions: Sequence[Action], scanned: Storage | None = None
    ) -> list[Found | StorageError | None]:
        """What the target of each of `plan`'s `actions` holds now, and whether that is what the plan saw; None when
        it is gone; the StorageError of one it could not look at (that action fails, not its batch). Raises
        StorageError when it cannot tell for the batch.

        `scanned`: the storage of the fresh scan that decided these actions'
        vetoes, when nothing this run removed since could have touched their
        targets. A remover whose look is a listing may answer from that
        listing instead of listing again: the references were judged on it.
        """

    @abstractmethod
    def remove(self, approved: Sequence[tuple[Action, Found]]) -> Sequence[StorageError | None] | None:
        """Remove (or quarantine) what the approved actions' targets hold. Raises StorageError when it could not;
        or returns, per approved action, the StorageError that kept that one from being removed (None: removed).
        Returning None says all were removed."""

    def leaves(self, action: Action) -> str | None:
        """Why this remover leaves `action` to another apply (None: it carries it out); every action by default."""
        return None

    def tidy(self, action: Action) -> None:  # noqa: B027 - an optional hook
        """Clean up what an interrupted removal of `action`, found gone now, left behind."""


__all__ = ["Found", "Item", "Quarantined", "Remover", "Unlisted"]
