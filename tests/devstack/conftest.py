from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.issuer import start_dev_issuer
from devstack.oidc import OidcIssuer


@pytest.fixture
def issuer_state(tmp_path: Path) -> Path:
    """A fresh state directory for a development issuer (its key and issuer.json)."""
    return tmp_path / "dev-issuer"


@pytest.fixture
def dev_issuer(issuer_state: Path) -> Iterator[OidcIssuer]:
    """The local stack's development issuer, on a free loopback port, keeping its key in ``issuer_state``."""
    issuer = start_dev_issuer(issuer_state, port=0)
    yield issuer
    issuer.stop()
