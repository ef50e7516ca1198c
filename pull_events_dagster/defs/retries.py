"""How failed loads are retried: by Dagster, not by the landing sensor.

Two layers, both Dagster's own:

- ``LOAD_RETRY_POLICY`` on the loader op: a step that raises is tried again inside the same run, after an
  exponentially growing pause with jitter (about 10 s, 30 s, 70 s, each +/- 10 s), so that loads failing together
  on a warehouse or storage hiccup do not come back in lockstep. The run keeps its warehouse pool slot meanwhile
  (``dagster.yaml`` gives the pool one run at a time), which is why the pauses are short: waiting out a longer
  outage is the second layer's job.
- ``LOAD_RUN_RETRY_TAGS`` on every load run the sensor requests: once the step's retries are spent (or the run
  itself dies: a crashed worker, run monitoring's start timeout or ``dagster/max_runtime``), the run fails, and
  Dagster's run retries (``run_retries`` in ``dagster.yaml``) launch it again from the failure, queued behind the
  other runs rather than holding the pool.

A load whose retries are all spent leaves its objects out of the ledger. Nothing is lost: each reconciliation pass
(``reconcile.py``, every 15 minutes) loads the objects the ledger lacks and its ``landed_objects_loaded`` check fails
naming any that landed longer than ``PULL_EVENTS_MAX_LOAD_LAG_S`` ago. The whole retry budget (3 runs of 4 attempts,
at most 140 s of pauses each) fits well inside the default 900 s lag, so a transient failure is retried to the end
before the check calls it an incident.

Retrying a load is always safe: the loader skips objects already in the ledger.
"""

from __future__ import annotations

import dagster as dg

# Tags read by Dagster's run retries (dagster._core.storage.tags; the test of this module checks the names).
MAX_RETRIES_TAG = "dagster/max_retries"
RETRY_ON_ASSET_OR_OP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"

LOAD_STEP_MAX_RETRIES = 3
LOAD_STEP_RETRY_DELAY_SECONDS = 10
LOAD_RUN_MAX_RETRIES = 2

LOAD_RETRY_POLICY = dg.RetryPolicy(
    max_retries=LOAD_STEP_MAX_RETRIES,
    delay=LOAD_STEP_RETRY_DELAY_SECONDS,
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)

LOAD_RUN_RETRY_TAGS = {
    MAX_RETRIES_TAG: str(LOAD_RUN_MAX_RETRIES),
    # Also when the run failed because the loader (an asset step) failed, not only when its worker died. This is
    # the instance default too; the tag makes load runs independent of it.
    RETRY_ON_ASSET_OR_OP_FAILURE_TAG: "true",
}
