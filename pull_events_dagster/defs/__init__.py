"""The pipeline's Dagster definitions, built from the shared settings."""

from __future__ import annotations

import dagster as dg

from pull_events.settings import Settings
from pull_events_dagster.defs.assets import build_assets
from pull_events_dagster.defs.checks import build_audit_job, build_audit_schedule, build_checks
from pull_events_dagster.defs.derived import build_daily_sensor, build_derived_assets, build_derived_job
from pull_events_dagster.defs.jobs import LOAD_JOB, build_load_job, build_rebuild_job, build_reconcile_job
from pull_events_dagster.defs.reconcile import build_reconcile_schedule
from pull_events_dagster.defs.resources import build_resources
from pull_events_dagster.defs.sensors import build_automation_sensor, build_landing_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    """Assets, checks, jobs, sensors, the reconciliation and audit schedules and resources for the configured
    landing zone and warehouse."""
    resources = build_resources(settings)
    return dg.Definitions(
        assets=[
            *build_assets(settings, resources["warehouse"].kind()),
            *build_derived_assets(settings, resources["warehouse"].kind()),
        ],
        asset_checks=build_checks(settings),
        jobs=[
            build_load_job(),
            build_reconcile_job(),
            build_rebuild_job(),
            build_derived_job(),
            build_audit_job(),
        ],
        sensors=[build_landing_sensor(settings, LOAD_JOB), build_daily_sensor(settings), build_automation_sensor()],
        schedules=[build_reconcile_schedule(), build_audit_schedule(settings)],
        resources=resources,
        # One process per run, steps in sequence: DuckDB takes a single writing process at a time.
        executor=dg.in_process_executor,
    )
