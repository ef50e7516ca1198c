"""Landing stores that misbehave on purpose, for backpressure and timeout tests.

They are a declared stand-in for "the landing zone is slow": a real local store whose writes wait for
the test to open a gate. Everything else (the write itself, fsync, atomic link) is the real store.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pull_events.landing import LocalLandingStore


class GatedStore(LocalLandingStore):
    """A ``LocalLandingStore`` whose ``write_new`` blocks until ``open_gate()``; counts writes started."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.writes_started = 0
        self._started = threading.Condition()

    def write_new(self, key: str, data: bytes) -> None:
        with self._started:
            self.writes_started += 1
            self._started.notify_all()
        self.gate.wait()
        super().write_new(key, data)

    def open_gate(self) -> None:
        self.gate.set()

    def wait_for_writes(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` writes have started (and are held at the gate)."""
        with self._started:
            if not self._started.wait_for(lambda: self.writes_started >= count, timeout):
                raise TimeoutError(f"only {self.writes_started} of {count} writes started")
