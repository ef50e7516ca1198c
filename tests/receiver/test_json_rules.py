"""The JSON rules (``pull_events.json_rules``): what each refuses and where, and that what they keep DuckDB
loads with the value Python reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

from pull_events import json_rules
from pull_events.json_rules import MAX_DEPTH, problem_of


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as conn:
        yield conn


def duckdb_data(conn: duckdb.DuckDBPyConnection, line: str) -> tuple[bool, Any]:
    """Whether DuckDB takes ``line`` as JSON, and its ``data`` as a Python value (``None`` when it does not)."""
    loadable, data = conn.execute(
        "SELECT TRY_CAST($1 AS JSON) IS NOT NULL, CASE WHEN TRY_CAST($1 AS JSON) IS NOT NULL "
        "THEN CAST(json_extract($1, '$.data') AS VARCHAR) END",
        [line],
    ).fetchone()
    return loadable, (json.loads(data) if data is not None else None)


def nested(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


@pytest.mark.parametrize(
    ("text", "problem", "path", "detail"),
    [
        (
            r'{"body":{"tag":"\ud800"}}',
            "lone_surrogate",
            ("data", "body", "tag"),
            r"lone surrogate \ud800 (half of a UTF-16 pair without the other half) in the string at data.body.tag",
        ),
        (
            r'{"tag":"x\uDC00"}',
            "lone_surrogate",
            ("data", "tag"),
            r"lone surrogate \udc00 (half of a UTF-16 pair without the other half) in the string at data.tag",
        ),
        (
            r'["\ude00\ud83d"]',  # a pair in the wrong order is two lone halves
            "lone_surrogate",
            ("data", 0),
            r"lone surrogate \ude00 (half of a UTF-16 pair without the other half) in the string at data[0]",
        ),
        (
            r'{"a b":{"k\ud83d":1}}',
            "lone_surrogate",
            ("data", "a b"),
            r"lone surrogate \ud83d (half of a UTF-16 pair without the other half) in the key 'k\ud83d' in "
            r"data['a b']",
        ),
        ('{"body":{"tag":"a","tag":"b"}}', "duplicate_key", ("data", "body"), "duplicate key 'tag' in data.body"),
        ('{"a":1,"\\u0061":2}', "duplicate_key", ("data",), "duplicate key 'a' in data"),
        ('[{"x":[{"k":1,"k":1}]}]', "duplicate_key", ("data", 0, "x", 0), "duplicate key 'k' in data[0].x[0]"),
        ('{"x":NaN}', "non_finite_number", ("data", "x"), "NaN at data.x is not a JSON number"),
        ("[Infinity]", "non_finite_number", ("data", 0), "Infinity at data[0] is not a JSON number"),
        ('{"x":-Infinity}', "non_finite_number", ("data", "x"), "-Infinity at data.x is not a JSON number"),
        (
            '{"x":1e400}',
            "number_out_of_range",
            ("data", "x"),
            "the number 1e400 at data.x is beyond the range of a 64-bit float",
        ),
        (
            '{"x":-1.7976931348623159e308}',
            "number_out_of_range",
            ("data", "x"),
            "the number -1.7976931348623159e308 at data.x is beyond the range of a 64-bit float",
        ),
        (
            '{"x":' + "9" * 400 + "}",
            "number_out_of_range",
            ("data", "x"),
            f"the number {'9' * 60}... at data.x is beyond the range of a 64-bit float",
        ),
        ('{"a":1,', "invalid_json", ("data",), None),
        ('{"a":"\x01"}', "invalid_json", ("data",), None),
    ],
)
def test_each_refused_text_names_its_problem_and_where(
    text: str, problem: str, path: tuple, detail: str | None
) -> None:
    found = problem_of(text.encode(), ("data",))
    assert found is not None
    assert (found.problem, found.path) == (problem, path)
    if detail is not None:
        assert found.detail == detail
    with pytest.raises(json_rules.JSONProblem):
        json_rules.loads(text.encode(), ("data",))


def test_nesting_is_counted_in_the_landed_line(duck: duckdb.DuckDBPyConnection) -> None:
    # data sits at level 2 of the line: it may nest MAX_DEPTH - 1 levels.
    assert problem_of(nested(MAX_DEPTH - 1).encode(), ("data",)) is None
    deep = problem_of(nested(MAX_DEPTH).encode(), ("data",))
    assert deep is not None and deep.problem == "nesting_too_deep"
    assert deep.path == ("data", *[0] * (MAX_DEPTH - 1))
    assert deep.detail.startswith("objects and arrays nest more than 500 levels deep in the landed line, at data[0]")
    # A whole document (structured mode) is the line itself.
    assert problem_of(nested(MAX_DEPTH).encode()) is None
    assert problem_of(nested(MAX_DEPTH + 1).encode()) is not None
    # Objects count like arrays; scalars do not count.
    assert problem_of(('{"k":' * (MAX_DEPTH - 1) + "1" + "}" * (MAX_DEPTH - 1)).encode(), ("data",)) is None
    assert problem_of(('{"k":' * MAX_DEPTH + "[]" + "}" * MAX_DEPTH).encode(), ("data",)) is not None
    # Far deeper than Python's own recursion limit: still this problem, not a crash.
    far = problem_of(nested(50_000).encode(), ("data",))
    assert far is not None and far.problem == "nesting_too_deep"
    # The deepest allowed data loads in DuckDB.
    assert duckdb_data(duck, '{"data":' + nested(MAX_DEPTH - 1) + "}") == (True, json.loads(nested(MAX_DEPTH - 1)))


def test_the_problem_reported_is_the_first_in_document_order() -> None:
    found = problem_of(b'{"a":{"b":NaN},"c":"\\ud800","a":1}', ("data",))
    # The object's own keys come first (duplicate "a"), then what its values hold.
    assert found is not None and found.problem == "duplicate_key"
    found = problem_of(b'{"a":[1,{"b":"\\udfff"}],"c":NaN}', ("data",))
    assert found is not None and (found.problem, found.path) == ("lone_surrogate", ("data", "a", 1, "b"))


def test_long_keys_and_paths_are_cut_in_details() -> None:
    key = "k" * 10_000
    for text in (f'{{"{key}":{{"{key}":[NaN]}}}}', f'{{"{key}":{{"{key}":1,"{key}":2}}}}'):
        found = problem_of(text.encode(), ("data",))
        assert found is not None and found.problem in ("non_finite_number", "duplicate_key")
        assert len(found.detail) < 400, found.detail


def test_whole_text_problems_name_the_text() -> None:
    with pytest.raises(json_rules.JSONProblem) as raised:
        json_rules.loads(b"\xff", (), "the body")
    assert (raised.value.problem, raised.value.detail) == (
        "invalid_json",
        "the body is not UTF-8: invalid start byte at byte 0",
    )
    with pytest.raises(json_rules.JSONProblem) as raised:
        json_rules.loads(b"\xef\xbb\xbf{}", ("data",))
    assert raised.value.detail == "data is not valid JSON: it starts with a byte-order mark"


@pytest.mark.parametrize(
    "text",
    [
        r'"\ud800"',
        r'"\udc00"',
        r'"\ude00\ud83d"',
        r'"\ud83dx"',
        r'{"\ud800":1}',
    ],
)
def test_duckdb_cannot_load_a_lone_surrogate_python_reads(duck: duckdb.DuckDBPyConnection, text: str) -> None:
    json.loads(text)  # Python takes it...
    assert duckdb_data(duck, '{"data":' + text + "}")[0] is False  # ...the warehouse does not
    assert problem_of(text.encode(), ("data",)).problem == "lone_surrogate"


def test_duckdb_and_python_read_duplicate_keys_differently(duck: duckdb.DuckDBPyConnection) -> None:
    line = '{"data":{"tag":"first","tag":"last"}}'
    assert json.loads(line)["data"]["tag"] == "last"
    [(first,)] = duck.execute("SELECT json_extract_string(?, '$.data.tag')", [line]).fetchall()
    assert first == "first"


@pytest.mark.parametrize(
    "text",
    [
        r'"\ud83d\ude00"',  # an escaped pair is one astral character
        r'"\uD83D\uDE00"',
        '"😀 naïve \u2028 \u2029 \x7f"',
        r'"\u0000 \uffff \ufeff"',
        r'{"":1,"A":2,"a":3}',
        "123456789012345678901234567890",  # beyond uint64: DuckDB keeps the text, BigQuery rounds
        "-9223372036854775809",
        "18446744073709551616",
        "1" + "0" * 308,  # 309 digits, still a double
        "1.7976931348623157e308",
        "1e-400",  # underflows to 0.0 everywhere
        "0e400",
        "0.1000000000000000055511151231257827",
        "-0",
        "-0.0",
        "1E+2",
        "[" * (MAX_DEPTH - 2) + '{"k":"v"}' + "]" * (MAX_DEPTH - 2),  # MAX_DEPTH - 1 levels with the object
    ],
)
def test_what_the_rules_keep_duckdb_loads_with_the_same_value(duck: duckdb.DuckDBPyConnection, text: str) -> None:
    value = json_rules.loads(text.encode(), ("data",))
    assert duckdb_data(duck, '{"data":' + text + "}") == (True, value)
