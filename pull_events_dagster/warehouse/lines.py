"""An object's lines read from its bytes: the loads' careful path, and the definition of what a line is.

The fast path of a load hands whole files to the engine's own reader, which numbers lines by the
``landing_line`` the receiver wrote into them. When an object's lines cannot be trusted to account for its
bytes that way (a line without a usable number, bytes that are not UTF-8, an overlong line, a reader that
refuses the file), the object is read here instead: streamed in chunks, split on ``\\n``, every non-blank
segment numbered by its position. Memory stays bounded by ``max_line_bytes`` whatever the object's size:
a longer line is never held whole, only its first ``PREFIX_BYTES`` (for the rejected-events row; the whole
line stays in the landing zone).

Each line is written as one CSV row ``object_id,position,problem,base64(text)``: plain ASCII that both
engines' CSV readers take without quoting rules, so no byte of a hostile line can change how it is read.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pull_events.landing import BLANK_BYTES, UTF8_BOM

LINE_TOO_LARGE = "line_too_large"
INVALID_UTF8 = "invalid_utf8"
# How much of an overlong line its rejected-events row keeps.
PREFIX_BYTES = 4096
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Line:
    """One non-blank line of an object."""

    position: int  # 1-based number of its \n-separated segment
    text: str  # the line as landed; for a problem line, what is kept of it (see the module docstring)
    problem: str | None  # LINE_TOO_LARGE, INVALID_UTF8 or None
    size: int  # its length in bytes


class _Segment:
    """The line being read: its bytes up to the limit, its full size and whether it has content."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.kept = 0
        self.size = 0
        self.content = False

    def add(self, data: bytes, limit: int) -> None:
        self.size += len(data)
        if not self.content and data.strip(BLANK_BYTES):
            self.content = True
        room = limit - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))


def read_lines(stream: BinaryIO, max_line_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Line]:
    """The non-blank lines of ``stream``, in order; a leading UTF-8 byte-order mark is not content."""
    position = 1
    segment = _Segment()
    first = True
    keep = max(max_line_bytes + 1, PREFIX_BYTES)  # enough to tell an overlong line, and its rejected prefix
    # The first read is long enough to hold a whole byte-order mark.
    while chunk := stream.read(max(chunk_bytes, len(UTF8_BOM)) if first else chunk_bytes):
        if first:
            chunk = chunk.removeprefix(UTF8_BOM)
            first = False
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            segment.add(chunk[start:end], keep)
            if segment.content:
                yield _finish(segment, position, max_line_bytes)
            position += 1
            segment = _Segment()
            start = end + 1
        segment.add(chunk[start:], keep)
    if segment.content:
        yield _finish(segment, position, max_line_bytes)


def _finish(segment: _Segment, position: int, max_line_bytes: int) -> Line:
    data = b"".join(segment.parts)
    if segment.size > max_line_bytes:
        prefix = data[:PREFIX_BYTES].decode("utf-8", errors="backslashreplace")
        return Line(position, prefix, LINE_TOO_LARGE, segment.size)
    try:
        return Line(position, data.decode("utf-8"), None, segment.size)
    except UnicodeDecodeError:
        # Bad bytes become \xNN escapes: the rejected row shows where they are, in text any reader can store. Only
        # the prefix is kept, as for an overlong line: escapes would make a whole line up to four times longer.
        prefix = data[:PREFIX_BYTES].decode("utf-8", errors="backslashreplace")
        return Line(position, prefix, INVALID_UTF8, segment.size)


def staging_row(object_id: int, line: Line) -> bytes:
    """One line as a row of the careful path's CSV staging file (see the module docstring)."""
    encoded = base64.b64encode(line.text.encode("utf-8", errors="surrogatepass"))
    return b"%d,%d,%s,%s\n" % (object_id, line.position, (line.problem or "").encode(), encoded)


OBJECT_MISSING = "object_missing"
OBJECT_UNREADABLE = "object_unreadable"


def unreadable_reason(exc: BaseException) -> str | None:
    """Why an object cannot be read at all, for an error that will not pass by retrying; else ``None``.

    A file or blob that is gone, or that the store refuses to give (permissions, a folder where a file was
    listed): the object is quarantined and the rest of the batch loads. Anything else (a timeout, a 5xx) is
    transient: the load fails whole and is retried.
    """
    if isinstance(exc, FileNotFoundError):
        return OBJECT_MISSING
    if isinstance(exc, PermissionError | IsADirectoryError):
        return OBJECT_UNREADABLE
    code = getattr(exc, "code", None)  # google.api_core's HTTP errors
    if code == 404:
        return OBJECT_MISSING
    if code in (403, 412, 416):
        return OBJECT_UNREADABLE
    return None
