"""A progress bar on stderr, only when both stdout and stderr are a terminal: output piped or captured (CI, a
log file, ``| jq``) gets no control sequences, only the final JSON line."""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

from devstack.sender import Results


def on_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """Counts answers into a bar (total ``None``: a counter without a bar). Thread-safe; a no-op off a terminal."""

    def __init__(self, total: int | None, description: str) -> None:
        self._bar = tqdm(total=total, desc=description, unit="ev", file=sys.stderr, disable=not on_terminal())
        self._lock = threading.Lock()

    def update(self, results: Results) -> None:
        with self._lock:
            self._bar.update(results.sent - self._bar.n)
            self._bar.set_postfix_str(f"accepted={results.accepted} refused={results.refused}", refresh=False)

    def close(self) -> None:
        self._bar.close()
