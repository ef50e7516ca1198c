"""What JSON a landed line may hold: exactly what both warehouses load faithfully.

One definition for both sides. The receiver refuses (400) any event whose JSON breaks a rule, so an
acknowledged event is always a loadable line; the pipeline can apply the same rules to the lines it reads.
``loads(raw, at)`` parses strictly and raises ``JSONProblem``: a machine-readable ``problem`` and a detail
naming where, as a JSON path in the landed line (``data.body.tag``).

Python's ``json`` accepts more than the warehouses do, and reads some of it differently. Found by probing
DuckDB (``TRY_CAST(? AS JSON)``, ``json_extract``, ``json_extract_string``) and by reading ZetaSQL's JSON
parser, which BigQuery's ``PARSE_JSON(line, wide_number_mode => 'round')`` is:

- ``lone_surrogate``: an escaped UTF-16 half without its partner (``"\\ud800"``, ``"\\udc00"``, a reversed
  pair ``"\\ude00\\ud83d"``, in a value or a key). Python decodes it into a ``str`` holding the half; DuckDB
  refuses the whole line ("no low surrogate in string", ``TRY_CAST`` gives NULL) and so does BigQuery.
- ``duplicate_key``: the same key twice in one object, at any depth (``{"a":1,"a":2}``). Python keeps the last
  value; DuckDB keeps both in the text and ``json_extract_string`` answers the first; BigQuery keeps the first.
- ``non_finite_number``: the tokens ``NaN``, ``Infinity``, ``-Infinity``. Not JSON (RFC 8259); Python and DuckDB
  take them, BigQuery refuses the line.
- ``number_out_of_range``: a number beyond a 64-bit float (``1e400``, ``1.7976931348623159e308``, an integer of
  310 digits). Python reads ``inf`` (or an int), DuckDB keeps the text, BigQuery refuses ("number overflow").
- ``nesting_too_deep``: objects and arrays nested more than ``MAX_DEPTH`` (500) levels in the landed line, where
  an event's ``data`` starts at level 2. BigQuery's limit (ZetaSQL counts containers, not scalars: a limit of 1
  allows ``[10,20]`` but not ``{"a":[10]}``); DuckDB took 1,100; Python fails near 1,000.
- ``invalid_json``: anything Python's strict parser refuses (syntax, raw control characters, bytes that are not
  UTF-8, a byte-order mark). BigQuery refuses these too; DuckDB is laxer (it takes a trailing comma).

Kept, because every reader gets the value the text names: integers beyond int64 and uint64 (DuckDB keeps their
text, BigQuery rounds them to the nearest double, as ``docs/querying.md`` says); any number that parses as a
finite double, including underflow (``1e-400`` is 0.0 everywhere) and more digits than a double holds
(``0.1000000000000000055511151231257827`` is 0.1 everywhere); ``-0``; ``\\u0000``, non-characters (``\\uffff``),
U+2028/U+2029 and raw DEL in strings and keys; the empty key; keys differing only in case; scalars at the top.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

MAX_DEPTH = 500

INVALID_JSON = "invalid_json"
LONE_SURROGATE = "lone_surrogate"
DUPLICATE_KEY = "duplicate_key"
NON_FINITE_NUMBER = "non_finite_number"
NUMBER_OUT_OF_RANGE = "number_out_of_range"
NESTING_TOO_DEEP = "nesting_too_deep"
PROBLEMS = (INVALID_JSON, LONE_SURROGATE, DUPLICATE_KEY, NON_FINITE_NUMBER, NUMBER_OUT_OF_RANGE, NESTING_TOO_DEEP)

Path = tuple[str | int, ...]

# An integer of at most this many characters is below 1e308, so it cannot overflow a double.
_SAFE_INT_CHARS = 308
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Keys and numbers quoted in a detail are cut to this many characters: a hostile one can be megabytes.
_SHOWN = 60


class JSONProblem(ValueError):
    """JSON that breaks a rule: ``problem`` (one of ``PROBLEMS``), where it is, and a human ``detail``."""

    def __init__(self, problem: str, path: Path, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.path = path
        self.detail = detail


def loads(raw: bytes, at: Path = (), name: str | None = None) -> Any:
    """The value of the JSON text ``raw`` if it follows every rule, else raises ``JSONProblem``.

    ``at`` is where the value sits in the landed line (``("data",)`` for an event's data, ``()`` for a whole
    event document): it sets the nesting allowed and prefixes every path. ``name`` is what a detail calls
    the text as a whole (default: its path).
    """
    subject = name or render_path(at)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONProblem(INVALID_JSON, at, f"{subject} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if text.startswith("\ufeff"):  # json.loads refuses it as well, but only when given bytes
        raise JSONProblem(INVALID_JSON, at, f"{subject} is not valid JSON: it starts with a byte-order mark")
    try:
        value = _STRICT.decode(text)
    except _Broken:
        raise _locate(text, at, subject) from None
    except RecursionError:
        # Only far beyond MAX_DEPTH: Python's limit is about twice as deep.
        raise JSONProblem(NESTING_TOO_DEEP, at, _too_deep(subject)) from None
    except ValueError as exc:
        raise JSONProblem(INVALID_JSON, at, f"{subject} is not valid JSON: {exc}") from None
    # Both checks below cost a walk of the value, so they run only when the raw text makes a problem possible:
    # Python turns an escaped pair into one character, so a surrogate left in a string was a lone escape
    # (raw UTF-8 cannot hold one); and nesting deeper than the allowance needs more brackets than that.
    # A backslash is found by memchr, far faster than the escape itself, and is rare in real events.
    if b"\\" in raw and (b"\\ud" in raw or b"\\uD" in raw) and _has_surrogate(value):
        raise _locate(text, at, subject)
    allowed = MAX_DEPTH - len(at)
    if len(raw) > 2 * allowed and raw.count(b"[") + raw.count(b"{") > allowed and _deeper_than(value, allowed):
        raise _locate(text, at, subject)
    return value


def problem_of(raw: bytes, at: Path = ()) -> JSONProblem | None:
    """The problem ``loads`` would raise for ``raw``, or ``None`` when the text follows every rule."""
    try:
        loads(raw, at)
    except JSONProblem as problem:
        return problem
    return None


def render_path(path: Path) -> str:
    """A path as a detail shows it: ``data.body.tag``, ``data.items[0]``, ``data['a key']``; ``()`` is the top."""
    if not path:
        return "the top level"
    parts: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _IDENTIFIER.match(segment):
            parts.append(f".{_cut(segment)}" if parts else _cut(segment))
        else:
            parts.append(f"[{_quoted(segment)}]")
    return "".join(parts)


# --- the strict parse: hooks that stop at the first broken rule --------------------------------------------------


class _Broken(Exception):
    """Raised inside the parse by a hook; ``_locate`` then finds and names the problem."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _Broken()
    return value


