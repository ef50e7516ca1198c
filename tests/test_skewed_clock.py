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
    timed_out = False
except queue.Empty:
    timed_out = True
event_set = threading.Event().wait(0.05)
asyncio.run(asyncio.sleep(0.05))
print(json.dumps({"time": time.time(), "datetime": datetime.datetime.now(datetime.UTC).timestamp(),
                  "waited": time.monotonic() - started, "queue_timed_out": timed_out, "event_set": event_set}))
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
    # The timed waits ended by timing out, as they should with nothing to wait for.
    assert (seen["queue_timed_out"], seen["event_set"]) == (True, False)
    # And none returned at once: four waits of 50 ms each. A wait never ends early on the monotonic clock, so a busy
    # machine can only make this larger: a lower bound by construction, not a timing goal.
    assert seen["waited"] >= 0.2
