"""``python -m devstack.sample [N] [URL]``: post N realistic pull events to a receiver, each signed by the local
stack's development issuer and bound to its body, and print each answer (status and body).

Exit status 1 if any delivery was refused.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from devstack.delivery import Event, delivery
from devstack.issuer import DevIssuerMissing, default_state_dir, serving_signer
from devstack.oidc import DEFAULT_GROUP


def default_url() -> str:
    """The local stack's receiver."""
    return f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/"


def sample_pull(group: str = DEFAULT_GROUP) -> Event:
    """One pull of a manifest, dated now, as the registry reports it."""
    now = datetime.now(UTC)
    repo_id = f"{group}/7214b8ddd5ce879d"
    data = {
        "actor": {
            "subject": f"{group}/8a2b6c4d1e0f3a57",
            "act": {
                "iss": "https://token.actions.githubusercontent.com",
                "sub": "repo:example/app:ref:refs/heads/main",
            },
        },
        "body": {
            "repository": random.choice(["chainguard.edu/python", "chainguard.edu/node", "chainguard.edu/go"]),
            "repo_id": repo_id,
            "tag": "latest",
            "digest": "sha256:" + uuid.uuid4().hex * 2,
            "method": "GET",
            "type": "manifest",
            "when": now.strftime("%Y-%m-%dT%H:%M:%S.%f"),
            "location": "ColumbusOHUS",
            "remote_address": f"203.0.113.{random.randint(1, 254)}",
            "user_agent": "docker/27.3.1",
        },
    }
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "cgr.dev",
        "type": "dev.chainguard.registry.pull.v1",
        "subject": repo_id,
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "group": group,
        "datacontenttype": "application/json",
    }
    return Event(attributes, data)


def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """POST and return the answer's status and body, whatever the status."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/send-sample-event", description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=1, help="events to send (default 1)")
    parser.add_argument("url", nargs="?", default=default_url(), help="the receiver (default: the local stack's)")
    parser.add_argument("--unsigned", action="store_true", help="send no token (a receiver with auth off)")
    parser.add_argument("--issuer-state", type=Path, default=default_state_dir(), help="the development issuer's")
    args = parser.parse_args(argv)
    try:
        signer, group = serving_signer(args.issuer_state, unsigned=args.unsigned)
    except DevIssuerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    refused = 0
    for _ in range(args.count):
        request = delivery(sample_pull(group), signer)
        status, answer = post(args.url, request.headers, request.body)
        print(status, answer.strip())
        refused += not 200 <= status < 300
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
