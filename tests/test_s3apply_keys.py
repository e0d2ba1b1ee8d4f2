"""Which keys each action of a plan for a bucket owns, and which plans are refused before anything is listed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from storage_audit.cleanup.action import Action, RepositoryPrecondition, TagPrecondition
from storage_audit.cleanup.plan import Plan, PlanError
from storage_audit.cleanup.removers import S3Remover
from storage_audit.storage.bucket import S3Bucket, S3Location, S3Settings
from storage_audit.storage.s3 import S3Storage

HEX = "ab" * 32
LINK = {"etag": "0" * 32, "size": 71, "last_modified": "2026-01-01T00:00:00+00:00"}
LOCATION = {"bucket": "b", "prefix": "root/docker/registry/v2/", "region": "us-east-1"}


def tag(repo: str, name: str, objects: dict[str, Any] | None = None) -> dict[str, Any]:
    """A remove-tag action as the plan's JSON holds it."""
    path = f"repositories/{repo}/_manifests/tags/{name}"
    pre = {"current": f"sha256:{HEX}", "objects": objects if objects is not None else {f"{path}/current/link": LINK}}
    return {
        "op": "remove-tag",
        "path": path,
        "reason": "r",
        "precondition": pre,
        "repository": repo,
        "tag": name,
        "digest": f"sha256:{HEX}",
        "bytes": 0,
    }


def repository(repo: str) -> Action:
    return Action(
        "remove-repository", f"repositories/{repo}", "r", RepositoryPrecondition(layers_changed_at=None), repo
    )


def plan_of(*actions: dict[str, Any]) -> dict[str, Any]:
    plan = Plan("s3://b/root", datetime(2026, 1, 1, tzinfo=UTC), {}, location=LOCATION)
    return {**plan.to_json(), "actions": list(actions)}


def test_a_tag_owns_its_own_keys_and_never_a_tag_it_prefixes() -> None:
    v1 = Action("remove-tag", "repositories/a/_manifests/tags/v1", "r", TagPrecondition(current=f"sha256:{HEX}"))
    assert v1.owns("repositories/a/_manifests/tags/v1/current/link")
    assert v1.owns(f"repositories/a/_manifests/tags/v1/index/sha256/{HEX}/link")
    for other in ("v1.0/current/link", "v1-x/current/link", "v10/current/link", "v1"):
        assert not v1.owns(f"repositories/a/_manifests/tags/{other}")
    assert not v1.owns("repositories/a/b/_manifests/tags/v1/current/link")


def test_a_repository_owns_its_parts_and_never_a_nested_repository() -> None:
    repo = repository("a")
    assert repo.owns(f"repositories/a/_layers/sha256/{HEX}/link")
    assert repo.owns("repositories/a/_uploads/u/startedat")
    assert not repo.owns(f"repositories/a/b/_layers/sha256/{HEX}/link")
    assert not repo.owns(f"repositories/ab/_layers/sha256/{HEX}/link")


@pytest.mark.parametrize(
    "key",
    [
        "repositories/a/_manifests/tags/v1.0/current/link",
        "repositories/a/_manifests/tags/v1/../../revisions/x/link",
        "../other/docker/registry/v2/blobs/x",
        "repositories/a/_manifests/tags/v1//current/link",
    ],
)
def test_a_key_an_action_does_not_own_refuses_the_plan(key: str) -> None:
    good = {"repositories/a/_manifests/tags/v1/current/link": LINK}
    Plan.from_json(plan_of(tag("a", "v1", good)))
    with pytest.raises(PlanError, match="may not touch"):
        Plan.from_json(plan_of(tag("a", "v1", {**good, key: LINK})))


def test_malformed_preconditions_refuse_the_plan() -> None:
    path = "repositories/a/_manifests/tags/v1/current/link"
    for bad in ({"etag": 1, "size": 1, "last_modified": LINK["last_modified"]}, {"etag": "x"}, {**LINK, "size": -1}):
        with pytest.raises(PlanError):
            Plan.from_json(plan_of(tag("a", "v1", {path: bad})))
    unlisted = tag("a", "v1")
    del unlisted["precondition"]["objects"]
    bucket = S3Bucket(S3Location("b", "root"), S3Settings(access_key="a", secret_key="b"), env={})
    remover = S3Remover(S3Storage(bucket))
    with pytest.raises(PlanError, match="lists the keys"):
        remover.check(Plan.from_json(plan_of(unlisted)))


def test_the_location_and_the_root_must_agree() -> None:
    doc = plan_of(tag("a", "v1"))
    assert Plan.from_json(doc).location == doc["location"]
    for change in (
        {"root": "s3://other/root"},
        {"root": "/var/lib/registry"},
        {"location": {**doc["location"], "prefix": "elsewhere/docker/registry/v2/"}},
        {"location": {**doc["location"], "secret_key": "x"}},
        {"location": {**doc["location"], "bucket": "b/c"}},
    ):
        with pytest.raises(PlanError):
            Plan.from_json({**doc, **change})
