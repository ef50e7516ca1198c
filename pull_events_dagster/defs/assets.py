"""The loaded warehouse tables as assets: one loader for the pull, events, rejected and quarantine tables.

The loader takes the landing keys a sensor run names (or every landing object, for a rebuild; or, for a
reconciliation pass, the recent landing objects the ledger lacks: see ``reconcile.py``) and loads
them through ``Warehouse.load_objects``. Its checks judge the rows the run wrote, returned with the
materialization; the derived tables (``derived.py``) follow from the days it reports. Every warehouse step
shares one concurrency pool (``dagster.yaml`` limits it to one run at a time): DuckDB allows a single writer.
"""

from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

# Not re-exported at dagster's top level in 1.13; the standard dagster/* table metadata keys, typed.
from dagster._core.definitions.metadata import TableMetadataSet

from pull_events.landing import LandedObject, LandingStore
from pull_events.settings import PipelineSettings, Settings
from pull_events_dagster.defs.load_checks import load_check_results, load_check_specs
from pull_events_dagster.defs.partitions import DAY_FORMAT, daily_partitions, is_partition
from pull_events_dagster.defs.reconcile import LOAD_LAG_CHECK_KEY, audit_landing, load_lag_check_spec, load_lag_result
from pull_events_dagster.defs.resources import LandingResource, WarehouseResource
from pull_events_dagster.defs.retries import LOAD_RETRY_POLICY
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.schema import TABLES, Column

WAREHOUSE_POOL = "pull_events_warehouse"
# Run tag that dagster.yaml limits to one run at a time (alongside the pool, which covers manual runs too).
WAREHOUSE_RUN_TAGS = {"pull_events/warehouse": "writer"}
GROUP = "pull_events"
LOADER = "load_landing_objects"


def table_key(table: str) -> dg.AssetKey:
    """The asset key of a warehouse table: ``[dataset, table]``."""
    return dg.AssetKey([base.DATASET, table])


PULLS_KEY = table_key(base.PULLS)
EVENTS_KEY = table_key(base.EVENTS)
REJECTED_KEY = table_key(base.REJECTED)
DAILY_PULLS_KEY = table_key(base.DAILY_PULLS)
SUMMARY_KEY = table_key(base.REPOSITORY_SUMMARY)
QUARANTINED_KEY = table_key(base.QUARANTINED)
LOADED_KEYS = (PULLS_KEY, EVENTS_KEY, REJECTED_KEY, QUARANTINED_KEY)
DERIVED_KEYS = (DAILY_PULLS_KEY, SUMMARY_KEY)

_DESCRIPTIONS = {
    base.PULLS: "One row per registry pull event, exactly once per (event_source, event_id).",
    base.EVENTS: "Every other CloudEvent type: envelope columns and the data as JSON.",
    base.REJECTED: "Landed lines that could not be loaded, with the reason and the line as landed.",
    base.QUARANTINED: "Landing objects that could not be read at all (gone, or refused by the store), until a load "
    "reads them; the reconciliation pass retries them.",
    base.DAILY_PULLS: "Pulls per UTC day of body.when and repository: one partition per day, recomputed when a load "
    "brings pulls dated on it (late ones included) or when backfilled.",
    base.REPOSITORY_SUMMARY: "Pull figures per repository over every day, kept from daily_pulls and the running "
    "sets of actors, clients and tags: only repositories whose days changed are recomputed.",
}


class LandingObjectRef(dg.Config):
    """One landing object to load."""

    key: str
    size: int = 0


class LoadConfig(dg.Config):
    """What a load run loads: the objects a sensor names, or everything in the landing zone."""

    objects: list[LandingObjectRef] = []
    # Rebuild every table from every landing object: built beside them, swapped in only once complete.
    rebuild: bool = False
    # A reconciliation pass: also load the recent landing objects the ledger lacks (reconcile.py).
    reconcile: bool = False


def declared_schema(table: str) -> dg.TableSchema:
    """A table's columns as ``schema.py`` declares them (shown before the first materialization)."""
    return dg.TableSchema(columns=[_declared_column(c) for c in TABLES[table]])


def _declared_column(column: Column) -> dg.TableColumn:
    kind = column.type
    if column.fields:
        kind = f"{kind}<{', '.join(f'{f.name} {f.type}' for f in column.fields)}>"
    if column.mode == "REPEATED":
        kind = f"ARRAY<{kind}>"
    return dg.TableColumn(
        name=column.name,
        type=kind,
        description=column.description or None,
        constraints=dg.TableColumnConstraints(nullable=column.mode != "REQUIRED"),
    )


