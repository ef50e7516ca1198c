"""Another process holding a DuckDB file open, as an analyst's session does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_HOLD = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1])
connection.execute("SELECT 1").fetchall()
print("holding", flush=True)
sys.stdin.readline()
connection.close()
"""


class LockHolder:
    """A real second process with the file open read-write until ``release``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LockHolder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(self.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "holding":
            raise RuntimeError("the lock-holding process did not open the file")
        return self

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
