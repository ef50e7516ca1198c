"""The daily sensor's plan: which day partitions a tick asks for, in which runs, and what waits."""

from __future__ import annotations

import dagster as dg

from pull_events_dagster.defs.derived import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    DaysCursor,
    days_run_request,
    plan_days,
)

PARTITIONS = [f"2026-11-{day:02d}" for day in range(1, 31)]  # today is the 30th


def test_touched_days_become_one_run_per_stretch_of_consecutive_days() -> None:
    plan = plan_days(
        ["2026-11-30", "2026-11-03", "2026-11-29", "2026-11-30", "2026-11-05", "2026-11-04"],
        [],
        PARTITIONS,
        DaysCursor(after_storage_id=7),
    )
    assert plan.ranges == [("2026-11-03", "2026-11-05"), ("2026-11-29", "2026-11-30")]
    assert (plan.cursor.after_storage_id, plan.cursor.deferred, plan.before_first_day) == (7, [], [])


def test_a_day_after_the_last_partition_waits_for_it_and_a_day_before_the_first_is_reported() -> None:
    plan = plan_days(["2026-12-01", "2026-10-31", "2026-11-30"], [], PARTITIONS, DaysCursor(3))
    assert plan.ranges == [("2026-11-30", "2026-11-30")]
    assert plan.cursor.deferred == ["2026-12-01"]
    assert plan.before_first_day == ["2026-10-31"]

    # The next day the partition exists: the waiting day is asked for, once.
    tomorrow = [*PARTITIONS, "2026-12-01"]
    later = plan_days([], plan.cursor.deferred, tomorrow, plan.cursor)
    assert (later.ranges, later.cursor.deferred) == ([("2026-12-01", "2026-12-01")], [])


def test_the_cursor_survives_its_text_and_starts_empty() -> None:
    cursor = DaysCursor(after_storage_id=42, deferred=["2026-12-02", "2026-12-01"])
    assert DaysCursor.parse(cursor.dump()) == DaysCursor(42, ["2026-12-01", "2026-12-02"])
    assert DaysCursor.parse(None) == DaysCursor(None, [])


def test_a_single_day_is_a_partition_and_a_stretch_a_range_each_under_its_own_run_key() -> None:
    single = days_run_request("2026-11-30", "2026-11-30", 9)
    assert (single.partition_key, single.run_key) == ("2026-11-30", "days-2026-11-30-2026-11-30-load-9")
    stretch = days_run_request("2026-11-03", "2026-11-05", 9)
    assert stretch.partition_key is None
    assert (stretch.tags[RANGE_START_TAG], stretch.tags[RANGE_END_TAG]) == ("2026-11-03", "2026-11-05")
    assert isinstance(stretch, dg.RunRequest) and stretch.run_key != single.run_key
