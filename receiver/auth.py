"""Verification of the OIDC token Chainguard signs each webhook delivery with.

What is checked, as Chainguard's own ``events/receiver`` does: an RS256 signature by a key of the
issuer (found through ``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``), ``iss`` exactly
the configured issuer, ``aud`` containing ``customer``, ``sub == "webhook:<group>"``, the claim
``webhook.digest == "sha256:" + sha256(raw body)``, ``exp`` with no leeway and ``nbf`` when present.
Beyond the SDK, a captured token must not stay usable for long: ``iat`` is required, may be at most
``leeway_seconds`` in the future (as may ``nbf``: a sender clock a little ahead is no failure), and
``exp - iat`` may be at most ``max_lifetime_seconds``.

Everything but the digest is checked from the headers alone (``verify_token``), so a request without a valid
token is refused before its body is read; the digest is compared once the body has been hashed
(``check_digest``).

The key set is cached. A token whose key is not in it, or whose signature fails with the cached keys,
makes the verifier fetch the key set again (key rotation), at most once per ``min_refresh_seconds``
(an attacker cannot make it hammer the issuer). A token naming an unknown ``kid`` while a refetch is
not yet allowed is answered 503, not 403, so a delivery signed with a freshly rotated key is retried
rather than lost; an issuer that cannot be reached is also 503.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from receiver.errors import MissingToken, Rejection, TokenRejected, Unavailable
from receiver.logs import get_logger

AUDIENCE = "customer"
# Chainguard's delivery tokens live 5 minutes; a few hours leaves room for retries of a slow delivery.
DEFAULT_MAX_LIFETIME_SECONDS = 3 * 3600.0
DEFAULT_LEEWAY_SECONDS = 60.0
ALGORITHM = "RS256"
_BEARER = re.compile(r"^\s*bearer\s+([^\s,]+)\s*$", re.IGNORECASE)
_MAX_DOCUMENT_BYTES = 1024 * 1024
log = get_logger("auth")


class IssuerUnavailable(Unavailable):
    """The issuer's discovery document or key set could not be fetched (503: retry later)."""

    def __init__(self, detail: str) -> None:
        super().__init__("issuer_unavailable", detail, retry_after=5)


