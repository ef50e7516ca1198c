"""Deliveries as Chainguard sends them (binary mode) or as any CloudEvents sender may (structured mode),
and readers of what the receiver landed."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

from devstack.delivery import binary_headers, compact_json
from pull_events.landing import LandingStore
from tests.receiver.oidc import DEFAULT_GROUP, LocalIssuer

__all__ = ["compact_json"]  # re-exported: tests build bodies with it

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pull_event(**attributes: str) -> tuple[dict[str, str], Any]:
    """The fixture pull event's attributes (with ``attributes`` applied, e.g. a new ``id``) and data."""
    fixture = json.loads((FIXTURES / "pull-event.json").read_text())
    return {**fixture["attributes"], **attributes}, copy.deepcopy(fixture["data"])


def fixture_http_headers() -> dict[str, str]:
    """The non-CloudEvents headers of the fixture delivery (Traceparent, User-Agent)."""
    return json.loads((FIXTURES / "pull-event.json").read_text())["http_headers"]


def binary_delivery(
    attributes: dict[str, str],
    body: bytes,
    issuer: LocalIssuer | None = None,
    group: str = DEFAULT_GROUP,
    token: str | None = None,
) -> dict[str, str]:
    """The headers of a binary-mode delivery of ``body``: ``Ce-*`` (percent-encoded), Content-Type and,
    with an ``issuer`` (or an explicit ``token``), ``Authorization``."""
    headers = binary_headers(attributes)
    headers.update(fixture_http_headers())
    if token is None and issuer is not None:
        token = issuer.token(body, group)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def structured_delivery(
    document: dict[str, Any], issuer: LocalIssuer | None = None, group: str = DEFAULT_GROUP
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a structured-mode delivery of ``document`` (a CloudEvent in JSON form)."""
    body = compact_json(document)
    headers = {"Content-Type": "application/cloudevents+json"}
    if issuer is not None:
        headers["Authorization"] = f"Bearer {issuer.token(body, group)}"
    return headers, body


def new_id() -> str:
    return str(uuid.uuid4())


def landed_lines(store: LandingStore) -> list[bytes]:
    """Every line of every landed object, in key order."""
    lines: list[bytes] = []
    for landed in store.list_all():
        data = store.read(landed.key)
        assert data.endswith(b"\n"), f"{landed.key} does not end with a newline"
        lines.extend(data.split(b"\n")[:-1])
    return lines


def landed_records(store: LandingStore) -> list[dict[str, Any]]:
    """Every landed record, parsed, in key then line order."""
    return [json.loads(line) for line in landed_lines(store)]


def landed_ids(store: LandingStore) -> list[str]:
    """The ``id`` of every landed record (duplicates kept)."""
    return [record["id"] for record in landed_records(store)]
