"""The landing zone: how landed NDJSON objects are named, written and listed.

Layout (keys are relative to the landing root or ``gs://bucket/prefix``)::

    <event type>/dt=<YYYY-MM-DD>/hour=<HH>/<YYYYMMDDTHHMMSSffffffZ>-<instance>-<seq>.ndjson

Keys sort by time within a type (every time field is fixed width, so key order is time order), so
"everything since T" is one ranged listing per type. On GCS that is a listing from a start offset; on local
disk the hour folders let it skip every earlier hour without listing it, so its cost does not grow with the
objects landed earlier the same day. Every key segment is sanitised, so a hostile ``Ce-Type`` cannot escape
its directory. Objects are written create-only and are durable when ``write_new`` returns.

Each line is one CloudEvent in JSON form (attributes, extensions and ``data``) with these extra
top-level keys; their underscores make a clash with a CloudEvents extension name impossible:
``landing_object``, ``landing_line``, ``received_at``, ``received_by``, ``body_sha256``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

from pull_events.settings import LandingLocation

log = logging.getLogger(__name__)

OBJECT_SUFFIX = ".ndjson"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SEGMENT = 120
# JSON's whitespace other than the newline that ends a line: a segment of nothing else is a blank line.
BLANK_BYTES = b" \t\r"
UTF8_BOM = b"\xef\xbb\xbf"


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
        f"{safe_segment(event_type)}/{_time_folders(moment)}/"
        f"{time_stamp(moment)}-{safe_segment(instance)}-{sequence:010d}{OBJECT_SUFFIX}"
    )


def listing_start(type_dir: str, since: datetime) -> str:
    """The smallest key of ``type_dir`` that can hold an object committed at or after ``since``."""
    moment = since.astimezone(UTC)
    return f"{type_dir}/{_time_folders(moment)}/{time_stamp(moment)}"


def _time_folders(moment: datetime) -> str:
    """The Hive-style day and hour folders of a key, e.g. ``dt=2026-11-28/hour=00`` (``moment`` in UTC)."""
    return f"dt={moment:%Y-%m-%d}/hour={moment:%H}"


def key_committed_at(key: str) -> datetime:
    """The commit time encoded in a key (inverse of ``object_key``)."""
    stamp = key.rsplit("/", 1)[-1].split("-", 1)[0]
    return datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)


def line_segments(data: bytes) -> list[bytes]:
    """An object's lines as its bytes hold them: the ``\\n``-separated segments, a leading UTF-8 BOM dropped.

    The last segment is empty when the object ends with a newline, as the receiver's objects do.
    """
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    return data.split(b"\n")


def is_blank(segment: bytes) -> bool:
    """Whether a segment holds only JSON whitespace: such a segment is not a line and loads as nothing."""
    return not segment.strip(BLANK_BYTES)


def count_lines(data: bytes) -> int:
    """The lines an object holds, counted from its bytes: its non-blank ``\\n``-separated segments.

    This is the number a load must account for: every one of them becomes a row, a skipped duplicate or a
    rejected line.
    """
    return sum(1 for segment in line_segments(data) if not is_blank(segment))


def new_instance_id(name: str | None = None) -> str:
    """A name for this writer process: ``name`` (default: the host name), pid and a random part.

    The pid and random part keep writers apart however the names are set: two processes given one name (a
    deployment's replicas, gunicorn's workers, a pid reused in another container) still never write one key.
    """
    return f"{safe_segment(name or socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
    def open_read(self, key: str) -> BinaryIO:
        """A stream of one object's content, read a chunk at a time (for objects of any size)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object now."""

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

    def list_day(self, type_dir: str, day: date) -> Iterator[LandedObject]:
        """The objects of ``type_dir`` committed on one UTC ``day`` (its ``dt=`` folder), in key order.

        A day folder is one key range: the listing starts at its first key and stops at the first key past
        it, so it costs that day's objects, not the type's history.
        """
        folder = f"{type_dir}/dt={day:%Y-%m-%d}/"
        for obj in self.list_from(type_dir, folder):
            if not obj.key.startswith(folder):
                return
            yield obj


