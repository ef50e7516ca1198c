"""Jobs: the load the sensor requests, the reconciliation pass, and the one-step rebuild from the landing zone.

A load run also recomputes one day partition of ``daily_pulls`` (its objects' day, where nearly every pull it
loads is dated) and then the summary, in the same process: a second run for them would start another Python process
and wait for the warehouse pool behind the next load, which made the derived tables trail the pull table by a whole
run. Days a load touched besides its run's partition (late events) are left to ``daily_pulls_sensor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from pull_events_dagster.defs.assets import DERIVED_KEYS, LOADED_KEYS, LOADER, WAREHOUSE_RUN_TAGS
from pull_events_dagster.defs.checks import AUDITS
from pull_events_dagster.defs.reconcile import LOAD_LAG_CHECK_KEY, RECONCILE_JOB

if TYPE_CHECKING:  # the type define_asset_job returns is not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

LOAD_JOB = "load_landing"
REBUILD_JOB = "rebuild_from_landing"
# The load-lag check lists days of landing objects: it runs in reconciliation passes, not in every load.
_LOAD_LAG_CHECK = dg.AssetSelection.checks(LOAD_LAG_CHECK_KEY)
# The whole-table audits run on their own schedule (checks.py), never in a load.
_LOADED = dg.AssetSelection.assets(*LOADED_KEYS) - AUDITS


def build_load_job() -> UnresolvedAssetJobDefinition:
    """Loads the landing objects named in its config (the sensor fills it in) and runs the checks, then recomputes
    the run's day partition of ``daily_pulls`` and the summary."""
    return dg.define_asset_job(
        LOAD_JOB,
        selection=(_LOADED - _LOAD_LAG_CHECK) | dg.AssetSelection.assets(*DERIVED_KEYS).without_checks(),
        tags=WAREHOUSE_RUN_TAGS,
        description="Load the landing objects named in the run config into the pull, events and rejected tables, "
        "then recompute the run's day of daily_pulls and the summary rows of the repositories that changed.",
    )


def build_reconcile_job() -> UnresolvedAssetJobDefinition:
    """One reconciliation pass (``reconcile.py``): the load-lag check, then a load of what the ledger lacks."""
    return dg.define_asset_job(
        RECONCILE_JOB,
        selection=_LOADED,
        config={"ops": {LOADER: {"config": {"reconcile": True}}}},
        tags=WAREHOUSE_RUN_TAGS,
        description=(
            "Compare the recent day folders of the landing zone with the ledger, check the load lag, and load "
            "the objects landed longer ago than the allowed lag that the ledger lacks."
        ),
    )


def build_rebuild_job() -> UnresolvedAssetJobDefinition:
    """Reloads every landing object into a shadow copy with its derived tables, and swaps it all in atomically."""
    return dg.define_asset_job(
        REBUILD_JOB,
        selection=_LOADED - _LOAD_LAG_CHECK,
        config={"ops": {LOADER: {"config": {"rebuild": True}}}},
        tags=WAREHOUSE_RUN_TAGS,
        description="Rebuild every table (the derived ones too) from the landing zone beside the current ones, then "
        "swap them in atomically.",
    )
