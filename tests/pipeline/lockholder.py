"""Another process holding a DuckDB file open, as an analyst's session does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_HOLD = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read_only")
connection.execute("SELECT 1").fetchall()
print("holding", flush=True)
sys.stdin.readline()
connection.close()
"""


class LockHolder:
    """A real second process with the file open (read-write, or read-only as docs/querying.md advises) until
    ``release``. A read-only holder needs the file to exist already."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LockHolder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(self.path), "read_only" if self.read_only else "read_write"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "holding":
            raise RuntimeError("the lock-holding process did not open the file")
        return self

    @property
    def pid(self) -> int:
        """The holding process's id, which DuckDB's lock error names."""
        assert self.process is not None
        return self.process.pid

    def release(self) -> None:
        if self.process and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.release()
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
