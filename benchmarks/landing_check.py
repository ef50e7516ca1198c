"""After a benchmark: is every acknowledged event in the landing zone, exactly once?"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pull_events.landing import LandingStore


@dataclass(frozen=True)
class LandingCheck:
    """What the landing zone holds compared with what the receiver acknowledged."""

    objects: int
    lines: int
    acked: int
    acked_missing: int  # acknowledged but not landed: must be 0
    duplicates: int  # extra copies of an event id: 0 unless a sender retried
    never_sent: int  # landed ids the benchmark never sent: must be 0
    landed_unacked: int  # landed though the answer was not a 2xx (allowed: at-least-once)

    @property
    def ok(self) -> bool:
        return self.acked_missing == 0 and self.duplicates == 0 and self.never_sent == 0 and self.lines >= self.acked

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.lines} lines in {self.objects} objects for {self.acked} acked events "
            f"(missing {self.acked_missing}, duplicates {self.duplicates}, never sent {self.never_sent}, "
            f"landed without 2xx {self.landed_unacked})"
        )


def check_landing(store: LandingStore, sent: Iterable[str], acked: Iterable[str]) -> LandingCheck:
    """Read every object of ``store`` and compare the landed event ids with ``sent`` and ``acked``."""
    keys = [landed.key for landed in store.list_all()]
    with ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(store.read, keys))
    landed = Counter(json.loads(line)["id"] for data in contents for line in data.splitlines() if line)
    sent_ids, acked_ids = set(sent), set(acked)
    return LandingCheck(
        objects=len(keys),
        lines=sum(landed.values()),
        acked=len(acked_ids),
        acked_missing=len(acked_ids - landed.keys()),
        duplicates=sum(count - 1 for count in landed.values()),
        never_sent=len(landed.keys() - sent_ids),
        landed_unacked=len(landed.keys() - acked_ids),
    )
