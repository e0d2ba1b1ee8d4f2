"""Plan formats: the JSON plan file, a reviewable shell script, and the live registry's HTTP workflow."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from storage_audit.analysis.options import PlanFormat
from storage_audit.cleanup.action import BlobPrecondition, LinkPrecondition, TagPrecondition, UploadPrecondition
from storage_audit.cleanup.plan import Action, Op, Plan
from storage_audit.core.paths import TagCurrentLink, parent, path_for
from storage_audit.storage.base import LocalStorage, Storage


def refusal(fmt: PlanFormat, storage: Storage) -> str | None:
    """Why a plan for `storage` cannot be written in `fmt`, or None: a shell script removes files, not keys."""
    if fmt is PlanFormat.SH and not isinstance(storage, LocalStorage):
        return (
            "--format sh writes a script for a local tree; for a bucket, apply the json plan "
            "with `storage-audit apply` (or use --format http)"
        )
    return None


def render(plan: Plan, fmt: PlanFormat, registry_url: str | None = None) -> str:
    """`plan` as text in `fmt`; every PlanFormat maps to exactly one renderer."""
    renderers: dict[PlanFormat, Callable[[Plan, str | None], str]] = {
        PlanFormat.JSON: _json,
        PlanFormat.SH: _sh,
        PlanFormat.HTTP: _http,
    }
    return renderers[fmt](plan, registry_url)


def _json(plan: Plan, _url: str | None) -> str:
    return json.dumps(plan.to_json(), indent=2) + "\n"


def _header(plan: Plan, lines: list[str]) -> list[str]:
    totals = plan.totals()
    return [
        "#!/bin/sh",
        f"# storage-audit plan for {plan.root}, created {plan.created_at.isoformat()}",
        f"# {totals['count']} actions, {totals['bytes']} bytes. Review it before running it.",
        *lines,
        "set -eu",
    ]


def _sh_line(action: Action) -> list[str]:
    q = shlex.quote
    path = q(action.path)

    def current() -> str:
        return path_for(TagCurrentLink(action.repository or "", action.tag or ""))

    if action.refused is not None:
        return [f"# {action.op} {q(action.path)}: {action.reason}", f"# refused, not run: {action.refused}"]
    pre = action.precondition
    if isinstance(pre, TagPrecondition):
        check = f"check_link {q(current())} {q(pre.current)}"
    elif isinstance(pre, LinkPrecondition):
        check = f"check_link {path} {q(pre.link)}"
    elif isinstance(pre, BlobPrecondition):
        check = f"check_blob {path} {pre.size}"
    elif isinstance(pre, UploadPrecondition):
        check = f"[ -d {path} ] && [ ! -L {path} ]"
    else:
        check = f"check_empty_repository {path}"
    remove = f"rm -rf -- {path}" if action.op != Op.REMOVE_REPOSITORY else f"remove_repository {path}"
    return [
        f"# {action.op}: {action.reason}",
        f"if {check}; then {remove}; else echo {q('skipped: ' + action.path)} >&2; fi",
    ]


SH_FUNCTIONS = r"""
check_link() { [ -f "$1" ] && [ ! -L "$1" ] && [ "$(cat -- "$1")" = "$2" ]; }
check_blob() { [ -f "$1/data" ] && [ ! -L "$1/data" ] && [ "$(stat -c %s -- "$1/data")" = "$2" ]; }
check_empty_repository() {
  [ -d "$1" ] && [ -z "$(find "$1/_manifests" "$1/_uploads" -type f 2>/dev/null | head -n 1)" ]
}
remove_repository() { rm -rf -- "$1/_manifests" "$1/_layers" "$1/_uploads"; rmdir -- "$1" 2>/dev/null || true; }
""".strip("\n")


def _sh(plan: Plan, _url: str | None) -> str:
    lines = _header(
        plan,
        [
            "# Each removal first checks that its target is what the plan saw. Unlike",
            "# `storage-audit apply`, this script does not re-read every manifest before",
            "# removing blobs: stop the registry (or make it read-only) before running it.",
        ],
    )
    lines += [SH_FUNCTIONS, f"cd {shlex.quote(plan.root)}"]
    for action in plan.actions:
        lines += _sh_line(action)
    # Only the directories a removal leaves behind in the registry's own layout, never a
    # repository's `_manifests/tags` or `_uploads` (2.8's collector aborts without `tags`).
    pruned = (Op.REMOVE_TAG_HISTORY, Op.REMOVE_REVISION, Op.REMOVE_LAYER_LINK, Op.REMOVE_BLOB)
    empties = sorted({parent(a.path) for a in plan.actions if a.op in pruned and a.refused is None}, reverse=True)
    lines.append("# Directories the removals left empty (the registry never prunes them).")
    lines += [f"rmdir -- {shlex.quote(d)} 2>/dev/null || true" for d in empties]
    lines.append("echo 'done: restart the registry, its blob cache still believes removed blobs exist' >&2")
    return "\n".join(lines) + "\n"


HTTP_FUNCTIONS = r"""
# Credentials come from the environment, never from this file: REGISTRY_USER and STORAGE_AUDIT_REGISTRY_PASSWORD
# (leave both unset for a registry without authentication). curl reads them, and any token, on its stdin
# (`-K -`), so they are in no process's arguments.
REGISTRY_USER=${REGISTRY_USER:-}
STORAGE_AUDIT_REGISTRY_PASSWORD=${STORAGE_AUDIT_REGISTRY_PASSWORD:-}
quoted() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }
credentials() {
  if [ -n "$REGISTRY_USER" ]; then
    printf 'user = "%s:%s"\n' "$(quoted "$REGISTRY_USER")" "$(quoted "$STORAGE_AUDIT_REGISTRY_PASSWORD")"
  fi
}
# What the registry asks for: nothing, Basic, or Bearer with the realm and service of its token endpoint.
CHALLENGE=$(curl -sS -o /dev/null -D - "$REGISTRY/v2/" | tr -d '\r' \
  | sed -n 's/^[Ww][Ww][Ww]-[Aa][Uu][Tt][Hh][Ee][Nn][Tt][Ii][Cc][Aa][Tt][Ee]: *//p')