def observed_schema(warehouse: base.Warehouse, table: str) -> dg.TableSchema:
    """A table's columns as the warehouse reports them, with the descriptions of ``schema.py``."""
    described = {c.name: c.description for c in TABLES[table]}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=kind, description=described.get(name) or None)
            for name, kind in warehouse.column_schema(table)
        ]
    )


def table_metadata(warehouse: base.Warehouse, table: str) -> dict[str, object]:
    """Row count, column schema and name of one table, under Dagster's standard table metadata keys."""
    return dict(
        TableMetadataSet(
            row_count=warehouse.row_count(table),
            column_schema=observed_schema(warehouse, table),
            table_name=f"{base.DATASET}.{table}",
        )
    )


def describe(table: str, warehouse_kind: str) -> dict[str, object]:
    """The description, group, kind and declared table metadata of a table's asset (an ``@asset`` or spec's kwargs)."""
    return {
        "description": _DESCRIPTIONS[table],
        "group_name": GROUP,
        "kinds": {warehouse_kind},
        "metadata": dict(TableMetadataSet(table_name=f"{base.DATASET}.{table}", column_schema=declared_schema(table))),
    }


def _spec(table: str, warehouse_kind: str, **kwargs: object) -> dg.AssetSpec:
    return dg.AssetSpec(table_key(table), **describe(table, warehouse_kind), **kwargs)  # type: ignore[arg-type]


def batches(objects: Sequence[LandedObject], size: int) -> Iterable[Sequence[LandedObject]]:
    """``objects`` in consecutive groups of at most ``size``."""
    for start in range(0, len(objects), size):
        yield objects[start : start + size]


def build_assets(settings: Settings, warehouse_kind: str) -> list[dg.AssetsDefinition]:
    """The loader of the four loaded tables, configured by the pipeline settings."""
    pipeline = settings.pipeline

    @dg.multi_asset(
        name=LOADER,
        # Skippable: a reconciliation pass that finds nothing to load records no materialization, so the
        # derived tables are not refreshed for nothing. No freshness policy: a quiet registry is not an incident;
        # the load-lag check (an unloaded object) replaces it.
        specs=[
            _spec(base.PULLS, warehouse_kind, skippable=True),
            _spec(base.EVENTS, warehouse_kind, skippable=True),
            _spec(base.REJECTED, warehouse_kind, skippable=True),
            _spec(base.QUARANTINED, warehouse_kind, skippable=True),
        ],
        # The load-lag check is evaluated here, before a reconciliation pass loads what it found (reconcile.py);
        # subsettable so that load runs leave it out (it lists days of landing objects) and it can run alone.
        check_specs=[load_lag_check_spec(settings), *load_check_specs(settings, PULLS_KEY)],
        can_subset=True,
        pool=WAREHOUSE_POOL,
        retry_policy=LOAD_RETRY_POLICY,  # retries.py: failed loads are retried by Dagster, with backoff
        description=(
            "Load the landing objects named in the run config (the landing sensor fills it in) into the pull, "
            "events and rejected tables, exactly once per event. Materialized by hand with no objects it loads "
            "nothing; the rebuild_from_landing job reloads everything; the reconcile_landing job loads the recent "
            "objects the ledger lacks."
        ),
    )
    def load_landing_objects(
        context: dg.AssetExecutionContext,
        config: LoadConfig,
        landing: LandingResource,
        warehouse: WarehouseResource,
    ) -> Iterable[dg.MaterializeResult | dg.AssetCheckResult]:
        store = landing.store()
        with warehouse.open() as wh:
            if config.rebuild:
                objects = sorted(store.list_all(), key=lambda o: o.key)
                context.log.info(
                    "rebuild: loading all %d objects of %s into a shadow copy; the tables change only once it is "
                    "complete, all in one transaction",
                    len(objects),
                    landing.describe(),
                )
                total, daily = wh.rebuild(store, objects, context.run.run_id, pipeline.max_objects_per_run)
                _log_rebuilt_derived_tables(context, wh, daily, daily_partitions(settings))
            else:
                objects = [LandedObject(key=o.key, size=o.size, uri=store.uri(o.key)) for o in config.objects]
                wh.ensure_tables()
                if config.reconcile or LOAD_LAG_CHECK_KEY in context.selected_asset_check_keys:
                    objects += yield from _reconcile(context, config, store, wh, pipeline)
                if not context.selected_asset_keys or (config.reconcile and not objects):
                    return  # the check alone, or a pass with nothing to load: no table changes
                total = base.combined(
                    [
                        wh.load_objects(store, batch, context.run.run_id)
                        for batch in batches(objects, pipeline.max_objects_per_run)
                    ]
                )
            _log_load(context, total)
            yield from _load_materializations(context, wh, total, config)
            yield from load_check_results(total, settings, PULLS_KEY, context.selected_asset_check_keys)

    return [load_landing_objects]


