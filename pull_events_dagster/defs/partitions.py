"""The day partitions of ``daily_pulls``: UTC days of ``body.when``."""

from __future__ import annotations

from datetime import date

import dagster as dg

from pull_events.settings import Settings

DAY_FORMAT = "%Y-%m-%d"


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """UTC days from ``PULL_EVENTS_FIRST_DAY`` through today (today's partition fills as pulls arrive)."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.pipeline.first_day.strftime(DAY_FORMAT), end_offset=1, fmt=DAY_FORMAT
    )


def is_partition(partitions: dg.DailyPartitionsDefinition, day: date) -> bool:
    """Whether ``day`` is one of the partitions today."""
    return partitions.has_partition_key(day.strftime(DAY_FORMAT))
