"""Deliberate typos in SQL text, one of each kind the analyzer must catch.

Each mutant changes the first place in a statement where the typo can be made, outside comments and string
literals (a typo there changes nothing the analyzer reads):

- ``function``: a misspelt function (``COUNTIF(`` -> ``COUNTIFF(``); the analyzer must say ``Function not found``;
- ``column``: a misspelt column of ``schema.py`` where it is read (not where an alias names it): ``repository`` ->
  ``repositoy``; the analyzer must name the misspelt (or, when a temp table's column was renamed, the missing) name;
- ``type``: a value of the wrong type: a compared string literal becomes a number (``= 'tag'`` -> ``= 1``), else a
  number becomes a string (``0`` -> ``'0'``), else a script variable or parameter becomes a string (``'x'``); the
  analyzer must refuse the types (no matching signature, no coercion, not an integer). A statement whose only
  typed value is a query parameter gets the typo where it is made, in Python: the parameter declared as a STRING
  (``mistyped_parameters``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.cloud import bigquery

from pull_events_dagster.warehouse.schema import TABLES, Column

KINDS = ("function", "column", "type")
# Upper-case words followed by "(" that are syntax, not functions.
_NOT_FUNCTIONS = {"ARRAY", "STRUCT", "UNNEST", "CAST", "SAFE_CAST", "EXTRACT", "IN", "AS", "VALUES", "EXISTS", "OVER"}
_FUNCTION = re.compile(r"\b([A-Z][A-Z0-9_]*)\(")
_COMPARED_STRING = re.compile(r"(?:!=|=)\s*('[^'\\]*')")
_NUMBER = re.compile(r"(?<![\w.'\"])(?<!INTERVAL )(\d+)(?![\w.'\"])")  # INTERVAL '1' DAY is one too
_VALUE = re.compile(r"(?<![\w.`])(?<!LIMIT )(v_[a-z_]+|@[a-z_]+)\b")  # LIMIT takes no expression


@dataclass(frozen=True)
class Mutant:
    kind: str
    text: str  # the whole statement, mutated
    original: str  # what was changed
    replacement: str

    def expected(self) -> re.Pattern[str]:
        """What the analyzer's message must say."""
        if self.kind == "function":
            return re.compile(rf"Function not found: {re.escape(self.replacement.rstrip('('))}\b")
        if self.kind == "column":
            return re.compile(rf"\b({re.escape(self.replacement)}|{re.escape(self.original)})\b")
        return re.compile(r"No matching signature|does not coerce|Could not cast|cannot be|must be|expects")


def _column_names(columns: tuple[Column, ...] | list[Column]) -> Iterator[str]:
    for column in columns:
        yield column.name
        yield from _column_names(column.fields)


COLUMNS = sorted({name for columns in TABLES.values() for name in _column_names(columns) if len(name) > 2})
_COLUMN = re.compile(r"(?<![\w.`])(" + "|".join(map(re.escape, COLUMNS)) + r")(?![\w`])")


def _code_positions(text: str) -> list[bool]:
    """For each character: whether it is SQL code (not a comment, not inside a string literal)."""
    code = [True] * len(text)
    index, quote = 0, None
    while index < len(text):
        char = text[index]
        if quote:
            code[index] = False
            if char == "\\":
                code[index + 1 : index + 2] = [False]
                index += 1
            elif char == quote:
                quote = None
        elif text.startswith("--", index):
            end = text.find("\n", index)
            end = len(text) if end < 0 else end
            code[index:end] = [False] * (end - index)
            index = end
            continue
        elif char in "'\"":
            quote = char
        index += 1
    return code


def _first(pattern: re.Pattern[str], text: str, code: list[bool], accept=lambda m: True) -> re.Match[str] | None:
    return next((m for m in pattern.finditer(text) if code[m.start(1)] and accept(m)), None)


def _replace(text: str, match: re.Match[str], group: int, replacement: str) -> str:
    return text[: match.start(group)] + replacement + text[match.end(group) :]


def _not_an_alias(text: str, match: re.Match[str]) -> bool:
    """A column read, not named: not ``AS name``, nor the column list of an INSERT (no typo check there... it is
    checked too, but as a different message)."""
    return not re.search(r"\bAS\s+$", text[: match.start()])


def mutate(statement: str, kind: str) -> Mutant | None:
    """The statement with one typo of ``kind`` (None when it has no place for one)."""
    code = _code_positions(statement)
    if kind == "function":
        found = _first(_FUNCTION, statement, code, lambda m: m.group(1) not in _NOT_FUNCTIONS)
        if found is None:
            return None
        name = found.group(1)
        misspelt = name + name[-1]
        return Mutant(kind, _replace(statement, found, 1, misspelt), name, misspelt)
    if kind == "column":
        found = _first(_COLUMN, statement, code, lambda m: _not_an_alias(statement, m))
        if found is None:
            return None
        name = found.group(1)
        misspelt = name[:-2] + name[-1]  # a letter dropped: repository -> repositoy
        return Mutant(kind, _replace(statement, found, 1, misspelt), name, misspelt)
    for pattern, change in (
        (_COMPARED_STRING, lambda literal: "1"),
        (_NUMBER, lambda number: f"'{number}'"),
        (_VALUE, lambda value: "'x'"),
    ):
        found = _first(pattern, statement, code)
        if found is not None:
            return Mutant(
                kind, _replace(statement, found, 1, change(found.group(1))), found.group(1), change(found.group(1))
            )
    return None


def mistyped_parameters(parameters: tuple[Any, ...], statement: str) -> tuple[tuple[Any, ...], str] | None:
    """The job's parameters with the first INT64 one the statement uses declared as a STRING, and its name."""
    for index, parameter in enumerate(parameters):
        used = re.search(rf"@{parameter.name}\b", statement)
        if used and isinstance(parameter, bigquery.ScalarQueryParameter) and parameter.type_ == "INT64":
            mistyped = bigquery.ScalarQueryParameter(parameter.name, "STRING", str(parameter.value))
            return (*parameters[:index], mistyped, *parameters[index + 1 :]), parameter.name
    return None
