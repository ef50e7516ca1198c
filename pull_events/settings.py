"""One configuration for the receiver and the pipeline, read from the environment.

Every setting is validated when it is read: a missing or invalid value raises ``SettingsError`` naming
the variable, so a process stops at start rather than failing on its first event.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data"
DEFAULT_LANDING = DEFAULT_DATA_DIR / "landing"
DEFAULT_WAREHOUSE = DEFAULT_DATA_DIR / "warehouse.duckdb"
DEFAULT_ISSUER = "https://issuer.enforce.dev"
# Twice the largest body the receiver can be set to take (8 MiB), so escaping in the record never reaches it.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
# The first day partition of daily_pulls (PULL_EVENTS_FIRST_DAY); set it earlier for an older history.
DEFAULT_FIRST_DAY = date(2024, 1, 1)
# The longest token lifetime a receiver may accept: the loads' look-back for a replayed token (a day) covers it.
MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600.0

# An instance name as object names carry it verbatim: no separator a key or a log line could misread.
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_GCS_URI = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,221}[a-z0-9])(?:/(?P<prefix>.*))?$")
_BIGQUERY_URI = re.compile(r"^bigquery://(?P<project>[a-z][a-z0-9.:-]{2,62}[a-z0-9])/(?P<dataset>\w{1,1024})/?$")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class LandingLocation:
    """Where landed NDJSON objects live: a GCS bucket (and prefix) or a local directory."""

    kind: Literal["gcs", "local"]
    bucket: str = ""
    prefix: str = ""
    path: Path = DEFAULT_LANDING

    @property
    def uri(self) -> str:
        if self.kind == "gcs":
            return f"gs://{self.bucket}/{self.prefix}".rstrip("/")
        return str(self.path)


@dataclass(frozen=True)
class WarehouseLocation:
    """Where the tables live: a BigQuery dataset or a DuckDB file."""

    kind: Literal["bigquery", "duckdb"]
    project: str = ""
    dataset: str = ""
    path: Path = DEFAULT_WAREHOUSE


@dataclass(frozen=True)
class ReceiverSettings:
    """Settings only the receiver reads."""

    auth: Literal["chainguard", "off"]
    issuer: str
    group: str | None
    host: str  # the address the receiver listens on
    port: int
    max_body_bytes: int
    batch_max_events: int
    batch_max_bytes: int
    batch_max_wait_seconds: float
    max_pending_events: int
    commit_timeout_seconds: float
    jwks_min_refresh_seconds: float
    max_line_bytes: int  # the longest landed line the warehouse loads: an event that would exceed it is refused
    allow_public_auth_off: bool  # PULL_EVENTS_AUTH=off on a non-loopback address was asked for explicitly
    max_token_lifetime_seconds: float  # a token whose exp - iat is longer is refused
    token_leeway_seconds: float  # how far ahead of the receiver's clock iat and nbf may be
    header_timeout_seconds: float  # a request's head must be complete this long after its first byte
    body_timeout_seconds: float  # a request's body must be complete this long after its head
    min_free_bytes: int  # a local landing directory with less free space is not ready
    # The name this deployment gives its receivers (PULL_EVENTS_INSTANCE, else Cloud Run's K_REVISION, else the
    # host name): it leads every object name and received_by, and each process adds its pid and a random part.
    instance_name: str


@dataclass(frozen=True)
class PipelineSettings:
    """Settings only the Dagster pipeline reads."""

    lateness_seconds: int
    max_objects_per_run: int
    rejected_rate_threshold: float
    raw_event_rate_threshold: float
    max_line_bytes: int  # longer lines are rejected as line_too_large, never parsed
    max_load_lag_seconds: int  # a landed object still unloaded this long after it landed fails a check
    reconcile_days: int  # UTC days back (by landing time) each reconciliation pass compares with the ledger
    future_tolerance_seconds: int  # a pull dated more than this after the refresh time is implausible
    first_day: date  # the first day partition of daily_pulls: pulls dated earlier are counted in no day
    audit_cron: str  # when the whole-table audits run (the per-load checks judge each load's own rows)


@dataclass(frozen=True)
class Settings:
    landing: LandingLocation
    warehouse: WarehouseLocation
    receiver: ReceiverSettings
    pipeline: PipelineSettings


def parse_landing(value: str) -> LandingLocation:
    """Parse ``PULL_EVENTS_LANDING``: ``gs://BUCKET[/PREFIX]`` or a local directory."""
    if value.startswith("gs://"):
        match = _GCS_URI.match(value)
        if not match:
            raise SettingsError("PULL_EVENTS_LANDING", f"{value!r} is not a valid gs://BUCKET[/PREFIX] URI")
        prefix = (match.group("prefix") or "").strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise SettingsError("PULL_EVENTS_LANDING", f"prefix {prefix!r} has an empty, '.' or '..' segment")
        return LandingLocation(kind="gcs", bucket=match.group("bucket"), prefix=prefix)
    if "://" in value:
        raise SettingsError("PULL_EVENTS_LANDING", f"{value!r}: only gs:// URIs or local directories are supported")
    return LandingLocation(kind="local", path=_project_path(value))


