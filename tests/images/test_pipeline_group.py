"""The pipeline group alone (what the code-location image installs) serves the code location and runs its jobs,
on a laptop's directory and DuckDB file as on GCS and BigQuery (fake-gcs-server, bqemulator)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster_duckdb import DuckDBResource
from google.api_core.retry import Retry

from pull_events.landing import GcsLandingStore, LandingStore, LocalLandingStore
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.warehouse import base
from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse
from pull_events_dagster.warehouse.duckdb import DuckDBWarehouse
from tests.bigquery.conftest import rows as bigquery_rows
from tests.images.environments import GCS_MODULE, PIPELINE_MODULES, importable
from tests.pipeline.conftest import pipeline_settings
from tests.pipeline.factories import LandingSpec, synthetic_landing
from tests.pipeline.test_duckdb_warehouse import DAILY, PULLS, expected_daily
from tests.receiver.server import ROOT
from tests.services import TEST_PROJECT, BigQueryEmulator, FakeGcsServer, as_from_a_terminal, free_port, wait_for_port

# Asks a running code server over gRPC, from the pipeline group's python, what the location serves.
_ASK_CODE_SERVER = """
import json, sys
import dagster as dg
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin

origin = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=int(sys.argv[1]), location_name="pull_events")
with dg.DagsterInstance.ephemeral() as instance, origin.create_location(instance) as location:
    [repository] = location.get_repositories().values()
    print(json.dumps({
        "jobs": sorted(job.name for job in repository.get_all_jobs() if not job.name.startswith("__")),
        "sensors": sorted(sensor.name for sensor in repository.get_sensors()),
        "assets": sorted(node.asset_key.to_user_string() for node in repository.get_asset_node_snaps()),
    }))
"""

# Runs the rebuild job in process, from the pipeline group's python, on the definitions the code location loads.
_REBUILD = """
import dagster as dg
from pull_events_dagster.definitions import defs
from pull_events_dagster.defs.jobs import REBUILD_JOB

with dg.DagsterInstance.ephemeral() as instance:
    assert defs.resolve_job_def(REBUILD_JOB).execute_in_process(instance=instance).success
"""


@pytest.fixture
def location_env(tmp_path: Path) -> dict[str, str]:
    """The code location's environment: a local landing zone and DuckDB file, and no Dagster instance of its own."""
    env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "DAGSTER_HOME")}
    env.update(PULL_EVENTS_LANDING=str(tmp_path / "landing"), PULL_EVENTS_WAREHOUSE=str(tmp_path / "warehouse.duckdb"))
    return env


@pytest.fixture
def code_server(pipeline_python: Path, location_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """``dagster code-server start`` from the pipeline group, as dagster.Dockerfile's CMD runs it; yields its port."""
    port = free_port()
    command = [pipeline_python.parent / "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(port)]
    command += ["-m", "pull_events_dagster.definitions", "--location-name", "pull_events"]
    with (tmp_path / "code-server.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=location_env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=as_from_a_terminal,  # Dagster handles SIGTERM as SIGINT: neither may be inherited ignored
        )  # fmt: skip
    try:
        # The proxy server loads the definitions in its child before it listens: an open port serves them.
        wait_for_port(port, process, timeout=120)
        yield port
    finally:
        # SIGTERM, as a container runtime stops the image: Dagster turns it into a clean shutdown.
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise


def test_the_pipeline_group_holds_dagster_duckdb_bigquery_and_nothing_of_the_receiver_webserver_or_dev(
    pipeline_python: Path,
) -> None:
    assert importable(pipeline_python) == {*PIPELINE_MODULES, GCS_MODULE}


def test_the_pipeline_groups_code_server_serves_the_same_definitions_as_the_full_environment(
    pipeline_python: Path, code_server: int, location_env: dict[str, str]
) -> None:
    asked = subprocess.run(
        [pipeline_python, "-c", _ASK_CODE_SERVER, str(code_server)],
        cwd=ROOT,
        env=location_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert asked.returncode == 0, asked.stderr
    served = json.loads(asked.stdout)
    defs = build_definitions(
        pipeline_settings(location_env["PULL_EVENTS_LANDING"], location_env["PULL_EVENTS_WAREHOUSE"])
    )
    assert served == {
        "jobs": sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")),
        "sensors": sorted(sensor.name for sensor in defs.sensors or ()),
        "assets": sorted(key.to_user_string() for key in defs.resolve_all_asset_keys()),
    }
    assert {"load_landing", "rebuild_from_landing"} <= set(served["jobs"])


@dataclass
class Location:
    """Where the code location lands and loads, as its environment names them, and how a test reads both."""

    env: dict[str, str]
    store: LandingStore
    daily_pulls: Callable[[], list[tuple]]
    pull_count: Callable[[], int]


_DAILY_COLUMNS = (
    "day, repository, events, image_pulls, manifest_heads, blob_gets, errors, unique_actors, unique_clients"
)


@pytest.fixture(params=["local", "gcp"])
def location(request: pytest.FixtureRequest, location_env: dict[str, str]) -> Location:
    """A local directory and DuckDB file, or a fake-gcs-server bucket and a bqemulator dataset."""
    if request.param == "local":
        warehouse = DuckDBWarehouse(DuckDBResource(database=location_env["PULL_EVENTS_WAREHOUSE"]).get_connection)
        return Location(
            location_env,
            LocalLandingStore(Path(location_env["PULL_EVENTS_LANDING"])),
            lambda: warehouse.query(f"SELECT {_DAILY_COLUMNS} FROM {DAILY} ORDER BY day, repository", {}),
            lambda: warehouse.query(f"SELECT count(*) FROM {PULLS}", {})[0][0],
        )
    fake_gcs: FakeGcsServer = request.getfixturevalue("fake_gcs")
    bucket: str = request.getfixturevalue("gcs_bucket")
    emulator: BigQueryEmulator = request.getfixturevalue("bigquery_emulator")
    dataset = f"pull_events_{uuid.uuid4().hex[:10]}"
    bigquery_warehouse = BigQueryWarehouse(emulator.client(), dataset, retry=Retry(timeout=20))
    env = {
        **location_env,
        "PULL_EVENTS_LANDING": f"gs://{bucket}/landing",
        "PULL_EVENTS_WAREHOUSE": f"bigquery://{TEST_PROJECT}/{dataset}",
        "STORAGE_EMULATOR_HOST": fake_gcs.url,
        "BIGQUERY_EMULATOR_HOST": emulator.url,
    }
    return Location(
        env,
        GcsLandingStore(bucket, "landing", client=fake_gcs.client()),
        lambda: bigquery_rows(bigquery_warehouse, f"SELECT {_DAILY_COLUMNS} FROM {{daily}} ORDER BY day, repository"),
        lambda: bigquery_warehouse.row_count(base.PULLS),
    )


def test_the_pipeline_group_rebuilds_the_warehouse_from_the_landing_zone(
    pipeline_python: Path, location: Location
) -> None:
    landed = synthetic_landing(location.store, LandingSpec(events=60, repositories=3, days=3, events_per_object=20))
    done = subprocess.run(
        [pipeline_python, "-c", _REBUILD], cwd=ROOT, env=location.env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert location.pull_count() == len(landed.pulls) > 0
    assert location.daily_pulls() == expected_daily(landed.pulls)
