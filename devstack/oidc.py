"""An OIDC issuer signing tokens the way Chainguard signs webhook deliveries, over real HTTP on loopback.

It serves ``/.well-known/openid-configuration`` and a JWKS for real RSA-2048 keys, and mints RS256 tokens
``{iss, iat, exp, sub: "webhook:<group>", aud: ["customer"], webhook: {digest}}`` bound to a request body, as
Chainguard's SDK tests do. The tests' issuer (``tests/receiver/oidc.py``) and the development issuer of
``scripts/stack`` (``devstack.issuer``) are both this class; they differ in where the key comes from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

# The example organisation of Chainguard's documentation: the group the local stack and the tests use.
DEFAULT_GROUP = "45a0c61ea6fd977f050c5fb9ac06a69eed764595"
# Chainguard's delivery tokens live 5 minutes.
TOKEN_LIFETIME_SECONDS = 300
OMIT = object()
"""Pass as a claim override to leave that claim out of the token."""


@dataclass(frozen=True)
class SigningKey:
    """An RSA-2048 key pair and the ``kid`` it is published under (``None``: no kid at all)."""

    private_key: rsa.RSAPrivateKey
    kid: str | None

    @classmethod
    def generate(cls, kid: str | None) -> SigningKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """A key read back from ``private_pem()``, published under its thumbprint, so its ``kid`` is the
        same after every restart."""
        private_key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("the signing key is not an RSA key")
        return cls(private_key, rsa_thumbprint(private_key.public_key()))

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with ``kid`` only if it has one."""
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(use="sig", alg="RS256")
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The RFC 7638 JWK thumbprint of an RSA public key (base64url of the SHA-256 of its canonical JWK)."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def body_digest(body: bytes) -> str:
    """The ``webhook.digest`` claim for ``body``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def delivery_claims(
    issuer: str, body: bytes, group: str = DEFAULT_GROUP, lifetime: int = TOKEN_LIFETIME_SECONDS, **overrides: Any
) -> dict[str, Any]:
    """The claims Chainguard puts in a delivery token for ``body``, with ``overrides`` applied (``OMIT``
    removes a claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "iat": now,
        "exp": now + lifetime,
        "sub": f"webhook:{group}",
        "aud": ["customer"],
        "webhook": {"digest": body_digest(body)},
        # Each delivery attempt gets its own token, even for equal bodies in the same second: the receiver
        # binds a token to the first event it authorized.
        "jti": uuid.uuid4().hex,
    }
    for name, value in overrides.items():
        if value is OMIT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign(claims: dict[str, Any], key: SigningKey, headers: dict[str, Any] | None = None) -> str:
    """``claims`` as an RS256 token signed with ``key`` (its ``kid`` in the header when it has one)."""
    jws_headers = {"kid": key.kid} if key.kid is not None else {}
    jws_headers.update(headers or {})
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers=jws_headers)


@dataclass(frozen=True)
class Signer:
    """Mints delivery tokens for one issuer URL, group and key, without serving anything (a script signing
    deliveries for a development issuer running in another process)."""

    issuer: str
    group: str
    key: SigningKey
    lifetime: int = TOKEN_LIFETIME_SECONDS

    def token(self, body: bytes) -> str:
        return sign(delivery_claims(self.issuer, body, self.group, self.lifetime), self.key)


class OidcIssuer:
    """An OIDC issuer on ``http://<host>:<port>`` (port 0: any free one); use as a context manager.

    ``issuer.token(body)`` mints a valid token for ``body``; keyword overrides replace claims (``OMIT``
    removes one). ``available = False`` makes discovery and JWKS answer 503. ``published`` is the key set
    the JWKS serves, ``signing_key`` the key tokens are signed with.
    """

    def __init__(self, signing_key: SigningKey, host: str = "127.0.0.1", port: int = 0) -> None:
        self.signing_key = signing_key
        self.published: list[SigningKey] = [signing_key]
        self.available = True
        self.discovery_requests = 0
        self.jwks_requests = 0
        self._lock = threading.Lock()
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The issuer URL (the ``iss`` of its tokens and ``CHAINGUARD_ISSUER`` for the receiver)."""
        assert self._server is not None, "issuer not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._server = ThreadingHTTPServer(self._address, _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="oidc-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, keys: list[SigningKey], signing_key: SigningKey) -> None:
        """Serve ``keys`` from now on and sign with ``signing_key``."""
        with self._lock:
            self.published = list(keys)
            self.signing_key = signing_key

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk() for key in self.published]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def claims(self, body: bytes, group: str = DEFAULT_GROUP, **overrides: Any) -> dict[str, Any]:
        """The claims Chainguard puts in a delivery token for ``body``, with ``overrides`` applied."""
        return delivery_claims(self.url, body, group, **overrides)

    def token(
        self,
        body: bytes,
        group: str = DEFAULT_GROUP,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """An RS256 token for ``body`` signed with the current key (or ``key``)."""
        return sign(self.claims(body, group, **overrides), key or self.signing_key, headers)

    def signer(self, group: str = DEFAULT_GROUP) -> Signer:
        return Signer(self.url, group, self.signing_key)

    def document_for(self, path: str) -> Callable[[], dict[str, Any]] | None:
        """The document served at ``path`` (counting the request), or ``None`` for an unknown path."""
        if path == "/.well-known/openid-configuration":
            self.discovery_requests += 1
            return self.discovery
        if path == "/jwks":
            self.jwks_requests += 1
            return self.jwks
        return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _handler_for(issuer: OidcIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document = issuer.document_for(self.path)
            if document is None:
                self.send_error(404)
                return
            if not issuer.available:
                self.send_error(503)
                return
            body = json.dumps(document()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a request log line per JWKS fetch says nothing the receiver's logs do not

    return Handler
