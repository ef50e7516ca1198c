"""Whether this receiver can take deliveries now: what ``/readyz`` answers.

Ready means a delivery would be acknowledged: the receiver is not shutting down, the landing zone takes a real
write (locally: a synced page of data, so a full disk fails it, and at least ``min_free_bytes`` free, so it
stops being ready before the disk is full), and a signing key of the issuer is usable (fetched now if none is
cached: an issuer unreachable since start-up means every delivery would be a 503). Nothing is remembered
between checks, so readiness comes back on its own as soon as the cause clears.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from pull_events.landing import LandingStore, LandingUnavailable, LocalLandingStore
from receiver.auth import ChainguardVerifier
from receiver.batcher import Batcher
from receiver.errors import Unavailable


@dataclass(frozen=True)
class Readiness:
    store: LandingStore
    batcher: Batcher
    verifier: ChainguardVerifier | None
    min_free_bytes: int

    def check(self) -> None:
        """Return if ready, else raise ``Unavailable`` naming the first cause."""
        if self.batcher.closed:
            raise Unavailable("shutting_down", "the receiver is shutting down", retry_after=1)
        try:
            self.store.check_ready()
        except LandingUnavailable as exc:
            raise Unavailable("landing_unavailable", str(exc), retry_after=5) from None
        self._check_free_space()
        if self.verifier is not None:
            self.verifier.check_keys()

    def _check_free_space(self) -> None:
        if not isinstance(self.store, LocalLandingStore):
            return  # a bucket has no free space to run out of
        free = shutil.disk_usage(self.store.root).free
        if free < self.min_free_bytes:
            raise Unavailable(
                "landing_full",
                f"{free} bytes free under {self.store.root},"
                f" less than PULL_EVENTS_MIN_FREE_BYTES ({self.min_free_bytes})",
                retry_after=30,
            )
