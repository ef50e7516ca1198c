"""CPU accounting from ``/proc``: what the server, the storage emulator and the machine as a whole used.

Figures are in cores: CPU seconds over wall seconds, so 1.0 is one core busy for the whole interval.
"""

from __future__ import annotations

import os
import time

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (all their threads)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    fields = _stat_fields(str(pid))
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class MachineCpu:
    """Busy cores of the whole machine during a ``with`` block (every process and the kernel)."""

    cores: float = 0.0

    def __enter__(self) -> MachineCpu:
        self._start = _machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = (end - start for end, start in zip(_machine_ticks(), self._start, strict=True))
        self.cores = busy / max(1, total) * (os.cpu_count() or 1)


def machine_busy_cores(seconds: float) -> float:
    """Busy cores of the whole machine over the next ``seconds``."""
    with MachineCpu() as machine:
        time.sleep(seconds)
    return machine.cores


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of all cores since boot, from the first line of ``/proc/stat``."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _stat_fields(pid: str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 is the state, 2 the group)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


class QuietGate:
    """Waits, before a trial, until other work on the machine has stopped, within a budget for the run.

    A trial is only as clean as the machine: another process taking a core skews a 2-core benchmark.
    ``wait()`` samples the whole machine's load (with nothing of the benchmark running) and returns once
    fewer than ``quiet_cores`` are busy, or at once when the run's ``budget`` seconds are spent.
    """

    SAMPLE_SECONDS = 0.2

    def __init__(self, budget: float, quiet_cores: float = 0.25) -> None:
        self.budget = budget
        self.quiet_cores = quiet_cores
        self.waited = 0.0

    def wait(self) -> None:
        while machine_busy_cores(self.SAMPLE_SECONDS) >= self.quiet_cores and self.waited < self.budget:
            self.waited += self.SAMPLE_SECONDS
