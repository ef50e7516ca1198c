"""The warehouse tables as assets: one loader for the pull, events and rejected tables; two derived tables.

The loader takes the landing keys a sensor run names (or every landing object, for a rebuild) and loads
them through ``Warehouse.load_objects``; ``daily_pulls`` and ``repository_pull_summary`` follow eagerly
whenever the pull table changes. Every warehouse step shares one concurrency pool (``dagster.yaml``
limits it to one run at a time): DuckDB allows a single writer, and loads must commit in ``loaded_at``
order for the incremental refresh's watermark.
"""

from collections.abc import Iterable, Sequence
from datetime import timedelta

import dagster as dg

from pull_events.landing import LandedObject
from pull_events.settings import Settings
from pull_events_dagster.defs.resources import LandingResource, WarehouseResource
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
LOADED_KEYS = (PULLS_KEY, EVENTS_KEY, REJECTED_KEY)
DERIVED_KEYS = (DAILY_PULLS_KEY, SUMMARY_KEY)

_DESCRIPTIONS = {
    base.PULLS: "One row per registry pull event, exactly once per (event_source, event_id).",
    base.EVENTS: "Every other CloudEvent type: envelope columns and the data as JSON.",
    base.REJECTED: "Landed lines that could not be loaded, with the reason and the line as landed.",
    base.DAILY_PULLS: "Pulls per UTC day of body.when and repository.",
    base.REPOSITORY_SUMMARY: "Pull figures per repository over the whole pull table.",
}


class LandingObjectRef(dg.Config):
    """One landing object to load."""

    key: str
    size: int = 0


class LoadConfig(dg.Config):
    """What a load run loads: the objects a sensor names, or everything in the landing zone."""

    objects: list[LandingObjectRef] = []
    rebuild: bool = False  # drop every table first and reload every landing object


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
    """Row count and column schema of one table, under Dagster's standard metadata keys."""
    return {
        "dagster/row_count": dg.MetadataValue.int(warehouse.row_count(table)),
        "dagster/column_schema": observed_schema(warehouse, table),
    }


def _spec(table: str, warehouse_kind: str, **kwargs: object) -> dg.AssetSpec:
    return dg.AssetSpec(
        table_key(table),
        description=_DESCRIPTIONS[table],
        group_name=GROUP,
        kinds={warehouse_kind},
        metadata={
            "dagster/table_name": f"{base.DATASET}.{table}",
            "dagster/column_schema": declared_schema(table),
        },
        **kwargs,  # type: ignore[arg-type]
    )


def batches(objects: Sequence[LandedObject], size: int) -> Iterable[Sequence[LandedObject]]:
    """``objects`` in consecutive groups of at most ``size``."""
    for start in range(0, len(objects), size):
        yield objects[start : start + size]


