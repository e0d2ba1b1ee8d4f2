"""Plan operations are an enum whose members are the strings the plan file holds."""

from __future__ import annotations

import dataclasses
import json

from storage_audit.cleanup.action import TagPrecondition
from storage_audit.cleanup.plan import OP_SPEC, OPS, Action, Op
from storage_audit.core.paths import (
    BlobDir,
    LayerLink,
    Repository,
    RevisionLink,
    TagDir,
    TagIndexLink,
    UploadDir,
)

# The plan file's vocabulary, in apply order, as docs/commands.md documents it.
FILE_OPS = [
    "remove-tag",
    "remove-tag-history",
    "remove-revision",
    "remove-layer-link",
    "remove-blob",
    "remove-upload",
    "remove-repository",
]


def test_ops_are_the_plan_files_strings_in_apply_order() -> None:
    assert [str(op) for op in OPS] == FILE_OPS
    assert list(OPS) == list(Op)
    assert all(op == text and hash(op) == hash(text) for op, text in zip(OPS, FILE_OPS, strict=True))


def test_each_op_touches_one_kind_of_path() -> None:
    assert {
        Op.REMOVE_TAG: TagDir,
        Op.REMOVE_TAG_HISTORY: TagIndexLink,
        Op.REMOVE_REVISION: RevisionLink,
        Op.REMOVE_LAYER_LINK: LayerLink,
        Op.REMOVE_BLOB: BlobDir,
        Op.REMOVE_UPLOAD: UploadDir,
        Op.REMOVE_REPOSITORY: Repository,
    } == OP_SPEC
    # String keys still find their op: comparisons written with strings keep working.
    assert OP_SPEC["remove-blob"] is BlobDir  # type: ignore[index]


def test_an_action_holds_an_op_and_writes_the_same_json() -> None:
    digest = "sha256:" + "ab" * 32
    action = Action("remove-tag", "repositories/a/_manifests/tags/t", "why", TagPrecondition(current=digest), "a", "t")
    assert action.op is Op.REMOVE_TAG
    assert json.loads(json.dumps(action.to_json()))["op"] == "remove-tag"
    assert Action.__dataclass_fields__.keys() == {
        "op",
        "path",
        "reason",
        "precondition",
        "repository",
        "tag",
        "digest",
        "bytes",
        "refused",
    }
    # `refused` is written only where a plan made --gc-compatible sets it, and may be left out when read.
    assert "refused" not in action.to_json()
    assert Action.from_json(action.to_json(), 0) == action
    marked = dataclasses.replace(action, refused="a manifest that stays references it: apply refuses it")
    assert Action.from_json(json.loads(json.dumps(marked.to_json())), 0) == marked
