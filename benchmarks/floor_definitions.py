"""Dagster's own floor for the stack-latency benchmark: a file lands -> a sensor notices it -> a run starts -> a
trivial asset records it. The same instance settings as the local stack (``dagster.yaml``: the queued run
coordinator, the one-run warehouse pool), the same sensor interval and executor as the pipeline, and nothing of
the pipeline: no warehouse, no checks, a code location that imports only Dagster.

    dagster-daemon run -m benchmarks.floor_definitions      (with FLOOR_DIR set; benchmarks/stack_latency.py runs it)

A file named ``<anything>.landed`` in ``FLOOR_DIR`` is one event; the asset appends ``name seconds`` lines to
``FLOOR_DIR/done.txt``, the seconds being when its run's step ran (wall clock, as the pipeline's ``loaded_at``).
"""

# No `from __future__ import annotations`: Dagster reads the Config class from the asset's annotation at run time.
import os
import time
from pathlib import Path

import dagster as dg

FLOOR_DIR = Path(os.environ.get("FLOOR_DIR", "."))
# The same pool and run tag as the pipeline's warehouse steps, so runs queue behind each other as loads do.
POOL = "pull_events_warehouse"
RUN_TAGS = {"pull_events/warehouse": "writer"}


class Files(dg.Config):
    names: list[str]


@dg.asset(pool=POOL)
def floor_asset(config: Files) -> dg.MaterializeResult:
    """Records that the files of its run were seen."""
    now = time.time()
    with (FLOOR_DIR / "done.txt").open("a") as done:
        done.writelines(f"{name} {now:.6f}\n" for name in config.names)
    return dg.MaterializeResult(metadata={"files": len(config.names)})


floor_job = dg.define_asset_job("floor_job", selection=[floor_asset], tags=RUN_TAGS)


@dg.sensor(job=floor_job, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING)
def floor_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """One run for every file landed since the last tick (the cursor is the newest name taken)."""
    names = sorted(p.name for p in FLOOR_DIR.glob("*.landed") if p.name > (context.cursor or ""))
    if not names:
        return dg.SensorResult(skip_reason="no new files")
    request = dg.RunRequest(run_key=names[-1], run_config={"ops": {"floor_asset": {"config": {"names": names}}}})
    return dg.SensorResult(run_requests=[request], cursor=names[-1])


defs = dg.Definitions(assets=[floor_asset], jobs=[floor_job], sensors=[floor_sensor], executor=dg.in_process_executor)