class FetchNeeded(Exception):
    """Checking this token needs the issuer's keys fetched, which the caller did not allow."""


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature and claims passed every check but the body digest."""

    claims: dict[str, Any]
    digest: str  # the webhook.digest claim: the body must hash to it
    token_sha256: str  # "sha256:" + hex of the token text: names the token without keeping it
    expires_at: float  # exp, in seconds since the epoch


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[jwt.PyJWK, ...]
    fetched_at: float


class ChainguardVerifier:
    """Checks the ``Authorization`` header of a delivery against its raw body. Thread-safe."""

    def __init__(
        self,
        issuer: str,
        group: str,
        min_refresh_seconds: float = 10.0,
        fetch_timeout: float = 5.0,
        max_lifetime_seconds: float = DEFAULT_MAX_LIFETIME_SECONDS,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        self.issuer = issuer
        self.subject = f"webhook:{group}"
        self.min_refresh_seconds = min_refresh_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self.leeway_seconds = leeway_seconds
        self.fetch_timeout = fetch_timeout
        self._keys: _KeySet | None = None
        self._jwks_uri: str | None = None
        self._refresh_lock = threading.Lock()
        self._failed_at = float("-inf")
        self._failure = ""

    def verify(self, authorization: str | None, digest_of_body: str) -> dict[str, Any]:
        """Return the token's claims, or raise ``MissingToken`` (401), ``TokenRejected`` (403) or
        ``Unavailable`` (503). ``digest_of_body`` is ``body_digest`` of the raw request body."""
        verified = self.verify_token(authorization)
        check_digest(verified, digest_of_body)
        return verified.claims

    def verify_token(self, authorization: str | None, allow_fetch: bool = True) -> VerifiedToken:
        """Check everything the headers alone can tell: the token's signature and every claim but the
        body digest. Raises ``MissingToken`` (401), ``TokenRejected`` (403) or ``Unavailable`` (503).

        ``allow_fetch=False`` raises ``FetchNeeded`` instead of fetching the issuer's keys (an event loop
        checks tokens itself and leaves only the rare fetch to a thread)."""
        token = bearer_token(authorization)
        # PyJWT parses and checks the whole token once, in decode (its parse is most of the cost of a
        # check). The key is chosen from a quick read of the header alone, so a valid token is parsed once.
        header = _peek_header(token)
        if header is None:
            header = _unverified_header(token)
        try:
            claims = self._verified_claims(token, header, allow_fetch)
        except Rejection:
            # A malformed token is refused as malformed, whatever check failed first, as when the
            # header was read with PyJWT before anything else.
            _unverified_header(token)
            raise
        if claims.get("sub") != self.subject:
            raise TokenRejected(f"token subject {claims.get('sub')!r} is not {self.subject!r}")
        webhook = claims.get("webhook")
        digest = webhook.get("digest") if isinstance(webhook, dict) else None
        if not isinstance(digest, str):
            raise TokenRejected("token has no webhook.digest claim")
        expires_at = self._check_times(claims)
        return VerifiedToken(
            claims=claims,
            digest=digest,
            token_sha256="sha256:" + hashlib.sha256(token.encode()).hexdigest(),
            expires_at=expires_at,
        )

    def _check_times(self, claims: dict[str, Any]) -> float:
        """``iat`` and ``nbf`` not ahead of now by more than the leeway, and a lifetime within the maximum:
        a captured token is useless within hours at most. Returns ``exp`` (PyJWT checked it is not past)."""
        now = time.time()
        issued_at = _numeric_claim(claims, "iat")
        expires_at = _numeric_claim(claims, "exp")
        if issued_at > now + self.leeway_seconds:
            raise TokenRejected(f"token issued in the future (iat is {issued_at - now:.0f} s ahead)")
        not_before = claims.get("nbf")
        if not_before is not None and _numeric_claim(claims, "nbf") > now + self.leeway_seconds:
            raise TokenRejected("token not yet valid (nbf)")
        if expires_at - issued_at > self.max_lifetime_seconds:
            raise TokenRejected(
                f"token lifetime (exp - iat) of {expires_at - issued_at:.0f} s is over the"
                f" maximum of {self.max_lifetime_seconds:.0f} s"
            )
        return expires_at

    def _verified_claims(self, token: str, header: dict[str, Any], allow_fetch: bool) -> dict[str, Any]:
        algorithm = header.get("alg")
        if algorithm != ALGORITHM:
            raise TokenRejected(f"token algorithm {algorithm!r} is not allowed: only {ALGORITHM}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("token header 'kid' is not a string")
        keys = self._keys
        if keys is None:
            _unverified_header(token)  # before any fetch: a malformed token never makes the verifier fetch keys
            if not allow_fetch:
                raise FetchNeeded
            keys = self._refresh(None)
        for attempt in range(2):
            candidates = [key for key in keys.keys if kid is None or key.key_id == kid]
            for key in candidates:
                try:
                    return jwt.decode(
                        token,
                        key.key,
                        algorithms=[ALGORITHM],
                        audience=AUDIENCE,
                        issuer=self.issuer,
                        leeway=0,
                        # iat and nbf are checked with a leeway in _check_times (PyJWT's would apply to exp too).
                        options={
                            "require": ["exp", "iat", "iss", "aud", "sub"],
                            "verify_iat": False,
                            "verify_nbf": False,
                        },
                    )
                except jwt.InvalidSignatureError:
                    continue
                except jwt.PyJWTError as exc:
                    raise TokenRejected(_describe(exc)) from None
            if attempt == 0:
                _unverified_header(token)  # as above
                if not allow_fetch:
                    raise FetchNeeded
                refreshed = self._refresh(keys)
                if refreshed is keys:
                    if kid is not None and not candidates:
                        wait = max(1, round(keys.fetched_at + self.min_refresh_seconds - time.monotonic()))
                        raise Unavailable(
                            "unknown_signing_key",
                            f"no key {kid!r} in the issuer's key set, which was fetched too recently to fetch again",
                            retry_after=wait,
                        )
                    break
                keys = refreshed
        if kid is not None and not any(key.key_id == kid for key in keys.keys):
            raise TokenRejected(f"the issuer has no signing key {kid!r}")
        raise TokenRejected("token signature does not verify with any of the issuer's keys")

    def check_keys(self) -> None:
        """Return if a signing key is usable (cached, or fetched now), else raise ``IssuerUnavailable`` (503).

        A cached key set stays usable while the issuer is unreachable: tokens signed with it still verify."""
        if self._keys is None:
            self._refresh(None)

    def _refresh(self, stale: _KeySet | None) -> _KeySet:
        """Fetch the key set, unless another thread just did or the last fetch is too recent.

        Returns ``stale`` itself when no fetch was allowed.
        """
        with self._refresh_lock:
            current = self._keys
            if current is not None and current is not stale:
                return current  # another thread refreshed while this one waited
            now = time.monotonic()
            if current is not None and now - current.fetched_at < self.min_refresh_seconds:
                return current
            if now - self._failed_at < self.min_refresh_seconds:
                raise IssuerUnavailable(self._failure)  # do not hammer an issuer that just failed
            try:
                keys = self._fetch_keys()
            except IssuerUnavailable as exc:
                self._failed_at, self._failure = time.monotonic(), exc.detail
                raise
            self._keys = keys
            return keys

    def _fetch_keys(self) -> _KeySet:
        try:
            if self._jwks_uri is None:
                discovery = _fetch_json(f"{self.issuer}/.well-known/openid-configuration", self.fetch_timeout)
                if discovery.get("issuer") != self.issuer:
                    raise IssuerUnavailable(
                        f"discovery document names issuer {discovery.get('issuer')!r}, not {self.issuer!r}"
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                    raise IssuerUnavailable("discovery document has no usable jwks_uri")
                self._jwks_uri = jwks_uri
            document = _fetch_json(self._jwks_uri, self.fetch_timeout)
            keys = tuple(
                key
                for key in jwt.PyJWKSet.from_dict(document).keys
                if key.key_type == "RSA" and key.algorithm_name == ALGORITHM and key.public_key_use in (None, "sig")
            )
        except IssuerUnavailable:
            self._jwks_uri = None
            raise
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            self._jwks_uri = None  # rediscover next time: the issuer may have moved its keys
            log.warning(
                "cannot fetch the issuer's keys", extra={"fields": {"issuer": self.issuer, "problem": str(exc)}}
            )
            raise IssuerUnavailable(f"cannot fetch the signing keys of {self.issuer}: {exc}") from None
        if not keys:
            raise IssuerUnavailable(f"the key set of {self.issuer} has no {ALGORITHM} signing key")
        log.info("fetched the issuer's signing keys", extra={"fields": {"issuer": self.issuer, "keys": len(keys)}})
        return _KeySet(keys=keys, fetched_at=time.monotonic())


def check_digest(verified: VerifiedToken, digest_of_body: str) -> None:
    """``TokenRejected`` (403) unless the token's ``webhook.digest`` is ``digest_of_body``."""
    if not hmac.compare_digest(verified.digest.encode(), digest_of_body.encode()):
        raise TokenRejected("token webhook.digest does not match the sha256 of the request body")


def _numeric_claim(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"token claim {name!r} is not a number")
    return float(value)


def body_digest(body: bytes) -> str:
    """``"sha256:" + hex`` of the raw body: what the token's ``webhook.digest`` claim must equal."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ``MissingToken`` (401)."""
    if not authorization or not authorization.strip():
        raise MissingToken("no Authorization header: a Bearer token is required")
    match = _BEARER.match(authorization)
    if not match:
        raise MissingToken("the Authorization header is not of the form 'Bearer <token>'")
    return match.group(1)


def _peek_header(token: str) -> dict[str, Any] | None:
    """The token's header read with the standard library, or ``None`` if that fails.

    Only picks the key and refuses a wrong ``alg`` early: PyJWT checks the token's form in full when it
    verifies it (and ``_unverified_header`` explains a malformed one).
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's header as PyJWT reads it, or ``TokenRejected`` (403) if the token is malformed."""
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenRejected(f"malformed token: {exc}") from None


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"token audience does not include {AUDIENCE!r}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer is not the configured issuer"
    return f"token rejected: {exc}"


def _fetch_json(url: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read(_MAX_DOCUMENT_BYTES + 1)
    if len(raw) > _MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} answered more than {_MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document
