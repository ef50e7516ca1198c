from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pull_events.landing import LandingStore, LocalLandingStore
from tests.receiver.oidc import LocalIssuer
from tests.receiver.server import ThreadedReceiver, receiver_settings

MakeReceiver = Callable[..., ThreadedReceiver]


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    """A local OIDC issuer shared by the session (tests that rotate keys make their own)."""
    with LocalIssuer() as local_issuer:
        yield local_issuer


@pytest.fixture
def local_store(landing_dir: Path) -> LocalLandingStore:
    return LocalLandingStore(landing_dir)


@pytest.fixture
def make_receiver(landing_dir: Path, issuer: LocalIssuer) -> Iterator[MakeReceiver]:
    """Start a receiver over real HTTP: ``make_receiver(store=..., issuer=..., **env)``; stopped after the test."""
    started: list[ThreadedReceiver] = []

    def make(
        store: LandingStore | None = None,
        issuer: LocalIssuer | None = issuer,
        landing: str | Path = landing_dir,
        **env: str,
    ) -> ThreadedReceiver:
        receiver = ThreadedReceiver(receiver_settings(landing, issuer, **env), store).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


@pytest.fixture
def receiver(make_receiver: MakeReceiver, local_store: LocalLandingStore) -> ThreadedReceiver:
    """A receiver with auth on (the session issuer) landing in a fresh local directory."""
    return make_receiver(store=local_store)
