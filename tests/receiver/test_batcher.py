"""Group commit against a real local landing store: batching, bounds, push-back, timeouts, shutdown."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pull_events.landing import LandingStore, LocalLandingStore
from receiver.batcher import Batcher, CommitFailed, CommitTimedOut, Landed, Overloaded, ShuttingDown
from tests.receiver.deliveries import landed_records
from tests.receiver.stores import GatedStore


def record(event_id: str) -> bytes:
    return json.dumps({"id": event_id}).encode()


def objects(store: LandingStore) -> dict[str, list[dict]]:
    """Each landed object's records, by key."""
    return {o.key: [json.loads(line) for line in store.read(o.key).splitlines()] for o in store.list_all()}


def submit_in_background(batcher: Batcher, event_type: str, event_id: str) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(batcher.submit(event_type, record(event_id)))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


@pytest.fixture
def gated(tmp_path: Path) -> GatedStore:
    return GatedStore(tmp_path / "landing")


def hold_the_committer(batcher: Batcher, store: GatedStore) -> tuple[threading.Thread, list]:
    """Submit one event whose write blocks at the gate, so what is submitted next queues up."""
    first = submit_in_background(batcher, "t", "first")
    store.wait_for_writes(1)
    return first


def test_concurrent_submissions_share_objects_and_every_record_lands_once(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    batcher = Batcher(store, "test", max_wait=0.02)
    start = threading.Barrier(20)

    def submit_ten(thread_no: int) -> list[tuple[str, Landed]]:
        start.wait()
        return [(f"{thread_no}-{n}", batcher.submit("t", record(f"{thread_no}-{n}"))) for n in range(10)]

    with ThreadPoolExecutor(20) as pool:
        results = [pair for chunk in pool.map(submit_ten, range(20)) for pair in chunk]
    batcher.close()

    landed = objects(store)
    assert sorted(r["id"] for records in landed.values() for r in records) == sorted(i for i, _ in results)
    assert len(landed) <= 40, f"{len(landed)} objects for 200 events from 20 threads"
    for event_id, where in results:  # each acknowledgement names the object and line holding that event
        line = landed[where.key][where.line - 1]
        assert (line["id"], line["landing_object"], line["landing_line"]) == (event_id, where.key, where.line)


def test_a_batch_is_split_at_max_events(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", max_events=10, max_wait=0)
    threads = [hold_the_committer(batcher, gated)]
    threads += [submit_in_background(batcher, "t", str(n)) for n in range(25)]
    wait_until(lambda: batcher.pending() == 25)
    gated.open_gate()
    for thread, _ in threads:
        thread.join()
    assert sorted(len(records) for records in objects(gated).values()) == [1, 5, 10, 10]


def test_a_batch_is_split_at_max_bytes(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", max_bytes=2048, max_wait=0)
    threads = [hold_the_committer(batcher, gated)]
    threads += [submit_in_background(batcher, "t", str(n) * 500) for n in range(6)]
    wait_until(lambda: batcher.pending() == 6)
    gated.open_gate()
    for thread, _ in threads:
        thread.join()
    sizes = [gated.read(key) for key in objects(gated)]
    assert all(len(data) <= 2048 for data in sizes)
    assert sum(len(data.splitlines()) for data in sizes) == 7


def test_one_object_per_event_type_in_a_batch(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", max_wait=0)
    threads = [hold_the_committer(batcher, gated)]
    for n in range(4):
        for event_type in ("a.v1", "b.v1", "c.v1"):
            threads.append(submit_in_background(batcher, event_type, f"{event_type}-{n}"))
    wait_until(lambda: batcher.pending() == 12)
    gated.open_gate()
    for thread, _ in threads:
        thread.join()
    landed = objects(gated)
    by_type = {key.split("/", 1)[0]: [r["id"] for r in records] for key, records in landed.items()}
    assert by_type == {
        "t": ["first"],
        "a.v1": [f"a.v1-{n}" for n in range(4)],
        "b.v1": [f"b.v1-{n}" for n in range(4)],
        "c.v1": [f"c.v1-{n}" for n in range(4)],
    }


def test_a_full_queue_refuses_at_once_and_what_was_refused_never_lands(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", max_pending_events=3, max_wait=0)
    threads = [hold_the_committer(batcher, gated)]
    threads += [submit_in_background(batcher, "t", f"queued-{n}") for n in range(3)]
    wait_until(lambda: batcher.pending() == 3)
    with pytest.raises(Overloaded) as refused:
        batcher.submit("t", record("refused"))
    assert refused.value.status == 503 and refused.value.retry_after == 1
    gated.open_gate()
    for thread, outcome in threads:
        thread.join()
        assert isinstance(outcome[0], Landed)
    assert sorted(r["id"] for r in landed_records(gated)) == ["first", "queued-0", "queued-1", "queued-2"]


def test_a_full_byte_budget_refuses(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", max_pending_bytes=4096, max_wait=0)
    threads = [hold_the_committer(batcher, gated)]
    threads.append(submit_in_background(batcher, "t", "x" * 3000))
    wait_until(lambda: batcher.pending() == 1)
    with pytest.raises(Overloaded):
        batcher.submit("t", record("y" * 3000))
    gated.open_gate()
    for thread, _ in threads:
        thread.join()
    assert len(landed_records(gated)) == 2


def test_commit_timeout_refuses_and_withdraws_what_was_not_yet_written(gated: GatedStore) -> None:
    batcher = Batcher(gated, "test", commit_timeout=0.2, max_wait=0)
    in_flight, in_flight_outcome = hold_the_committer(batcher, gated)
    queued, queued_outcome = submit_in_background(batcher, "t", "queued")
    in_flight.join()
    queued.join()
    assert isinstance(in_flight_outcome[0], CommitTimedOut)
    assert "still in progress" in in_flight_outcome[0].detail
    assert isinstance(queued_outcome[0], CommitTimedOut)
    assert "withdrawn" in queued_outcome[0].detail
    gated.open_gate()
    batcher.close()
    # The write that was already under way may complete (the sender retries: a duplicate, allowed);
    # the withdrawn event never lands after having been refused.
    assert [r["id"] for r in landed_records(gated)] == ["first"]


def test_a_failing_store_fails_every_event_of_the_object_and_acknowledges_none(tmp_path: Path) -> None:
    (tmp_path / "landing").write_text("a file where the landing directory should be")
    batcher = Batcher(LocalLandingStore(tmp_path / "landing"), "test", max_wait=0.05)
    with ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(lambda n: _outcome(lambda: batcher.submit("t", record(str(n)))), range(5)))
    assert all(isinstance(o, CommitFailed) for o in outcomes), outcomes
    assert outcomes[0].status == 503 and outcomes[0].retry_after == 5
    assert batcher.metrics.commit_failures._value.get() >= 1


def test_close_commits_everything_queued_at_once_then_refuses(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path / "landing")
    # Without close, these would wait 30 s for the batch to fill and hit the 10 s commit timeout.
    batcher = Batcher(store, "test", max_wait=30, commit_timeout=10)
    threads = [submit_in_background(batcher, "t", str(n)) for n in range(5)]
    wait_until(lambda: batcher.pending() == 5)
    batcher.close(timeout=5)
    for thread, outcome in threads:
        thread.join()
        assert isinstance(outcome[0], Landed), outcome
    assert sorted(r["id"] for r in landed_records(store)) == ["0", "1", "2", "3", "4"]
    with pytest.raises(ShuttingDown):
        batcher.submit("t", record("late"))


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc
