from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import pull_events.landing
from pull_events.landing import (
    GcsLandingStore,
    LandingStore,
    LocalLandingStore,
    ObjectAlreadyExists,
    key_committed_at,
    listing_start,
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


def test_object_key_is_partitioned_by_type_date_and_hour_and_sorts_by_time() -> None:
    key = object_key("dev.chainguard.registry.pull.v1", T0, "host-1-abc", 7)
    assert key == (
        "dev.chainguard.registry.pull.v1/dt=2026-11-27/hour=23/20261127T235959999999Z-host-1-abc-0000000007.ndjson"
    )
    later = object_key("dev.chainguard.registry.pull.v1", T0 + timedelta(microseconds=1), "a", 0)
    assert later == "dev.chainguard.registry.pull.v1/dt=2026-11-28/hour=00/20261128T000000000000Z-a-0000000000.ndjson"
    assert later > key
    assert key_committed_at(key) == T0
    assert key_committed_at(later) == T0 + timedelta(microseconds=1)


def test_object_key_folders_are_utc_whatever_the_zone_of_the_commit_time() -> None:
    # 01:30 at UTC+2 is 23:30 UTC the day before.
    moment = datetime(2026, 11, 28, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    key = object_key("t.v1", moment, "i", 1)
    assert key == "t.v1/dt=2026-11-27/hour=23/20261127T233000000000Z-i-0000000001.ndjson"
    assert listing_start("t.v1", moment) == "t.v1/dt=2026-11-27/hour=23/20261127T233000000000Z"


def test_keys_sort_by_commit_time_across_hour_and_day_boundaries() -> None:
    moments = [
        datetime(2026, 11, 27, 9, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 27, 22, 0, 0, 1, tzinfo=UTC),
        T0,
        T0 + timedelta(microseconds=1),
        datetime(2026, 11, 28, 1, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
    ]
    # Sequences run against time so that only the time part can put the keys in order.
    keys = [object_key("t.v1", moment, "i", 100 - index) for index, moment in enumerate(moments)]
    assert sorted(keys) == keys
    assert [key_committed_at(key) for key in keys] == moments


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


# Commit times around an hour boundary (22:00) and a day boundary (midnight), in time order.
AROUND_BOUNDARIES = [
    datetime(2026, 11, 27, 20, 30, tzinfo=UTC),
    datetime(2026, 11, 27, 21, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 27, 22, 0, tzinfo=UTC),
    datetime(2026, 11, 27, 22, 15, tzinfo=UTC),
    datetime(2026, 11, 27, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 28, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 28, 2, 45, tzinfo=UTC),
]


@pytest.mark.parametrize(
    ("since", "first"),
    [
        (datetime(2026, 11, 27, 21, 59, 59, 999999, tzinfo=UTC), 1),  # the last object of an hour
        (datetime(2026, 11, 27, 21, 59, 59, 999999, tzinfo=UTC) + timedelta(microseconds=1), 2),  # the hour after it
        (datetime(2026, 11, 27, 22, 5, tzinfo=UTC), 3),  # inside an hour, between two of its objects
        (datetime(2026, 11, 27, 23, 30, tzinfo=UTC), 4),  # in the day's last hour
        (datetime(2026, 11, 28, 0, 0, tzinfo=UTC), 5),  # exactly midnight, the first object of the next day
        (datetime(2026, 11, 28, 1, 0, tzinfo=UTC), 6),  # an hour folder that does not exist
        (datetime(2026, 11, 28, 3, 0, tzinfo=UTC), 7),  # after everything
    ],
)
def test_list_since_returns_exactly_the_objects_from_the_start_on_in_key_order(
    store: LandingStore, since: datetime, first: int
) -> None:
    keys = [object_key("t.v1", moment, "i", index) for index, moment in enumerate(AROUND_BOUNDARIES)]
    for key in reversed(keys):  # landing order must not matter
        store.write_new(key, b"{}\n")
    assert [o.key for o in store.list_since(since)] == keys[first:]
    assert [o.key for o in store.list_from("t.v1", listing_start("t.v1", since))] == keys[first:]
    assert [o.key for o in store.list_all()] == keys


def test_local_list_since_lists_no_folder_of_an_earlier_hour_or_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalLandingStore(tmp_path)
    keys = [object_key("t.v1", moment, "i", index) for index, moment in enumerate(AROUND_BOUNDARIES)]
    keys.append(object_key("t.v1", datetime(2026, 11, 26, 22, 30, tzinfo=UTC), "i", 99))  # a day before
    for key in keys:
        store.write_new(key, b"{}\n")
    listed: list[str] = []
    real_listdir = os.listdir

    def recording_listdir(path: Path) -> list[str]:
        listed.append(Path(path).relative_to(tmp_path).as_posix())
        return real_listdir(path)

    monkeypatch.setattr(pull_events.landing.os, "listdir", recording_listdir)
    since = datetime(2026, 11, 27, 22, 5, tzinfo=UTC)
    assert [o.key for o in store.list_since(since)] == keys[3:7]
    assert listed == [
        ".",  # the type folders
        "t.v1",
        "t.v1/dt=2026-11-27",
        "t.v1/dt=2026-11-27/hour=22",
        "t.v1/dt=2026-11-27/hour=23",
        "t.v1/dt=2026-11-28",
        "t.v1/dt=2026-11-28/hour=00",
        "t.v1/dt=2026-11-28/hour=02",
    ]


def test_local_listing_ignores_temporary_hidden_and_non_ndjson_files(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path)
    key = object_key("t.v1", T0, "i", 1)
    store.write_new(key, b"{}\n")
    folder = (tmp_path / key).parent
    # What an in-flight write leaves for a moment, and what a person or a tool might drop beside the objects.
    (folder / f".{Path(key).name}.0123abcd.tmp").write_bytes(b"{}\n")
    (folder / "notes.txt").write_bytes(b"x")
    (folder / ".hidden.ndjson").write_bytes(b"{}\n")
    (folder.parent / ".hour=23.ndjson").mkdir()
    (folder.parent / ".hour=23.ndjson" / "x.ndjson").write_bytes(b"{}\n")
    assert [o.key for o in store.list_since(T0 - timedelta(hours=1))] == [key]
    assert [o.key for o in store.list_all()] == [key]
    [landed] = store.list_all()
    assert (landed.size, landed.uri) == (3, str(tmp_path / key))


def test_listing_orders_and_bounds_by_whole_key_comparison_on_both_stores(store: LandingStore) -> None:
    # Names a person might copy in by hand, at every level. A GCS ranged listing compares whole keys as strings;
    # the local walk must give the same answer, also where that differs from comparing segment by segment.
    keys = [
        "t.v1/dt=2026-11-27/hour=22/20261127T220000000000Z-i-0000000001.ndjson",
        "t.v1/dt=2026-11-27/hour=22/zz-by-hand.ndjson",
        "t.v1/dt=2026-11-27/hour=22-copy/x.ndjson",  # '-' sorts before '/': these keys come before hour=22's
        "t.v1/dt=2026-11-27/late.ndjson",
        "t.v1/dt=2026/x.ndjson",  # and these after all of dt=2026-11-27's
        "t.v1/zz.ndjson",
    ]
    for key in keys:
        store.write_new(key, b"{}\n")
    every = sorted(keys)
    assert every.index("t.v1/dt=2026-11-27/hour=22-copy/x.ndjson") == 0
    assert every.index("t.v1/dt=2026/x.ndjson") == 4
    assert [o.key for o in store.list_all()] == every
    start = "t.v1/dt=2026-11-27/hour=22/2"
    assert [o.key for o in store.list_from("t.v1", start)] == [key for key in every if key >= start]
    assert [o.key for o in store.list_from("t.v1", start)] == every[1:]


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalLandingStore(tmp_path)
    key = object_key("t.v1", T0, "i", 1)
    store.write_new(key, b"x\n")
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == [Path(key).name]


def test_local_write_into_a_new_hour_fsyncs_every_directory_holding_a_new_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "landing"
    synced: list[str] = []
    real_fsync_dir = pull_events.landing._fsync_dir

    def recording_fsync_dir(path: Path) -> None:
        synced.append(Path(path).relative_to(tmp_path).as_posix())
        real_fsync_dir(path)

    monkeypatch.setattr(pull_events.landing, "_fsync_dir", recording_fsync_dir)
    store = LocalLandingStore(root)
    store.write_new(object_key("t.v1", T0, "i", 1), b"{}\n")
    # Everything was new, the root too: each entry's directory, then the object's folder for the object itself.
    assert synced == [
        "landing/t.v1/dt=2026-11-27",
        "landing/t.v1",
        "landing",
        ".",
        "landing/t.v1/dt=2026-11-27/hour=23",
    ]
    synced.clear()
    store.write_new(object_key("t.v1", T0 - timedelta(seconds=1), "i", 2), b"{}\n")
    assert synced == ["landing/t.v1/dt=2026-11-27/hour=23"]  # the folder is known durable: only the new object
    synced.clear()
    store.write_new(object_key("t.v1", T0 + timedelta(seconds=1), "i", 3), b"{}\n")  # a new day and hour
    assert synced == [
        "landing/t.v1/dt=2026-11-28",
        "landing/t.v1",
        "landing",
        "landing/t.v1/dt=2026-11-28/hour=00",
    ]


def test_local_first_write_into_a_folder_another_writer_made_fsyncs_the_chain_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    LocalLandingStore(tmp_path).write_new(object_key("t.v1", T0, "other", 1), b"{}\n")
    synced: list[str] = []
    real_fsync_dir = pull_events.landing._fsync_dir

    def recording_fsync_dir(path: Path) -> None:
        synced.append(Path(path).relative_to(tmp_path).as_posix())
        real_fsync_dir(path)

    monkeypatch.setattr(pull_events.landing, "_fsync_dir", recording_fsync_dir)
    store = LocalLandingStore(tmp_path)  # e.g. another receiver process: it cannot know the other's fsyncs ran
    store.write_new(object_key("t.v1", T0, "mine", 1), b"{}\n")
    assert synced == ["t.v1/dt=2026-11-27", "t.v1", ".", "t.v1/dt=2026-11-27/hour=23"]
    synced.clear()
    store.write_new(object_key("t.v1", T0, "mine", 2), b"{}\n")
    assert synced == ["t.v1/dt=2026-11-27/hour=23"]