def _no_constant(token: str) -> Any:
    raise _Broken()


def _finite_int(text: str) -> int:
    if len(text) > _SAFE_INT_CHARS and math.isinf(float(text)):
        raise _Broken()
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Broken()
    return value


# Built once: json.loads builds a new decoder on every call given options.
_STRICT = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=_finite_int, parse_float=_finite_float
)


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            if any(_SURROGATE.search(key) for key in node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _deeper_than(value: Any, levels: int) -> bool:
    """Whether objects and arrays nest more than ``levels`` deep in ``value`` (a container is one level)."""
    # Level by level, keeping only containers: the cheapest walk in pure Python.
    frontier = [value] if isinstance(value, dict | list) else []
    level = 1
    while frontier:
        if level > levels:
            return True
        below: list[Any] = []
        for node in frontier:
            below += [
                child for child in (node.values() if isinstance(node, dict) else node) if isinstance(child, dict | list)
            ]
        frontier = below
        level += 1
    return False


# --- naming the problem: a second, permissive parse, walked in document order ---------------------------------
# Only for text already known to break a rule, so its cost does not matter.


class _Pairs(list[tuple[str, Any]]):
    """An object with every key as written, duplicates included."""


class _Constant(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` as written."""


class _Number(str):
    """A number as written."""


_PERMISSIVE = json.JSONDecoder(
    object_pairs_hook=_Pairs, parse_constant=_Constant, parse_int=_Number, parse_float=_Number
)


def _locate(text: str, at: Path, subject: str) -> JSONProblem:
    """The first problem of ``text`` in document order (an object's keys before what its values hold)."""
    try:
        value = _PERMISSIVE.decode(text)
    except RecursionError:
        return JSONProblem(NESTING_TOO_DEEP, at, _too_deep(subject))
    except ValueError as exc:
        return JSONProblem(INVALID_JSON, at, f"{subject} is not valid JSON: {exc}")
    stack: list[Iterator[tuple[Path, Any]]] = [iter([(at, value)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, node = item
        if isinstance(node, list):
            if len(path) + 1 > MAX_DEPTH:
                return JSONProblem(NESTING_TOO_DEEP, path, _too_deep(_at(path)))
            if isinstance(node, _Pairs):
                if problem := _key_problem(node, path):
                    return problem
                stack.append(_members(path, node))
            else:
                stack.append(_members(path, enumerate(node)))
        elif isinstance(node, _Constant):
            return JSONProblem(NON_FINITE_NUMBER, path, f"{node} at {_at(path)} is not a JSON number")
        elif isinstance(node, _Number):
            if math.isinf(float(node)):
                return JSONProblem(
                    NUMBER_OUT_OF_RANGE,
                    path,
                    f"the number {_cut(node)} at {_at(path)} is beyond the range of a 64-bit float",
                )
        elif isinstance(node, str) and (found := _SURROGATE.search(node)):
            return JSONProblem(LONE_SURROGATE, path, f"{_lone(found.group())} in the string at {_at(path)}")
    # Unreachable while the two parses agree; a refusal without a path beats an unloadable line.
    return JSONProblem(INVALID_JSON, at, f"{subject} breaks a JSON rule of the warehouse")


def _members(path: Path, members: Iterable[tuple[str | int, Any]]) -> Iterator[tuple[Path, Any]]:
    # A function, not a generator expression in the loop: that would read the loop's later ``path``.
    for key, member in members:
        yield (*path, key), member


def _key_problem(pairs: _Pairs, path: Path) -> JSONProblem | None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return JSONProblem(DUPLICATE_KEY, path, f"duplicate key {_quoted(key)} in {_at(path)}")
        if found := _SURROGATE.search(key):
            detail = f"{_lone(found.group())} in the key {_quoted(key)} in {_at(path)}"
            return JSONProblem(LONE_SURROGATE, path, detail)
        seen.add(key)
    return None


def _too_deep(where: str) -> str:
    return f"objects and arrays nest more than {MAX_DEPTH} levels deep in the landed line, at {where}"


def _at(path: Path) -> str:
    """A path for a detail: its middle left out when long (a path can be 500 keys deep)."""
    where = render_path(path)
    return where if len(where) <= 240 else f"{where[:80]}...{where[-150:]}"


def _lone(surrogate: str) -> str:
    return f"lone surrogate \\u{ord(surrogate):04x} (half of a UTF-16 pair without the other half)"


def _quoted(key: str) -> str:
    """A key as Python writes it (``'tag'``; a lone surrogate shows as its escape), cut when long."""
    return repr(key) if len(key) <= _SHOWN else repr(key[:_SHOWN]) + "..."


def _cut(text: str, limit: int = _SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
