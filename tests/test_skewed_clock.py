"""The skewed clock the multi-receiver test relies on is real in the child process: its wall clock (``time.time()``,
``datetime.now()``) runs the offset behind or ahead of ours, and its sleeps and timed waits still work."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.skewed_clock import missing, skewed_clock_env

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

CHILD = """
import asyncio, datetime, json, queue, threading, time
started = time.monotonic()
time.sleep(0.05)
try:
    queue.Queue().get(timeout=0.05)
except queue.Empty:
    pass
threading.Event().wait(0.05)
asyncio.run(asyncio.sleep(0.05))
print(json.dumps({"time": time.time(), "datetime": datetime.datetime.now(datetime.UTC).timestamp(),
                  "waited": time.monotonic() - started}))
"""


@pytest.mark.parametrize("offset", [-120, 120])
def test_a_skewed_process_reads_its_wall_clock_off_by_the_offset_and_still_sleeps(offset: int) -> None:
    before = time.time()
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={"PATH": "/usr/bin:/bin", **skewed_clock_env(offset)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    after = time.time()
    seen = json.loads(result.stdout)
    for clock in ("time", "datetime"):
        # The child read its clock between our two readings, shifted by the offset.
        assert before + offset <= seen[clock] <= after + offset, (clock, seen, before, after)
    # Four waits of 50 ms each ran to their end (none failed, none returned at once).
    assert seen["waited"] >= 0.2
