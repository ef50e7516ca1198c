"""A 202 always means a loadable line: JSON the warehouse cannot load faithfully is a 400 naming the problem,
a line longer than the pipeline loads is a 413, and whatever is acknowledged DuckDB loads with the value sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pull_events import json_rules
from pull_events.landing import LocalLandingStore
from tests.receiver.conftest import MakeReceiver
from tests.receiver.deliveries import binary_delivery, compact_json, landed_lines, new_id, pull_event
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ThreadedReceiver

PULL = "dev.chainguard.registry.pull.v1"


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as conn:
        yield conn


def post_binary(receiver: ThreadedReceiver, issuer: LocalIssuer, body: bytes, **attributes: str) -> Any:
    event_attributes, _ = pull_event(id=new_id(), **attributes)
    return receiver.post(binary_delivery(event_attributes, body, issuer), body)


def structured_body(data_text: str, **extra: str) -> bytes:
    """A structured-mode document around ``data_text`` (JSON text), with ``extra`` members as raw JSON text."""
    attributes, _ = pull_event(id=new_id())
    members = [f"{json.dumps(name)}:{json.dumps(value)}" for name, value in attributes.items()]
    members += [f"{json.dumps(name)}:{text}" for name, text in extra.items()]
    members.append(f'"data":{data_text}')
    return ("{" + ",".join(members) + "}").encode()


def post_structured(receiver: ThreadedReceiver, issuer: LocalIssuer, body: bytes) -> Any:
    headers = {"Content-Type": "application/cloudevents+json", "Authorization": f"Bearer {issuer.token(body)}"}
    return receiver.post(headers, body)


def assert_nothing_landed(landing_dir: Path) -> None:
    landed = [p for p in landing_dir.rglob("*") if p.is_file()]
    assert landed == [], f"a refused request landed {landed}"


def assert_refused(response: Any, status: int, error: str, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": error, "detail": detail}


def landed_line(store: LocalLandingStore, answer: dict[str, Any]) -> bytes:
    """The line an acknowledgement names."""
    return store.read(answer["object"]).split(b"\n")[answer["line"] - 1]


def pull_data_with(tag_text: str) -> str:
    """The fixture pull data as JSON text, with ``body.tag`` replaced by the JSON text ``tag_text``."""
    _, data = pull_event()
    data["body"]["tag"] = "TAG"
    return compact_json(data).decode().replace('"TAG"', tag_text)


# --- refusals, each named ---------------------------------------------------------------------------------------

LONE = "lone surrogate \\ud800 (half of a UTF-16 pair without the other half)"


@pytest.mark.parametrize(
    ("data_text", "error", "detail"),
    [
        (pull_data_with(r'"\ud800"'), "lone_surrogate", f"{LONE} in the string at data.body.tag"),
        (pull_data_with(r'"v1\uD800"'), "lone_surrogate", f"{LONE} in the string at data.body.tag"),
        (pull_data_with(r'{"\ud800":1}'), "lone_surrogate", f"{LONE} in the key '\\ud800' in data.body.tag"),
        (pull_data_with('"latest","tag":"other"'), "duplicate_key", "duplicate key 'tag' in data.body"),
        ('{"actor":{},"body":{},"actor":{}}', "duplicate_key", "duplicate key 'actor' in data"),
        (pull_data_with("NaN"), "non_finite_number", "NaN at data.body.tag is not a JSON number"),
        (pull_data_with("[Infinity]"), "non_finite_number", "Infinity at data.body.tag[0] is not a JSON number"),
        (pull_data_with("-Infinity"), "non_finite_number", "-Infinity at data.body.tag is not a JSON number"),
        (
            pull_data_with("1e400"),
            "number_out_of_range",
            "the number 1e400 at data.body.tag is beyond the range of a 64-bit float",
        ),
        (
            pull_data_with("1" * 400),
            "number_out_of_range",
            f"the number {'1' * 60}... at data.body.tag is beyond the range of a 64-bit float",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_json_the_warehouse_cannot_load_is_400_naming_the_problem(
    receiver: ThreadedReceiver,
    issuer: LocalIssuer,
    landing_dir: Path,
    mode: str,
    data_text: str,
    error: str,
    detail: str,
) -> None:
    if mode == "binary":
        response = post_binary(receiver, issuer, data_text.encode())
    else:
        response = post_structured(receiver, issuer, structured_body(data_text))
    assert_refused(response, 400, error, detail)
    assert_nothing_landed(landing_dir)


@pytest.mark.parametrize(
    ("extra", "error", "detail"),
    [
        ({"id": '"again"'}, "duplicate_key", "duplicate key 'id' in the top level"),
        ({"myext": r'"\udc00"'}, "lone_surrogate", f"{LONE.replace('d800', 'dc00')} in the string at myext"),
        ({"retries": "NaN"}, "non_finite_number", "NaN at retries is not a JSON number"),
        (
            {"retries": "-1e999"},
            "number_out_of_range",
            "the number -1e999 at retries is beyond the range of a 64-bit float",
        ),
    ],
)
def test_a_structured_envelope_follows_the_same_rules(
    receiver: ThreadedReceiver, issuer: LocalIssuer, landing_dir: Path, extra: dict[str, str], error: str, detail: str
) -> None:
    _, data = pull_event()
    response = post_structured(receiver, issuer, structured_body(compact_json(data).decode(), **extra))
    assert_refused(response, 400, error, detail)
    assert_nothing_landed(landing_dir)


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_nesting_is_limited_to_what_bigquery_parses_in_the_landed_line(
    receiver: ThreadedReceiver,
    issuer: LocalIssuer,
    local_store: LocalLandingStore,
    duck: duckdb.DuckDBPyConnection,
    mode: str,
) -> None:
    # data is level 2 of the line (inside the record object) in both modes.
    deepest = nested(json_rules.MAX_DEPTH - 1)
    too_deep = nested(json_rules.MAX_DEPTH)
    send = (
        (lambda text: post_binary(receiver, issuer, text.encode()))
        if mode == "binary"
        else (lambda text: post_structured(receiver, issuer, structured_body(text)))
    )
    refused = send(too_deep)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "nesting_too_deep"
    assert refused.json()["detail"].startswith(
        "objects and arrays nest more than 500 levels deep in the landed line, at data[0][0]"
    )
    assert list(local_store.list_all()) == []

    accepted = send(deepest)
    assert accepted.status_code == 202, accepted.text
    line = landed_line(local_store, accepted.json()).decode()
    [(loadable, data)] = duck.execute(
        "SELECT TRY_CAST(? AS JSON) IS NOT NULL, CAST(json_extract(?, '$.data') AS VARCHAR)", [line, line]
    ).fetchall()
    assert loadable and json.loads(data) == json.loads(deepest)


def test_an_escaped_surrogate_pair_is_one_character_and_lands(
    receiver: ThreadedReceiver, issuer: LocalIssuer, local_store: LocalLandingStore, duck: duckdb.DuckDBPyConnection
) -> None:
    body = pull_data_with(r'"\ud83d\ude00 \uD83D\uDE00"').encode()
    response = post_binary(receiver, issuer, body)
    assert response.status_code == 202, response.text
    line = landed_line(local_store, response.json()).decode()
    [(tag,)] = duck.execute("SELECT json_extract_string(?, '$.data.body.tag')", [line]).fetchall()
    assert tag == "😀 😀"


# --- the line limit -----------------------------------------------------------------------------------------------


def test_an_event_whose_line_would_be_over_the_limit_is_413_and_at_the_limit_lands(
    make_receiver: MakeReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    limit = 64 * 1024
    # One event per object, so every line is numbered 1 and the receiver's bound is the exact length.
    receiver = make_receiver(store=local_store, PULL_EVENTS_MAX_LINE_BYTES=str(limit), PULL_EVENTS_BATCH_MAX_EVENTS="1")

    def padded(size: int) -> bytes:
        _, data = pull_event()
        data["body"]["user_agent"] = "x" * size
        return compact_json(data)

    first = post_binary(receiver, issuer, padded(100))
    assert first.status_code == 202, first.text
    short = len(landed_line(local_store, first.json()))
    room = limit - short  # what the user agent can grow by; every other part of the line keeps its length

    at_limit = post_binary(receiver, issuer, padded(100 + room))
    assert at_limit.status_code == 202, at_limit.text
    assert len(landed_line(local_store, at_limit.json())) == limit

    over = post_binary(receiver, issuer, padded(100 + room + 1))
    assert_refused(
        over,
        413,
        "line_too_large",
        f"the event's landed line would be {limit + 1} bytes, over the limit of {limit} bytes per line",
    )
    assert len(landed_lines(local_store)) == 2  # nothing of the refused event


def test_escaping_that_lengthens_the_line_is_counted(
    make_receiver: MakeReceiver, issuer: LocalIssuer, local_store: LocalLandingStore
) -> None:
    # U+2028 is 3 bytes in the body and 6 escaped in the line: a body well under the limit can be over it.
    limit = 64 * 1024
    receiver = make_receiver(store=local_store, PULL_EVENTS_MAX_LINE_BYTES=str(limit))
    _, data = pull_event()
    data["body"]["user_agent"] = "\u2028" * (limit // 5)
    body = compact_json(data)
    assert len(body) < limit
    response = post_binary(receiver, issuer, body)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "line_too_large"
    assert landed_lines(local_store) == []


# --- property: 202 exactly when the rules accept, and every 202 loads with the value sent ---------------------------

_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def _raw_char(char: str) -> str:
    if char in _QUOTE_ESCAPES:
        return _QUOTE_ESCAPES[char]
    if ord(char) < 0x20:
        return f"\\u{ord(char):04x}"
    return char


def _escape(code: int, upper: bool) -> str:
    text = f"\\u{code:04x}"
    return text.upper().replace("\\U", "\\u") if upper else text


def _pair(code: int, upper: bool) -> str:
    high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
    return _escape(high, upper) + _escape(low, upper)


_string_piece = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=4).map(
        lambda text: "".join(map(_raw_char, text))
    ),
    st.sampled_from(["a", "tag", "é", "😀", "\u2028", "\x7f", " "]),
    st.builds(_escape, st.integers(0, 0xFFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF), st.booleans()),
    st.builds(_pair, st.integers(0x10000, 0x10FFFF), st.booleans()),
    st.builds(_escape, st.integers(0xD800, 0xDFFF), st.booleans()),  # lone (unless two happen to pair up)
    st.sampled_from(["\\n", "\\t", "\\/", "\\b", "\\f", "\\r", '\\"', "\\\\"]),
)
_string = st.lists(_string_piece, max_size=5).map(lambda pieces: '"' + "".join(pieces) + '"')
# Few distinct keys, some spelled two ways ("a" and "\u0061"), so duplicates happen.
_key = st.one_of(st.sampled_from(['"a"', '"b"', '"tag"', '"\\u0061"', '"é"', '"\\u00e9"', '""']), _string)
_number = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-(10**330), 10**330).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.builds(
        lambda whole, fraction, exponent, e: f"{whole}.{fraction}{e}{exponent}",
        st.integers(-999, 999),
        st.integers(0, 10**20),
        st.integers(-420, 420),
        st.sampled_from(["e", "E", "e+"]),
    ).map(lambda text: text.replace("e+-", "e-")),
)
_scalar = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    _number,
    _string,
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
)
_separator = st.sampled_from([",", ",", ", ", ",\n", "\t,\r\n"])


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    array = st.tuples(st.lists(children, max_size=4), _separator).map(lambda t: "[" + t[1].join(t[0]) + "]")
    members = st.lists(st.tuples(_key, children).map(lambda kv: f"{kv[0]}:{kv[1]}"), max_size=4)
    obj = st.tuples(members, _separator).map(lambda t: "{" + t[1].join(t[0]) + "}")
    return st.one_of(array, obj)


_value = st.recursive(_scalar, _containers, max_leaves=12)
# Near the nesting limit: data may nest MAX_DEPTH - 1 levels in the line.
_deep = st.builds(
    lambda levels, inner, objects: (
        ('{"k":' * levels + inner + "}" * levels) if objects else ("[" * levels + inner + "]" * levels)
    ),
    st.integers(json_rules.MAX_DEPTH - 4, json_rules.MAX_DEPTH + 1),
    st.one_of(_scalar, st.just("[]"), st.just('{"a":[1]}')),
    st.booleans(),
)
_data_text = st.one_of(_value, _value, _value, _deep)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data_text=_data_text, mode=st.sampled_from(["binary", "structured"]))
def test_202_exactly_when_the_rules_accept_and_every_202_loads_with_the_value_sent(
    receiver: ThreadedReceiver,
    issuer: LocalIssuer,
    local_store: LocalLandingStore,
    duck: duckdb.DuckDBPyConnection,
    data_text: str,
    mode: str,
) -> None:
    before = len(landed_lines(local_store))
    if mode == "binary":
        body = data_text.encode()
        problem = json_rules.problem_of(body, ("data",))
        response = post_binary(receiver, issuer, body)
    else:
        body = structured_body(data_text)
        problem = json_rules.problem_of(body)
        response = post_structured(receiver, issuer, body)

    event(f"{mode}: {problem.problem if problem else 'accepted'}")  # the mix, shown by --hypothesis-show-statistics
    if problem is not None:
        assert response.status_code == 400, response.text
        assert response.json() == {"error": problem.problem, "detail": problem.detail}
        assert len(landed_lines(local_store)) == before
        return
    assert response.status_code == 202, response.text
    line = landed_line(local_store, response.json()).decode()
    [(loadable, data)] = duck.execute(
        "SELECT TRY_CAST(? AS JSON) IS NOT NULL, CAST(json_extract(?, '$.data') AS VARCHAR)", [line, line]
    ).fetchall()
    assert loadable, line
    assert json.loads(data) == json.loads(data_text)