def _reconcile(
    context: dg.AssetExecutionContext,
    config: LoadConfig,
    store: LandingStore,
    wh: base.Warehouse,
    pipeline: PipelineSettings,
) -> Generator[dg.AssetCheckResult, None, list[LandedObject]]:
    """Compare the recent day folders with the ledger: report the load-lag check (before loading, as it judges what
    the sensor's loads left undone) and, in a reconciliation pass, return the unloaded objects old enough to load."""
    audit = audit_landing(store, wh, datetime.now(UTC), pipeline.reconcile_days)
    if LOAD_LAG_CHECK_KEY in context.selected_asset_check_keys:
        yield load_lag_result(audit, pipeline.max_load_lag_seconds)
    if not config.reconcile:
        return []
    missing = audit.to_load(timedelta(seconds=pipeline.max_load_lag_seconds))
    context.log.info(
        "reconcile: %d landed objects compared with the ledger, %d unloaded; loading the %d older than %d s",
        audit.compared,
        len(audit.unloaded),
        len(missing),
        pipeline.max_load_lag_seconds,
    )
    return missing


def _log_load(context: dg.AssetExecutionContext, total: base.LoadResult) -> None:
    context.log.info(
        "loaded %d objects (%d already loaded): %d pulls, %d other events, %d duplicates, %d rejected",
        total.objects_loaded,
        total.objects_skipped,
        total.pulls_inserted,
        total.events_inserted,
        total.duplicates_skipped,
        total.lines_rejected,
    )
    for key, reason in sorted(total.quarantined.items()):
        context.log.warning("quarantined %s (%s): it could not be read; the rest of the batch loaded", key, reason)


def _load_materializations(
    context: dg.AssetExecutionContext, wh: base.Warehouse, total: base.LoadResult, config: LoadConfig
) -> Iterator[dg.MaterializeResult]:
    """One materialization per loaded table that the run selected (all of them, unless one was picked in the UI)."""
    load_metadata = {
        "objects_loaded": total.objects_loaded,
        "objects_already_loaded": total.objects_skipped,
        "objects_quarantined": len(total.quarantined),
        "lines_read": total.lines_read,
        "duplicates_skipped": total.duplicates_skipped,
        "lines_rejected": total.lines_rejected,
        "rebuild": config.rebuild,
        "reconcile": config.reconcile,
    }
    extra: dict[dg.AssetKey, dict[str, object]] = {
        PULLS_KEY: {
            "events_loaded": total.pulls_inserted,
            "days_affected": sorted(day.isoformat() for day in total.affected_days),
        },
        EVENTS_KEY: {"events_loaded": total.events_inserted},
        REJECTED_KEY: {},
        QUARANTINED_KEY: {"quarantined_by_this_run": dg.MetadataValue.md(_quarantine_list(total.quarantined))},
    }
    for key, table in ((PULLS_KEY, base.PULLS), (EVENTS_KEY, base.EVENTS), (REJECTED_KEY, base.REJECTED),
                       (QUARANTINED_KEY, base.QUARANTINED)):  # fmt: skip
        if key in context.selected_asset_keys:
            yield dg.MaterializeResult(
                asset_key=key, metadata={**table_metadata(wh, table), **load_metadata, **extra[key]}
            )


def _log_rebuilt_derived_tables(
    context: dg.AssetExecutionContext,
    wh: base.Warehouse,
    daily: base.DailyRefresh,
    partitions: dg.DailyPartitionsDefinition,
) -> None:
    """A rebuild computed the derived tables itself: record each day partition and the summary as materialized."""
    for day, rows in daily.rows_per_day.items():
        if is_partition(partitions, day):
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=DAILY_PULLS_KEY,
                    partition=day.strftime(DAY_FORMAT),
                    metadata={**dict(TableMetadataSet(partition_row_count=rows)), "rebuild": True},
                )
            )
    context.log_event(
        dg.AssetMaterialization(
            asset_key=SUMMARY_KEY, metadata={**table_metadata(wh, base.REPOSITORY_SUMMARY), "rebuild": True}
        )
    )


def _quarantine_list(quarantined: dict[str, str]) -> str:
    if not quarantined:
        return "none"
    return "\n".join(f"- `{key}`: {reason}" for key, reason in sorted(quarantined.items()))
