"""Policy files: retention rules per repository glob, read from YAML into the plan's rules, every mistake named
with its line."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from storage_audit.cleanup.plan import Policy, Retention
from storage_audit.core import durations
from storage_audit.core.errors import UsageError
from storage_audit.storage.base import AccessError, read_regular

POLICY_LIMIT = 1 << 20
"""A policy file is a page of rules: more than a MiB is no policy file."""
DEFAULT_MIN_AGE = timedelta(hours=1)

TOP_KEYS = ("rules", "min_age")
RULE_KEYS = (
    "name",
    "repositories",
    "tags",
    "keep_last",
    "keep_within",
    "keep",
    "delete_untagged",
    "keep_referrers",
    "min_age",
)
TAG_KEYS = ("include", "exclude", "regex")
MAX_PROBLEMS = 50


class PolicyFileError(UsageError):
    """A policy file that cannot be used: every mistake found, each with its line."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = [f"{source}:{line}: {message}" for line, message in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"and {len(problems) - MAX_PROBLEMS:,} more")
        noun = "mistake" if len(problems) == 1 else "mistakes"
        super().__init__(f"policy file {source}: {len(problems):,} {noun}:")
        self.details = tuple(shown)


@dataclass
class _Reader:
    """Turns the composed YAML into rules, noting each mistake at its node's line (1-based) and going on."""

    problems: list[tuple[int, str]]

    def fail(self, node: yaml.Node, message: str) -> None:
        self.problems.append((node.start_mark.line + 1, message))

    def value(self, node: yaml.Node) -> Any:
        """A scalar node's value as YAML reads it (int, bool, str, ...); a collection's nodes stay nodes."""
        if isinstance(node, yaml.ScalarNode):
            return yaml.SafeLoader("").construct_object(node)
        return node

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The keys of a mapping node with their key and value nodes; unknown and repeated keys are mistakes."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping of {', '.join(allowed)}")
            return {}
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str) or key not in allowed:
                self.fail(key_node, f"unknown key {key!r} in {what} (known: {', '.join(allowed)})")
            elif key in out:
                self.fail(key_node, f"{key} given twice in {what}")
            else:
                out[key] = (key_node, value_node)
        return out

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        """A list of strings (or one string), each with its node."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in items:
            value = self.value(item)
            if not isinstance(value, str) or not value:
                self.fail(item, f"{what} must be a non-empty string or a list of them, not {_shown(value)}")
            else:
                out.append((item, value))
        return out

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        value = self.value(node)
        if not isinstance(value, bool):
            self.fail(node, f"{what} must be true or false, not {_shown(value)}")
            return None
        return value

    def duration(self, node: yaml.Node, what: str) -> timedelta | None:
        value = self.value(node)
        if not isinstance(value, str):
            self.fail(node, f"{what} must be a duration such as 14d, 1d12h or 0s, not {_shown(value)}")
            return None
        try:
            return durations.parse(value)
        except durations.DurationError as exc:
            self.fail(node, f"{what}: {exc}")
            return None


def _shown(value: Any) -> str:
    if isinstance(value, yaml.Node):
        return "a list" if isinstance(value, yaml.SequenceNode) else "a mapping"
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def repository_glob_problem(pattern: str) -> str | None:
    """Why `pattern` is no repository glob, or None: a path relative to the registry (after a `!`), `**` a whole
    segment."""
    pattern = pattern.removeprefix("!")
    if not pattern or pattern.startswith("/") or pattern.endswith("/") or "//" in pattern:
        return f"repository glob {pattern!r}: no empty glob, and no leading, trailing or doubled /"
    for segment in pattern.split("/"):
        if "**" in segment and segment != "**":
            return f"repository glob {pattern!r}: ** must be a whole path segment (ci/**, **/app)"
    if pattern.count("[") != pattern.count("]"):
        return f"repository glob {pattern!r}: an unclosed [ ]"
    return None


def tag_regex(pattern: str, regex: bool) -> str:
    """A tag pattern as the regular expression the rules search with: a glob matches the whole tag."""
    return pattern if regex else "^" + fnmatch.translate(pattern)


def parse(text: str, source: str) -> Retention:
    """The rules of a policy file's text; raises PolicyFileError naming every mistake with its line."""
    problems: list[tuple[int, str]] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyFileError(source, [(line, f"not YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(source, [(1, f"not YAML: {exc}")]) from None
    if root is None:
        raise PolicyFileError(source, [(1, "empty: a policy file holds `rules:`, a list of rules")])
    reader = _Reader(problems)
    top = reader.mapping(root, "the policy file", TOP_KEYS)
    min_age = DEFAULT_MIN_AGE
    if "min_age" in top:
        given = reader.duration(top["min_age"][1], "min_age")
        min_age = min_age if given is None else given
    rules: list[Policy] = []
    if "rules" not in top:
        if isinstance(root, yaml.MappingNode):
            reader.fail(root, "no `rules:`: a policy file holds a list of rules")
    else:
        node = top["rules"][1]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            reader.fail(node, "rules must be a list of one rule or more")
        else:
            for i, item in enumerate(node.value):
                rule = _rule(reader, item, i, min_age)
                if rule is not None:
                    rules.append(rule)
    if problems:
        raise PolicyFileError(source, sorted(problems))
    labels = [r.label for r in rules]
    rules = [r if labels.count(r.label) == 1 else _relabel(r, f"{r.label} #{i + 1}") for i, r in enumerate(rules)]
    return Retention(tuple(rules), min_age=min_age, source=source)


def _relabel(rule: Policy, label: str) -> Policy:
    return replace(rule, label=label)


def _rule(reader: _Reader, node: yaml.Node, i: int, default_min_age: timedelta) -> Policy | None:
    """One rule as the plan's Policy, or None when it has mistakes (noted)."""
    before = len(reader.problems)
    what = f"rule {i + 1}"
    keys = reader.mapping(node, what, RULE_KEYS)
    name = None
    if "name" in keys:
        value = reader.value(keys["name"][1])
        if not isinstance(value, str) or not value:
            reader.fail(keys["name"][1], f"{what}: name must be a string, not {_shown(value)}")
        else:
            name = value
    repositories: list[str] = []
    if "repositories" not in keys:
        if isinstance(node, yaml.MappingNode):
            reader.fail(node, f"{what} names no repositories (all of them: repositories: ['**'])")
    else:
        for item, pattern in reader.strings(keys["repositories"][1], f"{what}: repositories"):
            problem = repository_glob_problem(pattern)
            if problem is not None:
                reader.fail(item, problem)
            else:
                repositories.append(pattern)
        if repositories and all(p.startswith("!") for p in repositories):
            reader.fail(keys["repositories"][1], f"{what}: repositories has only ! globs, which match nothing alone")
    include: list[str] = []
    exclude: list[str] = []
    if "tags" in keys:
        tags = reader.mapping(keys["tags"][1], f"{what}: tags", TAG_KEYS)
        regex = False
        if "regex" in tags:
            regex = bool(reader.boolean(tags["regex"][1], f"{what}: tags: regex"))
        for field, out in (("include", include), ("exclude", exclude)):
            if field not in tags:
                continue
            for item, pattern in reader.strings(tags[field][1], f"{what}: tags: {field}"):
                if regex:
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        reader.fail(item, f"tags: {field}: {pattern!r} is not a regular expression: {exc}")
                        continue
                elif pattern.count("[") != pattern.count("]"):
                    reader.fail(item, f"tags: {field}: {pattern!r} is not a glob: an unclosed [ ]")
                    continue
                out.append(tag_regex(pattern, regex))
    keep_last = None
    if "keep_last" in keys:
        value = reader.value(keys["keep_last"][1])
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            reader.fail(
                keys["keep_last"][1], f"{what}: keep_last must be a whole number, 0 or more, not {_shown(value)}"
            )
        else:
            keep_last = value
    keep_within = None
    if "keep_within" in keys:
        keep_within = reader.duration(keys["keep_within"][1], f"{what}: keep_within")
    if "keep" in keys:
        value = reader.value(keys["keep"][1])
        if value != "always":
            reader.fail(keys["keep"][1], f"{what}: keep can only be `always`, not {_shown(value)}")
        elif "keep_last" in keys or "keep_within" in keys:
            reader.fail(
                keys["keep"][0], f"{what}: keep: always keeps every tag it selects; drop keep_last, keep_within"
            )
    flags = {}
    for key, default in (("delete_untagged", False), ("keep_referrers", True)):
        flags[key] = default
        if key in keys:
            value = reader.boolean(keys[key][1], f"{what}: {key}")
            flags[key] = default if value is None else value
    min_age = default_min_age
    if "min_age" in keys:
        given = reader.duration(keys["min_age"][1], f"{what}: min_age")
        min_age = min_age if given is None else given
    if len(reader.problems) > before:
        return None
    return Policy(
        delete_untagged=flags["delete_untagged"],
        keep_last=keep_last,
        keep_tags=tuple(exclude),
        only_tags=tuple(include),
        older_than=keep_within,
        repositories=tuple(repositories),
        min_age=min_age,
        keep_referrers=flags["keep_referrers"],
        label=f"rule {name or ','.join(repositories)}",
        path_globs=True,
        keep_unselected=False,
    )


def load(path: Path) -> Retention:
    """The rules of the policy file at `path`; raises PolicyFileError (every mistake, with its line) or
    UsageError when it cannot be read."""
    try:
        raw = read_regular(path, POLICY_LIMIT)
    except AccessError as exc:
        raise UsageError(f"--policy: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyFileError(str(path), [(1, "not UTF-8 text")]) from None
    return parse(text, str(path))
