"""The landing zone: how landed NDJSON objects are named, written and listed.

Layout (keys are relative to the landing root or ``gs://bucket/prefix``)::

    <event type>/dt=<YYYY-MM-DD>/<YYYYMMDDTHHMMSSffffffZ>-<instance>-<seq>.ndjson

Keys sort by time within a type, so "everything since T" is one ranged listing per type. Every key
segment is sanitised, so a hostile ``Ce-Type`` cannot escape its directory. Objects are written
create-only and are durable when ``write_new`` returns.

Each line is one CloudEvent in JSON form (attributes, extensions and ``data``) with these extra
top-level keys; their underscores make a clash with a CloudEvents extension name impossible:
``landing_object``, ``landing_line``, ``received_at``, ``received_by``, ``body_sha256``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pull_events.settings import LandingLocation

OBJECT_SUFFIX = ".ndjson"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SEGMENT = 120


class LandingUnavailable(RuntimeError):
    """The landing zone could not durably take an object (retryable)."""


class ObjectAlreadyExists(LandingUnavailable):
    """A create-only write found the key taken by different content."""


@dataclass(frozen=True)
class LandedObject:
    """One object in the landing zone."""

    key: str
    size: int
    uri: str


def safe_segment(value: str) -> str:
    """Turn any string into one safe path segment: no '/', no '..', bounded length, never empty."""
    cleaned = _UNSAFE.sub("_", value).strip(".")
    if len(cleaned) > _MAX_SEGMENT or cleaned != value:
        # Keep distinct hostile values distinct after cleaning.
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        cleaned = f"{cleaned[: _MAX_SEGMENT - 13]}~{digest}"
    return cleaned or "_"


def time_stamp(moment: datetime) -> str:
    """The sortable time component of a key, e.g. ``20261128T001530123456Z``."""
    return moment.astimezone(UTC).strftime(_STAMP_FORMAT)


def object_key(event_type: str, committed_at: datetime, instance: str, sequence: int) -> str:
    """The key of a new object holding events of ``event_type`` committed at ``committed_at``."""
    moment = committed_at.astimezone(UTC)
    return (
        f"{safe_segment(event_type)}/dt={moment:%Y-%m-%d}/"
        f"{time_stamp(moment)}-{safe_segment(instance)}-{sequence:010d}{OBJECT_SUFFIX}"
    )


def listing_start(type_dir: str, since: datetime) -> str:
    """The smallest key of ``type_dir`` that can hold an object committed at or after ``since``."""
    moment = since.astimezone(UTC)
    return f"{type_dir}/dt={moment:%Y-%m-%d}/{time_stamp(moment)}"


def key_committed_at(key: str) -> datetime:
    """The commit time encoded in a key (inverse of ``object_key``)."""
    stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)


def new_instance_id() -> str:
    """A name for this writer process: host, pid and a random part, so writers never collide."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LandingStore(ABC):
    """Create-only, durable object storage for NDJSON batches, listable by time."""

    @abstractmethod
    def write_new(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; durable on return. Never overwrites another object.

        Raises ``LandingUnavailable`` when the store cannot take it (the caller must not acknowledge).
        """

    @abstractmethod
    def event_type_dirs(self) -> list[str]:
        """The top-level type directories present (one per event type ever landed)."""

    @abstractmethod
    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        """Objects of ``type_dir`` whose key is >= ``start_key``, in key order."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The content of one object."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where a warehouse load can read ``key`` from (a file path or a gs:// URI)."""

    @abstractmethod
    def check_ready(self) -> None:
        """Raise ``LandingUnavailable`` unless the store is reachable and writable."""

    def list_since(self, since: datetime) -> Iterator[LandedObject]:
        """Every object committed at or after ``since`` (by key time), across all types.

        Cost grows with the number of objects in that window and the number of types,
        not with everything ever landed.
        """
        for type_dir in self.event_type_dirs():
            yield from self.list_from(type_dir, listing_start(type_dir, since))

    def list_all(self) -> Iterator[LandedObject]:
        """Every object ever landed (for a rebuild from scratch)."""
        return self.list_since(datetime(1970, 1, 1, tzinfo=UTC))


class LocalLandingStore(LandingStore):
    """A directory on local disk; writes are fsynced and linked into place atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def write_new(self, key: str, data: bytes) -> None:
        final = self.root / key
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                # link() fails if the key exists: create-only, and atomic like rename().
                os.link(tmp, final)
            except FileExistsError:
                if final.read_bytes() != data:
                    raise ObjectAlreadyExists(f"{key} already exists with other content") from None
            _fsync_dir(final.parent)
        except OSError as exc:
            raise LandingUnavailable(f"cannot write {final}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def event_type_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        base = self.root / type_dir
        if not base.is_dir():
            return
        start_partition, _, start_name = start_key[len(type_dir) + 1 :].partition("/")
        for partition in sorted(p.name for p in base.iterdir() if p.name.startswith("dt=")):
            if partition < start_partition:
                continue
            folder = base / partition
            # Filter by name before sorting or stat-ing: the window is usually a small tail of the day.
            floor = start_name if partition == start_partition else ""
            names = sorted(
                name
                for name in os.listdir(folder)
                if name >= floor and name.endswith(OBJECT_SUFFIX) and not name.startswith(".")
            )
            for name in names:
                path = folder / name
                yield LandedObject(key=f"{type_dir}/{partition}/{name}", size=path.stat().st_size, uri=str(path))

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def check_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".ready-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise LandingUnavailable(f"{self.root} is not writable: {exc.strerror or exc}") from exc


class GcsLandingStore(LandingStore):
    """A GCS bucket (and optional prefix); each object is one create-only upload."""

    def __init__(self, bucket: str, prefix: str = "", client: object | None = None, timeout: float = 10.0) -> None:
        from google.cloud import storage

        self.client = client if client is not None else storage.Client()
        self.bucket = self.client.bucket(bucket)  # type: ignore[attr-defined]
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.timeout = timeout

    def write_new(self, key: str, data: bytes) -> None:
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY

        blob = self.bucket.blob(self.prefix + key)
        try:
            blob.upload_from_string(
                data,
                content_type=NDJSON_CONTENT_TYPE,
                if_generation_match=0,
                timeout=self.timeout,
                retry=DEFAULT_RETRY.with_timeout(self.timeout),
            )
        except exceptions.PreconditionFailed:
            # A retried upload whose first attempt succeeded: fine if the stored bytes are ours.
            if not self._holds(blob.name, data):
                raise ObjectAlreadyExists(f"{key} already exists with other content") from None
        except Exception as exc:
            raise LandingUnavailable(f"cannot upload gs://{self.bucket.name}/{blob.name}: {exc}") from exc

    def _holds(self, name: str, data: bytes) -> bool:
        try:
            return self.bucket.blob(name).download_as_bytes(timeout=self.timeout) == data
        except Exception as exc:
            raise LandingUnavailable(f"cannot verify gs://{self.bucket.name}/{name}: {exc}") from exc

    def event_type_dirs(self) -> list[str]:
        blobs = self.client.list_blobs(self.bucket, prefix=self.prefix, delimiter="/", timeout=self.timeout)  # type: ignore[attr-defined]
        for _ in blobs:  # the prefixes are filled in as pages are read
            pass
        return sorted(p[len(self.prefix) :].rstrip("/") for p in blobs.prefixes)

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        for blob in self.client.list_blobs(  # type: ignore[attr-defined]
            self.bucket, prefix=f"{self.prefix}{type_dir}/", start_offset=self.prefix + start_key, timeout=self.timeout
        ):
            if blob.name.endswith(OBJECT_SUFFIX):
                key = blob.name[len(self.prefix) :]
                yield LandedObject(key=key, size=blob.size or 0, uri=self.uri(key))

    def read(self, key: str) -> bytes:
        return self.bucket.blob(self.prefix + key).download_as_bytes(timeout=self.timeout)

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}{key}"

    def check_ready(self) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        timeout = min(self.timeout, 5.0)
        try:
            # Bound the retries too: by default they go on for 120 s against an unreachable server.
            if not self.bucket.exists(timeout=timeout, retry=DEFAULT_RETRY.with_timeout(timeout)):
                raise LandingUnavailable(f"bucket gs://{self.bucket.name} does not exist")
        except LandingUnavailable:
            raise
        except Exception as exc:
            raise LandingUnavailable(f"bucket gs://{self.bucket.name} is unreachable: {exc}") from exc


def open_landing_store(location: LandingLocation) -> LandingStore:
    """The store for a configured location (``PULL_EVENTS_LANDING``)."""
    if location.kind == "gcs":
        return GcsLandingStore(location.bucket, location.prefix)
    return LocalLandingStore(location.path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def utc_now() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "GcsLandingStore",
    "LandedObject",
    "LandingStore",
    "LandingUnavailable",
    "LocalLandingStore",
    "ObjectAlreadyExists",
    "key_committed_at",
    "listing_start",
    "new_instance_id",
    "object_key",
    "open_landing_store",
    "safe_segment",
    "utc_now",
]
