"""The receiver as the local stack runs it, for tests: the environment ``scripts/stack`` gives it."""

from __future__ import annotations

from pathlib import Path

from devstack.oidc import DEFAULT_GROUP


def stack_receiver_env(landing: Path, issuer_url: str, group: str = DEFAULT_GROUP) -> dict[str, str]:
    """What ``scripts/stack`` exports for the receiver when it starts the development issuer."""
    return {
        "PULL_EVENTS_LANDING": str(landing),
        "PULL_EVENTS_HOST": "127.0.0.1",
        "PULL_EVENTS_AUTH": "chainguard",
        "CHAINGUARD_ISSUER": issuer_url,
        "CHAINGUARD_GROUP": group,
    }
