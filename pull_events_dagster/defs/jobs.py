"""Jobs: the load the sensor requests, and the one-step rebuild of every table from the landing zone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from pull_events_dagster.defs.assets import DERIVED_KEYS, LOADED_KEYS, LOADER, WAREHOUSE_RUN_TAGS

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

LOAD_JOB = "load_landing"
REBUILD_JOB = "rebuild_from_landing"


def build_load_job() -> UnresolvedAssetJobDefinition:
    """Loads the landing objects named in its config (the sensor fills it in), then runs the checks."""
    return dg.define_asset_job(
        LOAD_JOB,
        selection=dg.AssetSelection.assets(*LOADED_KEYS),
        tags=WAREHOUSE_RUN_TAGS,
        description="Load the landing objects named in the run config into the pull, events and rejected tables.",
    )


def build_rebuild_job() -> UnresolvedAssetJobDefinition:
    """Drops every table, reloads every landing object, then recomputes the derived tables."""
    return dg.define_asset_job(
        REBUILD_JOB,
        selection=dg.AssetSelection.assets(*LOADED_KEYS, *DERIVED_KEYS),
        config={"ops": {LOADER: {"config": {"rebuild": True}}}},
        tags=WAREHOUSE_RUN_TAGS,
        description="Rebuild every table from scratch from the landing zone (drops them first).",
    )