def build_assets(settings: Settings, warehouse_kind: str) -> list[dg.AssetsDefinition]:
    """The five table assets, configured by the pipeline settings."""
    pipeline = settings.pipeline

    @dg.multi_asset(
        name=LOADER,
        specs=[
            _spec(
                base.PULLS,
                warehouse_kind,
                freshness_policy=dg.FreshnessPolicy.time_window(
                    fail_window=timedelta(minutes=pipeline.freshness_minutes)
                ),
            ),
            _spec(base.EVENTS, warehouse_kind),
            _spec(base.REJECTED, warehouse_kind),
        ],
        pool=WAREHOUSE_POOL,
        description=(
            "Load the landing objects named in the run config (the landing sensor fills it in) into the pull, "
            "events and rejected tables, exactly once per event. Materialized by hand with no objects it loads "
            "nothing; the rebuild_from_landing job reloads everything."
        ),
    )
    def load_landing_objects(
        context: dg.AssetExecutionContext,
        config: LoadConfig,
        landing: LandingResource,
        warehouse: WarehouseResource,
    ) -> Iterable[dg.MaterializeResult]:
        store = landing.store()
        with warehouse.open() as wh:
            if config.rebuild:
                context.log.info("rebuild: dropping every table and reloading all of %s", landing.describe())
                wh.drop_all()
                objects = sorted(store.list_all(), key=lambda o: o.key)
            else:
                objects = [LandedObject(key=o.key, size=o.size, uri=store.uri(o.key)) for o in config.objects]
            wh.ensure_tables()
            results = [
                wh.load_objects(store, batch, context.run.run_id)
                for batch in batches(objects, pipeline.max_objects_per_run)
            ]
            total = _sum_results(results)
            context.log.info(
                "loaded %d objects (%d already loaded): %d pulls, %d other events, %d duplicates, %d rejected",
                total.objects_loaded,
                total.objects_skipped,
                total.pulls_inserted,
                total.events_inserted,
                total.duplicates_skipped,
                total.lines_rejected,
            )
            load_metadata = {
                "objects_loaded": total.objects_loaded,
                "objects_already_loaded": total.objects_skipped,
                "lines_read": total.lines_read,
                "duplicates_skipped": total.duplicates_skipped,
                "lines_rejected": total.lines_rejected,
                "rebuild": config.rebuild,
            }
            yield dg.MaterializeResult(
                asset_key=PULLS_KEY,
                metadata={
                    **table_metadata(wh, base.PULLS),
                    **load_metadata,
                    "events_loaded": total.pulls_inserted,
                    "days_affected": sorted(day.isoformat() for day in total.affected_days),
                },
            )
            yield dg.MaterializeResult(
                asset_key=EVENTS_KEY,
                metadata={**table_metadata(wh, base.EVENTS), **load_metadata, "events_loaded": total.events_inserted},
            )
            yield dg.MaterializeResult(
                asset_key=REJECTED_KEY,
                metadata={**table_metadata(wh, base.REJECTED), **load_metadata},
            )

    @dg.asset(
        key=DAILY_PULLS_KEY,
        deps=[PULLS_KEY],
        description=_DESCRIPTIONS[base.DAILY_PULLS],
        group_name=GROUP,
        kinds={warehouse_kind},
        metadata={
            "dagster/table_name": f"{base.DATASET}.{base.DAILY_PULLS}",
            "dagster/column_schema": declared_schema(base.DAILY_PULLS),
        },
        automation_condition=dg.AutomationCondition.eager(),
        pool=WAREHOUSE_POOL,
    )
    def daily_pulls(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        """Recompute the days touched by pulls loaded since the last refresh (late events included)."""
        with warehouse.open() as wh:
            result = wh.refresh_daily_pulls()
            context.log.info("recomputed %d days: %s", len(result.days_recomputed), result.days_recomputed)
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": dg.MetadataValue.int(result.table_rows),
                    "dagster/column_schema": observed_schema(wh, base.DAILY_PULLS),
                    "days_recomputed": sorted(day.isoformat() for day in result.days_recomputed),
                    "days_recomputed_count": len(result.days_recomputed),
                    "rows_written": result.rows_written,
                }
            )

    @dg.asset(
        key=SUMMARY_KEY,
        deps=[PULLS_KEY],
        description=_DESCRIPTIONS[base.REPOSITORY_SUMMARY],
        group_name=GROUP,
        kinds={warehouse_kind},
        metadata={
            "dagster/table_name": f"{base.DATASET}.{base.REPOSITORY_SUMMARY}",
            "dagster/column_schema": declared_schema(base.REPOSITORY_SUMMARY),
        },
        automation_condition=dg.AutomationCondition.eager(),
        pool=WAREHOUSE_POOL,
    )
    def repository_pull_summary(warehouse: WarehouseResource) -> dg.MaterializeResult:
        """Rebuild the per-repository summary from the pull table."""
        with warehouse.open() as wh:
            result = wh.refresh_repository_summary()
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": dg.MetadataValue.int(result.table_rows),
                    "dagster/column_schema": observed_schema(wh, base.REPOSITORY_SUMMARY),
                    "rows_written": result.rows_written,
                }
            )

    return [load_landing_objects, daily_pulls, repository_pull_summary]


def _sum_results(results: Sequence[base.LoadResult]) -> base.LoadResult:
    return base.LoadResult(
        objects_loaded=sum(r.objects_loaded for r in results),
        objects_skipped=sum(r.objects_skipped for r in results),
        lines_read=sum(r.lines_read for r in results),
        pulls_inserted=sum(r.pulls_inserted for r in results),
        events_inserted=sum(r.events_inserted for r in results),
        duplicates_skipped=sum(r.duplicates_skipped for r in results),
        lines_rejected=sum(r.lines_rejected for r in results),
        affected_days=sorted({day for r in results for day in r.affected_days}),
    )