def parse_warehouse(value: str) -> WarehouseLocation:
    """Parse ``PULL_EVENTS_WAREHOUSE``: ``bigquery://PROJECT/DATASET`` or a DuckDB file path."""
    if value.startswith("bigquery://"):
        match = _BIGQUERY_URI.match(value)
        if not match:
            raise SettingsError("PULL_EVENTS_WAREHOUSE", f"{value!r} is not a valid bigquery://PROJECT/DATASET URI")
        return WarehouseLocation(kind="bigquery", project=match.group("project"), dataset=match.group("dataset"))
    if "://" in value:
        raise SettingsError(
            "PULL_EVENTS_WAREHOUSE", f"{value!r}: only bigquery:// URIs or DuckDB file paths are supported"
        )
    return WarehouseLocation(kind="duckdb", path=_project_path(value))


def load_settings(environ: Mapping[str, str] | None = None, *, receiver: bool = True) -> Settings:
    """Read and validate every setting from ``environ`` (default: the process environment).

    ``receiver=False`` is for the pipeline, which verifies no tokens: it then does not require
    ``CHAINGUARD_GROUP``.
    """
    env = os.environ if environ is None else environ
    auth = env.get("PULL_EVENTS_AUTH", "chainguard").strip().lower()
    if auth not in ("chainguard", "off"):
        raise SettingsError("PULL_EVENTS_AUTH", f"must be 'chainguard' or 'off', not {auth!r}")
    group = env.get("CHAINGUARD_GROUP", "").strip() or None
    if receiver and auth == "chainguard" and group is None:
        raise SettingsError(
            "CHAINGUARD_GROUP",
            "required while PULL_EVENTS_AUTH=chainguard: the org or folder id tokens must name (sub = webhook:<group>)",
        )
    host = env.get("PULL_EVENTS_HOST", "").strip() or "0.0.0.0"
    allow_public = _flag(env, "PULL_EVENTS_ALLOW_PUBLIC_AUTH_OFF")
    issuer = env.get("CHAINGUARD_ISSUER", DEFAULT_ISSUER).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", issuer):
        raise SettingsError("CHAINGUARD_ISSUER", f"{issuer!r} is not an http(s) URL")

    batch_max_bytes = _int(env, "PULL_EVENTS_BATCH_MAX_BYTES", 4 * 1024 * 1024, minimum=1024)
    # GCS ignores if_generation_match on resumable uploads (used above 8 MiB): stay below so create-only holds.
    if batch_max_bytes > 8 * 1024 * 1024:
        raise SettingsError("PULL_EVENTS_BATCH_MAX_BYTES", "must be at most 8 MiB (create-only uploads)")
    max_body = _int(env, "PULL_EVENTS_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
    if max_body > batch_max_bytes:
        raise SettingsError("PULL_EVENTS_MAX_BODY_BYTES", "must not exceed PULL_EVENTS_BATCH_MAX_BYTES")

    max_line_bytes = _int(env, "PULL_EVENTS_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES, minimum=64 * 1024)
    receiver = ReceiverSettings(
        auth=auth,  # type: ignore[arg-type]
        issuer=issuer,
        group=group,
        host=host,
        port=_int(env, "PORT", 8080, minimum=1, maximum=65535),
        allow_public_auth_off=allow_public,
        max_body_bytes=max_body,
        batch_max_events=_int(env, "PULL_EVENTS_BATCH_MAX_EVENTS", 1000, minimum=1),
        batch_max_bytes=batch_max_bytes,
        batch_max_wait_seconds=_float(env, "PULL_EVENTS_BATCH_MAX_WAIT_MS", 5.0, minimum=0.0) / 1000,
        max_pending_events=_int(env, "PULL_EVENTS_MAX_PENDING_EVENTS", 5000, minimum=1),
        commit_timeout_seconds=_float(env, "PULL_EVENTS_COMMIT_TIMEOUT_S", 10.0, minimum=0.1),
        jwks_min_refresh_seconds=_float(env, "PULL_EVENTS_JWKS_MIN_REFRESH_S", 10.0, minimum=0.0),
        max_line_bytes=max_line_bytes,
        # At most a day: the load looks back that far (TOKEN_REPLAY_WINDOW) for another event under the same token.
        max_token_lifetime_seconds=_float(
            env, "PULL_EVENTS_MAX_TOKEN_LIFETIME_S", 3 * 3600.0, minimum=1.0, maximum=MAX_TOKEN_LIFETIME_SECONDS
        ),
        token_leeway_seconds=_float(env, "PULL_EVENTS_TOKEN_LEEWAY_S", 60.0, minimum=0.0, maximum=3600.0),
        header_timeout_seconds=_float(env, "PULL_EVENTS_HEADER_TIMEOUT_S", 10.0, minimum=0.1),
        body_timeout_seconds=_float(env, "PULL_EVENTS_BODY_TIMEOUT_S", 15.0, minimum=0.1),
        min_free_bytes=_int(env, "PULL_EVENTS_MIN_FREE_BYTES", 100 * 1024 * 1024, minimum=0),
        instance_name=_instance_name(env),
    )
    pipeline = PipelineSettings(
        lateness_seconds=_int(env, "PULL_EVENTS_LATENESS_S", 3600, minimum=0),
        max_objects_per_run=_int(env, "PULL_EVENTS_MAX_OBJECTS_PER_RUN", 500, minimum=1),
        rejected_rate_threshold=_float(env, "PULL_EVENTS_MAX_REJECTED_RATE", 0.01, minimum=0.0, maximum=1.0),
        raw_event_rate_threshold=_float(env, "PULL_EVENTS_MAX_RAW_EVENT_RATE", 0.1, minimum=0.0, maximum=1.0),
        max_line_bytes=max_line_bytes,
        max_load_lag_seconds=_int(env, "PULL_EVENTS_MAX_LOAD_LAG_S", 900, minimum=1),
        reconcile_days=_int(env, "PULL_EVENTS_RECONCILE_DAYS", 7, minimum=1),
        future_tolerance_seconds=_int(env, "PULL_EVENTS_FUTURE_TOLERANCE_S", 3600, minimum=0),
        # A later first day would leave daily_pulls without a partition for a load to recompute.
        first_day=_date(env, "PULL_EVENTS_FIRST_DAY", DEFAULT_FIRST_DAY, latest=datetime.now(UTC).date()),
        audit_cron=_cron(env, "PULL_EVENTS_AUDIT_CRON", "17 3 * * *"),
    )
    return Settings(
        landing=parse_landing(env.get("PULL_EVENTS_LANDING", "").strip() or str(DEFAULT_LANDING)),
        warehouse=parse_warehouse(env.get("PULL_EVENTS_WAREHOUSE", "").strip() or str(DEFAULT_WAREHOUSE)),
        receiver=receiver,
        pipeline=pipeline,
    )


def check_listen_address(receiver: ReceiverSettings) -> None:
    """Refuse (``SettingsError``) to serve without authentication on an address others can reach, unless
    ``PULL_EVENTS_ALLOW_PUBLIC_AUTH_OFF`` says so. Called where the receiver binds (gunicorn's config)."""
    if receiver.auth == "off" and not is_loopback(receiver.host) and not receiver.allow_public_auth_off:
        raise SettingsError(
            "PULL_EVENTS_HOST",
            f"PULL_EVENTS_AUTH=off lets anyone land events: listen on a loopback address (127.0.0.1), not"
            f" {receiver.host!r}, or set PULL_EVENTS_ALLOW_PUBLIC_AUTH_OFF=true if that is really meant",
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything


def _instance_name(env: Mapping[str, str]) -> str:
    """``PULL_EVENTS_INSTANCE`` as given (refused unless it can appear verbatim in an object name), else Cloud Run's
    ``K_REVISION``, else the host name; the fallbacks are the platform's to choose, so they are made safe, not refused.
    """
    given = env.get("PULL_EVENTS_INSTANCE", "").strip()
    if given:
        if not _INSTANCE_NAME.match(given):
            raise SettingsError(
                "PULL_EVENTS_INSTANCE",
                f"{given!r} must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        return given
    fallback = env.get("K_REVISION", "").strip() or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9._-]+", "_", fallback)[:63].lstrip("._-") or "receiver"


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(name, f"must be true or false, not {raw!r}")


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def _date(env: Mapping[str, str], name: str, default: date, latest: date) -> date:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a date (YYYY-MM-DD)") from None
    if value > latest:
        raise SettingsError(name, f"{raw!r} is after today ({latest.isoformat()}, UTC)")
    return value


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    raw = " ".join(env.get(name, "").split()) or default
    if len(raw.split(" ")) != 5:
        raise SettingsError(name, f"{raw!r} is not a cron schedule of five fields, e.g. '17 3 * * *'")
    return raw


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int | None = None, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not an integer") from None
    _check_range(name, value, minimum, maximum)
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float | None = None, maximum: float | None = None
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a number") from None
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingsError(name, f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(name, f"must be at most {maximum}, not {value}")