class LocalLandingStore(LandingStore):
    """A directory on local disk; writes are fsynced and linked into place atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Folders whose entries, and their parents' entries, this store has made durable (see _ensure_folder).
        self._durable_folders: set[Path] = set()

    def write_new(self, key: str, data: bytes) -> None:
        final = self.root / key
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._ensure_folder(final.parent)
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

    def _ensure_folder(self, folder: Path) -> None:
        """Create ``folder`` if it is missing, and make the directory entries leading to it durable.

        A new folder's entry lives in its parent, so fsyncing the folder alone (as ``write_new`` does for the
        object's entry) would not keep it across a crash; the same goes for the parent's own entry if that is new
        too. The folder may also have been created a moment ago by another writer whose fsyncs have not run yet,
        so the first write of this store into any folder fsyncs the chain up to the root itself. The fsyncs run
        once per folder (an hour per type per process); every other write costs one mkdir that finds it there.
        """
        created: list[Path] = []
        try:
            os.mkdir(folder)
            created.append(folder)
        except FileExistsError:
            if folder in self._durable_folders:
                return
        except FileNotFoundError:
            missing = folder
            while not missing.is_dir() and missing != missing.parent:
                created.append(missing)
                missing = missing.parent
            folder.mkdir(parents=True, exist_ok=True)
        holders = {path.parent for path in created}
        holders.update(parent for parent in folder.parents if parent.is_relative_to(self.root))
        for holder in sorted(holders, key=lambda path: len(path.parts), reverse=True):
            _fsync_dir(holder)
        if len(self._durable_folders) > 10_000:  # bounded: a long-running process sees a new hour every hour
            self._durable_folders.clear()
        self._durable_folders.add(folder)

    def event_type_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_from(self, type_dir: str, start_key: str) -> Iterator[LandedObject]:
        prefix = f"{type_dir}/"
        if start_key.startswith(prefix):
            floor = start_key[len(prefix) :]
        elif start_key < prefix:
            floor = ""
        else:
            return
        base = self.root / type_dir
        if base.is_dir():
            yield from self._walk(base, prefix, floor)

    def _walk(self, folder: Path, prefix: str, floor: str) -> Iterator[LandedObject]:
        """Objects under ``folder`` (whose keys start with ``prefix``) with key >= ``prefix + floor``, in key order.

        Exactly the order and bounds of a string comparison of whole keys, as a GCS ranged listing gives, while
        listing only the folders that can hold such keys: at each level a folder whose name sorts below the
        floor's first segment is skipped unlisted, the one equal to it is walked with the rest of the floor, and
        later ones are walked whole.
        """
        # Filter by name before sorting or stat-ing: the window is usually a small tail of the folder. A name below
        # the floor matters only as a folder the floor runs through (its first segment) or, for a name followed in
        # that segment by a character sorting before "/", a folder whose keys all sort after the floor. ``low`` is
        # the shortest such name, so for the layout's names this first pass is the one comparison it always was.
        head = floor.partition("/")[0]
        low = next((head[:end] for end in range(len(head)) if head[end] < "/"), head)
        names = [name for name in os.listdir(folder) if name >= low and name[:1] != "."]
        entries = []
        for name in names:
            if name < floor and not floor.startswith(name):
                continue
            path = folder / name
            if not _is_utf8(name):
                log.warning("skipping %s: its name is not UTF-8, so it cannot be a key", path)
                continue
            try:
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    # A link to a file reads as that file; a link to a folder is not walked (it may loop).
                    info = path.stat()
                    if stat.S_ISDIR(info.st_mode):
                        log.warning("skipping %s: a link to a folder", path)
                        continue
            except OSError as exc:  # a dangling link: another writer's debris, not an object
                log.warning("skipping %s: %s", path, exc.strerror or exc)
                continue
            if stat.S_ISDIR(info.st_mode):
                # All keys below a folder start with "<name>/": sorting by that is sorting by key.
                entries.append((f"{name}/", path, None))
            elif name >= floor and name.endswith(OBJECT_SUFFIX) and stat.S_ISREG(info.st_mode):
                entries.append((name, path, info.st_size))
        for sort_name, path, size in sorted(entries):
            if size is not None:
                yield LandedObject(key=prefix + sort_name, size=size, uri=str(path))
            elif floor.startswith(sort_name):
                yield from self._walk(path, prefix + sort_name, floor[len(sort_name) :])
            elif sort_name > floor:
                yield from self._walk(path, prefix + sort_name, "")

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def open_read(self, key: str) -> BinaryIO:
        return (self.root / key).open("rb")

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def check_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".ready-{uuid.uuid4().hex[:8]}"
            try:
                # Real bytes, synced: an empty file needs no data block, so it is created on a full disk too.
                with probe.open("wb") as file:
                    file.write(b"\0" * _PROBE_BYTES)
                    file.flush()
                    os.fsync(file.fileno())
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise LandingUnavailable(f"{self.root} is not writable: {exc.strerror or exc}") from exc


# One page: what the readiness probe writes to prove the disk can take data.
_PROBE_BYTES = 4096


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

    def open_read(self, key: str) -> BinaryIO:
        # Plain bytes as stored: no decompressive transcoding, so sizes and lines are the object's own.
        return self.bucket.blob(self.prefix + key).open("rb", chunk_size=8 * 1024 * 1024, raw_download=True)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        return self.bucket.blob(self.prefix + key).exists(timeout=self.timeout)

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


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir gives undecodable bytes as lone surrogates
        return False
    return True


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
    "count_lines",
    "is_blank",
    "key_committed_at",
    "line_segments",
    "listing_start",
    "new_instance_id",
    "object_key",
    "open_landing_store",
    "safe_segment",
    "utc_now",
]
