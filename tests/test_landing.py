from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pull_events.landing import (
    GcsLandingStore,
    LandingStore,
    LocalLandingStore,
    ObjectAlreadyExists,
    key_committed_at,
    object_key,
    safe_segment,
)

T0 = datetime(2026, 11, 27, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LandingStore:
    if request.param == "local":
        return LocalLandingStore(tmp_path / "landing")
    fake_gcs = request.getfixturevalue("fake_gcs")
    bucket = request.getfixturevalue("gcs_bucket")
    return GcsLandingStore(bucket, "events/v1", client=fake_gcs.client())


def test_object_key_is_partitioned_by_type_and_date_and_sorts_by_time() -> None:
    key = object_key("dev.chainguard.registry.pull.v1", T0, "host-1-abc", 7)
    assert key == "dev.chainguard.registry.pull.v1/dt=2026-11-27/20261127T235959999999Z-host-1-abc-0000000007.ndjson"
    later = object_key("dev.chainguard.registry.pull.v1", T0 + timedelta(microseconds=1), "a", 0)
    assert later > key
    assert key_committed_at(key) == T0


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "..", ".", "a/b", "", "x" * 500, "\x00nul", "é/ü"])
def test_safe_segment_never_escapes_or_empties(hostile: str) -> None:
    segment = safe_segment(hostile)
    assert segment and "/" not in segment and segment not in (".", "..") and len(segment) <= 120
    assert "\x00" not in segment


def test_safe_segment_keeps_distinct_hostile_values_distinct() -> None:
    assert safe_segment("a/b") != safe_segment("a_b")
    assert safe_segment("a/b") != safe_segment("a?b")
    assert safe_segment("dev.chainguard.registry.pull.v1") == "dev.chainguard.registry.pull.v1"


def test_write_new_then_read_back_exact_bytes(store: LandingStore) -> None:
    key = object_key("t.v1", T0, "i", 1)
    data = b'{"a":1}\n{"b":"\xc3\xa9"}\n'
    store.write_new(key, data)
    assert store.read(key) == data
    assert [o.key for o in store.list_all()] == [key]


def test_write_new_never_overwrites_other_content(store: LandingStore) -> None:
    key = object_key("t.v1", T0, "i", 1)
    store.write_new(key, b"first\n")
    with pytest.raises(ObjectAlreadyExists):
        store.write_new(key, b"second\n")
    assert store.read(key) == b"first\n"
    store.write_new(key, b"first\n")  # a retried identical write is not an error
    assert store.read(key) == b"first\n"


def test_list_since_returns_only_the_window_across_days_and_types(store: LandingStore) -> None:
    keys = [
        object_key("a.v1", T0 - timedelta(days=2), "i", 1),
        object_key("a.v1", T0 - timedelta(minutes=5), "i", 2),
        object_key("a.v1", T0 + timedelta(seconds=1), "i", 3),  # next day
        object_key("b.v1", T0, "i", 4),
    ]
    for key in keys:
        store.write_new(key, b"{}\n")
    since = T0 - timedelta(minutes=10)
    assert sorted(o.key for o in store.list_since(since)) == sorted(keys[1:])
    assert sorted(o.key for o in store.list_all()) == sorted(keys)
    assert store.event_type_dirs() == ["a.v1", "b.v1"]


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path)
    key = object_key("t.v1", T0, "i", 1)
    store.write_new(key, b"x\n")
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == [Path(key).name]