challenged() { printf '%s' "$CHALLENGE" | sed -n "s/.*$1=\"\\([^\"]*\\)\".*/\\1/p"; }
REALM=$(challenged realm)
SERVICE=$(challenged service)
# curl's configuration that authenticates a request to repository $1: the credentials, or a bearer token
# for the scope repository:$1:pull,delete fetched with them.
authentication() {
  case "$CHALLENGE" in
    [Bb]earer*)
      token=$(credentials | curl -fsS -K - -G "$REALM" --data-urlencode "service=$SERVICE" \
        --data-urlencode "scope=repository:$1:pull,delete" | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')
      [ -n "$token" ] || { echo "no token from $REALM for $1" >&2; exit 1; }
      printf 'header = "Authorization: Bearer %s"\n' "$token" ;;
    [Bb]asic*) credentials ;;
  esac
}
delete_manifest() {
  code=$(authentication "$1" | curl -sS -K - -o /dev/null -w '%{http_code}' -X DELETE "$REGISTRY/v2/$1/manifests/$2")
  case "$code" in
    200|202) echo "deleted $1@$2" >&2 ;;
    404) echo "already gone: $1@$2" >&2 ;;
    401|403) echo "the registry refused the credentials (HTTP $code) for $1" >&2; exit 1 ;;
    405) echo "the registry refuses deletion (HTTP 405): set storage.delete.enabled to true" >&2; exit 1 ;;
    *) echo "failed (HTTP $code): $1@$2" >&2; exit 1 ;;
  esac
}
""".strip("\n")


def _http(plan: Plan, url: str | None) -> str:
    base = (url or "").rstrip("/")
    lines = _header(
        plan,
        [
            "# The HTTP workflow for a running registry (storage.delete.enabled must be true); it authenticates",
            "# with REGISTRY_USER and STORAGE_AUDIT_REGISTRY_PASSWORD from the environment (basic or token auth).",
            "# `storage-audit apply PLAN --registry-url URL` does the same from the json plan, re-checking each",
            "# deletion against the registry first. WARNING: deleting a manifest by digest also deletes EVERY tag",
            "# that points at it, in that repository, including tags this plan keeps.",
            "# Check `storage-audit report --by tag`.",
        ],
    )
    lines.append(f"REGISTRY={shlex.quote(base)}")
    lines.append(HTTP_FUNCTIONS)
    q = shlex.quote
    revisions = {(a.repository, a.digest) for a in plan.actions if a.op == Op.REMOVE_REVISION}
    for action in plan.actions:
        if action.op == Op.REMOVE_REVISION and action.refused is not None:
            lines.append(f"# {action.repository}@{action.digest}: {action.reason}; refused, not run: {action.refused}")
        elif action.op == Op.REMOVE_REVISION:
            lines.append(f"# {action.reason}")
            lines.append(f"delete_manifest {q(action.repository or '')} {q(action.digest or '')}")
        elif action.op == Op.REMOVE_TAG and (action.repository, action.digest) not in revisions:
            lines.append(
                f"# {action.repository}:{action.tag} cannot be removed through the API without deleting "
                f"{action.digest}, which other tags still use; use `storage-audit apply` offline instead."
            )
    lines += [
        "# Then, with the registry read-only or stopped, sweep what nothing references any more",
        "# (without --delete-untagged, which also deletes multi-arch children and signatures):",
        "#   registry garbage-collect /etc/docker/registry/config.yml",
        "# and restart the registry: its blob cache still believes deleted blobs exist.",
    ]
    return "\n".join(lines) + "\n"
