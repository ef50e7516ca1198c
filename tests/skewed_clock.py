"""A process with its own wall clock: Debian's libfaketime preloaded into it (installed by ``scripts/setup-faketime``).

Only the wall clock moves (``time.time()``, ``datetime.now()``); the monotonic clock stays real, so timeouts, sleeps
and event loops in that process behave as usual. Preloaded first, ``tests/skewed_clock_sleep.c`` works around
libfaketime 0.9.10's handling of monotonic sleeps (see there).
"""

from __future__ import annotations

import glob
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built by scripts/setup-faketime.
MONOTONIC_SLEEP = ROOT / ".cache" / "skewed-clock" / "libmonotonic-sleep.so"
# Where Debian's libfaketime package (and a build from source) puts the library.
_CANDIDATES = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def libfaketime() -> str | None:
    """The path of libfaketime, or None when it is not installed."""
    for pattern in _CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing() -> str | None:
    """What a skewed clock lacks here, or None when it can be had."""
    if libfaketime() is None:
        return "libfaketime is not installed (scripts/setup-faketime)"
    if not MONOTONIC_SLEEP.is_file():
        return f"{MONOTONIC_SLEEP} is not built (scripts/setup-faketime)"
    return None


def skewed_clock_env(offset_seconds: int) -> dict[str, str]:
    """Environment variables that run a process's wall clock ``offset_seconds`` off the real one (negative: behind)."""
    problem = missing()
    if problem is not None:
        raise RuntimeError(problem)
    return {
        "LD_PRELOAD": f"{MONOTONIC_SLEEP} {libfaketime()}",
        "FAKETIME": f"{offset_seconds:+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
