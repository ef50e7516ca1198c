"""The careful reading of an object's bytes (``warehouse/lines.py``): the same lines whatever the chunking."""

from __future__ import annotations

import base64
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pull_events.landing import count_lines
from pull_events_dagster.warehouse.lines import (
    INVALID_UTF8,
    LINE_TOO_LARGE,
    PREFIX_BYTES,
    Line,
    read_lines,
    staging_row,
)


def lines_of(data: bytes, max_line_bytes: int = 64, chunk_bytes: int = 7) -> list[Line]:
    return list(read_lines(io.BytesIO(data), max_line_bytes, chunk_bytes))


def test_lines_are_numbered_by_segment_and_blank_ones_skipped() -> None:
    data = b'\xef\xbb\xbf{"a":1}\n\n \t\r\n{"b":2}\r\nlast'
    assert lines_of(data) == [
        Line(1, '{"a":1}', None, 7),
        Line(4, '{"b":2}\r', None, 8),
        Line(5, "last", None, 4),
    ]


def test_an_overlong_line_keeps_only_its_prefix_and_its_neighbours_are_whole() -> None:
    long = b"x" * (PREFIX_BYTES + 5000)
    assert lines_of(b"a\n" + long + b"\nb\n", max_line_bytes=100, chunk_bytes=1000) == [
        Line(1, "a", None, 1),
        Line(2, "x" * PREFIX_BYTES, LINE_TOO_LARGE, len(long)),
        Line(3, "b", None, 1),
    ]


def test_a_line_at_the_limit_is_whole_and_one_byte_more_is_too_large() -> None:
    assert lines_of(b"y" * 64)[0].problem is None
    assert lines_of(b"y" * 65)[0].problem == LINE_TOO_LARGE


def test_bytes_that_are_not_utf8_are_shown_escaped() -> None:
    assert lines_of(b'{"id":"\xff"}\n') == [Line(1, '{"id":"\\xff"}', INVALID_UTF8, 10)]


def test_a_staging_row_is_ascii_and_gives_back_the_line() -> None:
    line = Line(3, "é\\x00" * 40, INVALID_UTF8, 200)
    row = staging_row(12, line)
    object_id, position, problem, text = row.rstrip(b"\n").split(b",")
    assert (object_id, position, problem) == (b"12", b"3", INVALID_UTF8.encode())
    assert base64.b64decode(text).decode() == line.text
    assert row.isascii()


@given(data=st.binary(max_size=300), chunk_bytes=st.integers(1, 40))
def test_any_bytes_give_as_many_lines_as_count_lines_counts_in_any_chunking(data: bytes, chunk_bytes: int) -> None:
    whole = lines_of(data, chunk_bytes=len(data) + 1)
    assert lines_of(data, chunk_bytes=chunk_bytes) == whole
    assert len(whole) == count_lines(data)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_bom_is_dropped_however_small_the_chunks(size: int) -> None:
    assert lines_of(b"\xef\xbb\xbfab\n", chunk_bytes=size) == [Line(1, "ab", None, 2)]
