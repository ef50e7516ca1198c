"""The local stack's development OIDC issuer, and how scripts find it to sign deliveries for it.

``python -m devstack.issuer [--state DIR] [--port PORT] [--group GROUP]`` serves OpenID discovery and a JWKS
on ``http://127.0.0.1:PORT`` (loopback only). The RSA-2048 key is generated on the first start and kept in
``DIR/signing-key.pem`` (mode 0600), published under its RFC 7638 thumbprint: every later start serves the same
key under the same ``kid``, so a token minted before a restart still verifies after it. Each start also writes
``DIR/issuer.json`` (issuer URL, group, kid), which ``read_state`` gives scripts that sign deliveries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.oidc import DEFAULT_GROUP, TOKEN_LIFETIME_SECONDS, OidcIssuer, Signer, SigningKey
from pull_events.settings import DEFAULT_DATA_DIR

DEFAULT_PORT = 8090
KEY_FILE = "signing-key.pem"
STATE_FILE = "issuer.json"


class DevIssuerMissing(RuntimeError):
    """No development issuer state where one was looked for, or its issuer does not serve its key."""


@dataclass(frozen=True)
class DevIssuerState:
    """What a script needs to sign deliveries for the development issuer."""

    issuer: str
    group: str
    key: SigningKey

    def signer(self, lifetime: int = TOKEN_LIFETIME_SECONDS) -> Signer:
        return Signer(self.issuer, self.group, self.key, lifetime)


def default_state_dir() -> Path:
    """``PULL_EVENTS_DEV_ISSUER_DIR``, else ``.data/dev-issuer`` in the project."""
    configured = os.environ.get("PULL_EVENTS_DEV_ISSUER_DIR", "").strip()
    return Path(configured).expanduser().resolve() if configured else DEFAULT_DATA_DIR / "dev-issuer"


def load_or_create_key(state_dir: Path) -> SigningKey:
    """The issuer's key from ``state_dir``, generated and stored there first if there is none."""
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = state_dir / f".{KEY_FILE}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(SigningKey.generate(None).private_pem())
                file.flush()
                os.fsync(file.fileno())
            # A link never replaces a file: of two first starts racing, both end up serving the one key linked.
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return SigningKey.from_pem(path.read_bytes())


def start_dev_issuer(state_dir: Path, port: int = DEFAULT_PORT, group: str = DEFAULT_GROUP) -> OidcIssuer:
    """Serve the key of ``state_dir`` on ``127.0.0.1:port`` (0: any free port) and record the issuer there."""
    issuer = OidcIssuer(load_or_create_key(state_dir), port=port).start()
    state = {"issuer": issuer.url, "group": group, "kid": issuer.signing_key.kid}
    temporary = state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.replace(state_dir / STATE_FILE)
    return issuer


def read_state(state_dir: Path) -> DevIssuerState:
    """The development issuer recorded in ``state_dir``; ``DevIssuerMissing`` says how to start one."""
    try:
        recorded = json.loads((state_dir / STATE_FILE).read_text())
        key = SigningKey.from_pem((state_dir / KEY_FILE).read_bytes())
    except FileNotFoundError:
        raise DevIssuerMissing(
            f"no development issuer in {state_dir}: start the local stack (scripts/stack) or"
            " `uv run python -m devstack.issuer` first, or send unsigned deliveries (--unsigned)"
        ) from None
    return DevIssuerState(issuer=recorded["issuer"], group=recorded["group"], key=key)


def check_serving(state: DevIssuerState, timeout: float = 5.0) -> None:
    """Raise ``DevIssuerMissing`` unless the recorded issuer answers and publishes the recorded key, so a
    script fails with a clear message rather than with a receiver's 503 or 403 for every delivery."""
    try:
        discovery = _get_json(f"{state.issuer}/.well-known/openid-configuration", timeout)
        kids = {key.get("kid") for key in _get_json(discovery["jwks_uri"], timeout)["keys"]}
    except (OSError, ValueError, KeyError) as exc:
        raise DevIssuerMissing(
            f"the development issuer {state.issuer} does not answer ({exc}): is scripts/stack running?"
        ) from None
    if state.key.kid not in kids:
        raise DevIssuerMissing(f"the development issuer {state.issuer} does not publish key {state.key.kid}")


def _get_json(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.issuer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=default_state_dir(), help="where the key is kept")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PULL_EVENTS_DEV_ISSUER_PORT", DEFAULT_PORT)))
    parser.add_argument("--group", default=os.environ.get("CHAINGUARD_GROUP") or DEFAULT_GROUP)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    issuer = start_dev_issuer(args.state.resolve(), args.port, args.group)
    ready = {"message": "development issuer ready", "issuer": issuer.url, "kid": issuer.signing_key.kid}
    print(json.dumps({**ready, "group": args.group, "state": str(args.state)}), flush=True)
    try:
        stop.wait()
    finally:
        issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def serving_signer(state_dir: Path, *, unsigned: bool = False) -> tuple[Signer | None, str]:
    """The running development issuer's signer and group, for a script that sends signed deliveries; with
    ``unsigned``, no signer and the default group (a receiver with auth off).

    Raises ``DevIssuerMissing`` (whose message says how to start one) when none is recorded or answering.
    """
    if unsigned:
        return None, DEFAULT_GROUP
    state = read_state(state_dir)
    check_serving(state)
    return state.signer(), state.group
