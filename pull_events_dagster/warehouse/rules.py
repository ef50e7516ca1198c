"""Why a landed line is rejected: the ordered rules, defined once; each warehouse renders them in its SQL.

A line is judged by the first rule it breaks (its ``reason``); a line that breaks none is loaded. Each rule's
predicate says declaratively what breaks it, and each engine renders every predicate kind over its own reading
of the line (``duckdb.py``: the parsed struct ``p`` and JSON ``j``; ``bigquery.py``: the JSON ``o``) into the
same ``CASE`` with ``reason_case``. The rules from ``pulls_only`` on judge pull lines only: another type's data
is its own business.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pull_events_dagster.warehouse.lines import INVALID_UTF8, LINE_TOO_LARGE

# What a value must be. Absent or null is none of them: ``NotA(kind, path)`` breaks then too, unless ``optional``.
Kind = Literal[
    "value",  # anything but null
    "non-empty string",
    "timestamp",  # a string holding an RFC 3339 timestamp
    "civil datetime",  # a date-time without zone, in BigQuery's canonical DATETIME text
    "integer",  # a JSON number without fraction or exponent, within 64 bits
    "object",
    "array",
]

# What a civil datetime's text must look like: BigQuery's canonical DATETIME text, without zone (a zone-qualified
# body.when is not civil time). Each engine also checks that the date and time exist.
CIVIL_DATETIME = r"^\d{4}-\d{1,2}-\d{1,2}([T ]\d{1,2}:\d{1,2}:\d{1,2}(\.\d{1,6})?)?$"


@dataclass(frozen=True)
class NotUtf8:
    """The line's bytes are not UTF-8. Only the careful reader meets such a line (the engines' own readers refuse
    its object), and names it by ``problem``."""

    problem: ClassVar[str] = INVALID_UTF8


@dataclass(frozen=True)
class TooLong:
    """The line is longer than the load's ``max_line_bytes``: it is never parsed. The careful reader, which keeps
    only its start, names it by ``problem``."""

    problem: ClassVar[str] = LINE_TOO_LARGE


@dataclass(frozen=True)
class NotJsonObject:
    """The line is not one JSON object."""


@dataclass(frozen=True)
class NotA:
    """The value at ``path`` (keys joined by dots) is not a ``kind``; absent or null breaks it unless ``optional``."""

    kind: Kind
    path: str
    optional: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


Predicate = NotUtf8 | TooLong | NotJsonObject | NotA

# A reason is pasted into SQL as a literal: only characters that need no quoting.
_REASON = re.compile(r"^[a-z0-9_]+(:[a-z0-9_.]+)?$")


@dataclass(frozen=True)
class Rule:
    """A line for which ``breaks`` holds (a pull line, when ``pulls_only``) is rejected as ``reason``."""

    reason: str
    breaks: Predicate
    pulls_only: bool = False

    def __post_init__(self) -> None:
        if not _REASON.match(self.reason):
            raise ValueError(f"a reason is a plain word, optionally ':' and a field path: {self.reason!r}")


RULES: tuple[Rule, ...] = (
    # Before the length: the careful reader keeps a line that is not UTF-8 with its bytes as \xNN escapes, which may
    # make it longer than the limit.
    Rule(INVALID_UTF8, NotUtf8()),
    Rule(LINE_TOO_LARGE, TooLong()),
    Rule("invalid_json", NotJsonObject()),
    Rule("missing_attribute:id", NotA("non-empty string", "id")),
    Rule("missing_attribute:source", NotA("non-empty string", "source")),
    Rule("missing_attribute:type", NotA("non-empty string", "type")),
    Rule("invalid_value:time", NotA("timestamp", "time", optional=True)),
    Rule("wrong_type:data", NotA("object", "data"), pulls_only=True),
    Rule("wrong_type:data.body", NotA("object", "data.body"), pulls_only=True),
    Rule("missing_field:body.repository", NotA("value", "data.body.repository"), pulls_only=True),
    Rule("invalid_value:body.when", NotA("civil datetime", "data.body.when"), pulls_only=True),
    Rule("wrong_type:body.error.status", NotA("integer", "data.body.error.status", optional=True), pulls_only=True),
    Rule("wrong_type:actor", NotA("object", "data.actor", optional=True), pulls_only=True),
    Rule("wrong_type:body.policy_results", NotA("array", "data.body.policy_results", optional=True), pulls_only=True),
)


def _check(rules: tuple[Rule, ...]) -> None:
    """The pull rules come last (the CASE skips them for other lines in one arm); each reason names one rule."""
    scopes = [rule.pulls_only for rule in rules]
    if scopes != sorted(scopes):
        raise ValueError("rules judging pull lines only must follow every rule judging all lines")
    reasons = [rule.reason for rule in rules]
    if len(set(reasons)) != len(reasons):
        raise ValueError(f"a reason is given by two rules: {reasons}")


_check(RULES)


def reason_case(render: Callable[[Predicate], str], not_pull: str) -> str:
    """SQL: the reason of the first rule a line breaks, NULL when it breaks none.

    ``render`` gives an engine's condition for a predicate; ``not_pull`` its condition that a line is not a pull
    (its type is a non-empty string by then), under which the pull rules are skipped.
    """
    arms, scoped = [], False
    for rule in RULES:
        if rule.pulls_only and not scoped:
            arms.append(f"WHEN {not_pull} THEN NULL")
            scoped = True
        arms.append(f"WHEN {render(rule.breaks)} THEN '{rule.reason}'")
    return "CASE\n    " + "\n    ".join(arms) + "\n    END"
