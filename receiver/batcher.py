"""Group commit: many concurrent requests, one durable object per event type per batch.

Request threads call ``submit`` with an encoded record and block until their item is resolved. One committer
thread gathers what is queued (at most ``max_events`` / ``max_bytes``; it waits at most ``max_wait``
after the oldest item arrived, and not at all once a batch is full or while shutting down), writes one
create-only object per event type with ``LandingStore.write_new``, and only then resolves the items.
So an acknowledgement always means the object is durable, and a burst of thousands of events becomes
a handful of objects while a lone event waits only ``max_wait``.

A record whose landed line (with the ``landing_object`` / ``landing_line`` prefix the committer adds) would be
longer than ``max_line_bytes`` is refused at once (``LineTooLarge``, 413): the pipeline rejects such a line
unread, so the receiver must never acknowledge one.

The queue is bounded by events and bytes: when it is full, ``submit`` refuses at once (``Overloaded``),
so memory stays flat under any burst and the sender is pushed back. A request waits at most
``commit_timeout`` for its commit; after that it is refused (``CommitTimedOut``) and, if its item was
not yet taken, the item is withdrawn, so it can never land after having been refused. (An item already
being written may still land; the sender's retry then makes a duplicate, which at-least-once delivery
allows and the warehouse removes by ``(source, id)``.)

Group commit works within one process: each gunicorn worker process has its own batcher.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pull_events.landing import LandingStore, LandingUnavailable, object_key, utc_now
from receiver.errors import Rejection, Unavailable
from receiver.logs import get_logger
from receiver.metrics import ReceiverMetrics

# Each line gets '{"landing_object":"<key>","landing_line":N,' in front: count it in the batch size.
_LINE_OVERHEAD = 256
_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)
log = get_logger("batcher")


class Overloaded(Unavailable):
    """Too many events are waiting for a commit: retry shortly (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__("overloaded", detail, retry_after=1)


class CommitTimedOut(Unavailable):
    """The event was not durable within the commit timeout; it is not acknowledged (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__("commit_timeout", detail, retry_after=2)


class ShuttingDown(Unavailable):
    """The receiver is stopping and takes no new events (503)."""

    def __init__(self) -> None:
        super().__init__("shutting_down", "the receiver is shutting down", retry_after=1)


class CommitFailed(Unavailable):
    """The landing zone refused the object holding the event (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__("landing_unavailable", detail, retry_after=5)


class LineTooLarge(Rejection):
    """The event's landed line would be longer than the warehouse loads (413); nothing of it is landed."""

    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "line_too_large",
            f"the event's landed line would be {size} bytes, over the limit of {limit} bytes per line",
        )


@dataclass(frozen=True)
class Landed:
    """Where an event was landed: the object key and its 1-based line."""

    key: str
    line: int


# An item's state, changed under the batcher's lock: queued until the committer takes it or its request
# withdraws it (commit timeout), whichever comes first.
_QUEUED, _TAKEN, _WITHDRAWN = 0, 1, 2


class _Item:
    """One record waiting for its commit, and the request thread waiting for the outcome.

    A plain lock, held from the start and released once the outcome is set, is the cheapest thing a
    thread can block on with a timeout (a ``concurrent.futures.Future`` costs several times more).
    """

    __slots__ = ("_unresolved", "enqueued", "event_type", "outcome", "record", "size", "state")

    def __init__(self, event_type: str, record: bytes) -> None:
        self.event_type = event_type
        self.record = record
        self.size = len(record) + _LINE_OVERHEAD
        self.enqueued = time.monotonic()
        self.state = _QUEUED
        self.outcome: Landed | Unavailable | None = None
        self._unresolved = threading.Lock()
        self._unresolved.acquire()

    def resolve(self, outcome: Landed | Unavailable) -> None:
        """Hand the outcome to the waiting request (once: later calls are ignored)."""
        if self.outcome is None:
            self.outcome = outcome
            self._unresolved.release()

    def wait(self, timeout: float) -> bool:
        """Whether the item was resolved within ``timeout`` seconds (0: just look)."""
        return self._unresolved.acquire(timeout > 0, timeout if timeout > 0 else -1)

    def result(self) -> Landed:
        """The outcome of a resolved item: where it landed, or the refusal raised."""
        outcome = self.outcome
        if isinstance(outcome, Landed):
            return outcome
        assert outcome is not None
        raise outcome


class Batcher:
    """Gathers records from many threads and lands them in few create-only objects."""

    def __init__(
        self,
        store: LandingStore,
        instance: str,
        *,
        max_events: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
        max_wait: float = 0.005,
        max_pending_events: int = 5000,
        max_pending_bytes: int = 16 * 1024 * 1024,
        commit_timeout: float = 10.0,
        max_line_bytes: int | None = None,
        metrics: ReceiverMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.instance = instance
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.commit_timeout = commit_timeout
        self.max_line_bytes = max_line_bytes
        self.metrics = metrics or ReceiverMetrics()
        self.clock = clock
        # The longest prefix any line can get (a type name as long as a key segment gets), so that a record
        # well under the limit is let through by one comparison.
        self._longest_prefix = self._prefix_bytes("t" * 1000)
        self._queue: deque[_Item] = deque()
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._sequence = itertools.count(1)
        self.metrics.track_queue_depth(self.pending)

    def pending(self) -> int:
        """Events queued and not yet taken by the committer."""
        return len(self._queue)

    def submit(self, event_type: str, record: bytes) -> Landed:
        """Land one record (a JSON object without newline); return where once it is durable.

        Raises ``LineTooLarge`` (413), ``Overloaded``, ``ShuttingDown``, ``CommitTimedOut`` or ``CommitFailed``
        (all 503s); on any of them the event is not acknowledged.
        """
        limit = self.max_line_bytes
        if limit is not None and len(record) + self._longest_prefix > limit:
            size = self.landed_line_bytes(event_type, record)
            if size > limit:
                raise LineTooLarge(size, limit)
        item = _Item(event_type, record)
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            if len(self._queue) >= self.max_pending_events:
                raise Overloaded(f"{len(self._queue)} events are already waiting for a commit")
            if self._queue and self._pending_bytes + item.size > self.max_pending_bytes:
                raise Overloaded(f"{self._pending_bytes} bytes are already waiting for a commit")
            self._start_committer()
            self._queue.append(item)
            self._pending_bytes += item.size
            # Wake the committer only when it has something new to decide on.
            if len(self._queue) == 1 or len(self._queue) >= self.max_events or self._pending_bytes >= self.max_bytes:
                self._cond.notify()
        if item.wait(self.commit_timeout):
            return item.result()
        with self._cond:
            if item.state == _QUEUED:
                item.state = _WITHDRAWN  # the committer skips it
                raise CommitTimedOut(f"not committed within {self.commit_timeout:g}s; withdrawn, so it will not land")
        if item.wait(0):  # finished just now
            return item.result()
        raise CommitTimedOut(f"not committed within {self.commit_timeout:g}s (the write is still in progress)")

    def landed_line_bytes(self, event_type: str, record: bytes) -> int:
        """The longest the landed line of ``record`` can be, without its newline (what the pipeline measures)."""
        return len(record) + self._prefix_bytes(event_type)

    def _prefix_bytes(self, event_type: str) -> int:
        # What _write_group puts in front of a record, less the record's own "{": every part of a key but the
        # sequence number has a fixed width for a given type and instance (its time fields too), and the
        # sequence has 10 digits up to 10**10 objects; the line number has at most as many digits as max_events.
        key = object_key(event_type, _ANY_TIME, self.instance, 10**10 - 1)
        return len(_line_head(key)) + len(str(self.max_events)) + len(b",") - len(b"{")

    def close(self, timeout: float | None = None) -> None:
        """Take no new events, commit everything queued, and stop the committer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("committer still busy at shutdown", extra={"fields": {"pending": len(self._queue)}})
        else:
            log.info("committer stopped: everything queued is committed")

    @property
    def closed(self) -> bool:
        return self._closing

    def _start_committer(self) -> None:
        # Started on first use, so an app created before a fork gets its thread in the child.
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="landing-committer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                try:
                    self._commit(batch)
                except Exception as exc:  # never let the committer die with requests left waiting
                    log.exception("commit crashed", extra={"fields": {"events": len(batch)}})
                    for item in batch:
                        item.resolve(CommitFailed(f"commit failed: {exc}"))

    def _next_batch(self) -> list[_Item] | None:
        """The next items to commit, ``[]`` if all were withdrawn, ``None`` once closed and empty."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self.max_wait
            while (
                not self._closing
                and len(self._queue) < self.max_events
                and self._pending_bytes < self.max_bytes
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._cond.wait(remaining)
            batch: list[_Item] = []
            size = 0
            while self._queue and len(batch) < self.max_events:
                item = self._queue[0]
                if batch and size + item.size > self.max_bytes:
                    break
                self._queue.popleft()
                self._pending_bytes -= item.size
                if item.state == _QUEUED:  # else its request gave up and withdrew it
                    item.state = _TAKEN
                    batch.append(item)
                    size += item.size
            return batch

    def _commit(self, batch: list[_Item]) -> None:
        committed_at = self.clock()
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.event_type, []).append(item)
        for event_type, items in groups.items():
            self._write_group(event_type, items, committed_at)

    def _write_group(self, event_type: str, items: list[_Item], committed_at: datetime) -> None:
        key = object_key(event_type, committed_at, self.instance, next(self._sequence))
        head = _line_head(key)
        data = b"".join(b"%s%d,%s\n" % (head, line, memoryview(item.record)[1:]) for line, item in enumerate(items, 1))
        started = time.perf_counter()
        try:
            self.store.write_new(key, data)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, LandingUnavailable) else f"{type(exc).__name__}: {exc}"
            self.metrics.commit_failures.inc()
            log.error(
                "landing zone refused an object",
                extra={"fields": {"object": key, "events": len(items), "problem": reason}},
            )
            for item in items:
                item.resolve(CommitFailed(f"the landing zone could not store the event: {reason}"))
            return
        elapsed = time.perf_counter() - started
        self.metrics.commit_seconds.observe(elapsed)
        self.metrics.batch_events.observe(len(items))
        self.metrics.batch_bytes.observe(len(data))
        log.info(
            "landed an object",
            extra={"fields": {"object": key, "events": len(items), "bytes": len(data), "seconds": round(elapsed, 6)}},
        )
        for line, item in enumerate(items, 1):
            item.resolve(Landed(key, line))


def _line_head(key: str) -> bytes:
    """What each line of object ``key`` starts with, before its line number."""
    return b'{"landing_object":' + json.dumps(key).encode() + b',"landing_line":'
