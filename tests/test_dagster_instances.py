"""The two Dagster instances: dagster.yaml (the local stack, SQLite) and deploy/dagster/dagster.yaml (production,
PostgreSQL). They differ in storage alone; the production one opens against a real PostgreSQL server with the
connection taken from the environment, and keeps runs and events there."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import DagsterPostgresException

from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "dagster.yaml"
PRODUCTION = ROOT / "deploy/dagster/dagster.yaml"
CONNECTION_ENV = {
    "hostname": "DAGSTER_PG_HOST",
    "port": "DAGSTER_PG_PORT",
    "username": "DAGSTER_PG_USERNAME",
    "password": "DAGSTER_PG_PASSWORD",
    "db_name": "DAGSTER_PG_DB",
}


def load(path: Path) -> dict[str, object]:
    return yaml.safe_load(path.read_text())


def production_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PRODUCTION, home / "dagster.yaml")
    return home


def test_the_production_instance_differs_from_the_local_one_in_storage_only() -> None:
    local, production = load(LOCAL), load(PRODUCTION)
    assert "storage" not in local  # SQLite under $DAGSTER_HOME, Dagster's default
    assert list(production["storage"]) == ["postgres"]
    assert {k: v for k, v in production.items() if k != "storage"} == local
    # The settings the production instance must not lose (compared above, named here so a removal from both fails).
    assert {"run_coordinator", "concurrency", "run_retries", "run_monitoring", "python_logs"} <= set(local)
    assert local["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_the_production_instance_takes_its_whole_postgres_connection_from_the_environment() -> None:
    connection = load(PRODUCTION)["storage"]["postgres"]["postgres_db"]
    assert connection == {
        **{field: {"env": variable} for field, variable in CONNECTION_ENV.items()},
        "scheme": "postgresql+psycopg2",
    }


def test_the_production_instance_keeps_runs_and_events_in_postgres(
    tmp_path: Path, postgres_server: PostgresServer, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in postgres_server.dagster_env(postgres_database).items():
        monkeypatch.setenv(variable, value)
    home = production_home(tmp_path)

    @dg.op
    def hello() -> int:
        return 1

    @dg.job
    def greet() -> None:
        hello()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        result = greet.execute_in_process(instance=instance)
        assert result.success

    connection = postgres_server.connect(postgres_database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id, pipeline_name, status FROM runs")
            assert cursor.fetchall() == [(result.run_id, "greet", "SUCCESS")]
            cursor.execute(
                "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                (result.run_id, dg.DagsterEventType.RUN_SUCCESS.value),
            )
            assert cursor.fetchone() == (1,)
    finally:
        connection.close()
    # Nothing went to SQLite files under $DAGSTER_HOME.
    assert not list(home.rglob("*.db"))


@pytest.mark.parametrize("missing", sorted(CONNECTION_ENV.values()))
def test_the_production_instance_names_an_unset_connection_variable(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in CONNECTION_ENV.values():
        monkeypatch.setenv(variable, "5432" if variable == "DAGSTER_PG_PORT" else "x")
    monkeypatch.delenv(missing)
    with pytest.raises(dg.DagsterInvalidConfigError, match=missing):
        dg.DagsterInstance.from_config(str(production_home(tmp_path)))


def test_the_production_instance_refuses_a_port_that_is_not_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in CONNECTION_ENV.values():
        monkeypatch.setenv(variable, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "54x")
    with pytest.raises(dg.DagsterInvalidConfigError, match="DAGSTER_PG_PORT"):
        dg.DagsterInstance.from_config(str(production_home(tmp_path)))


def test_the_production_instance_refuses_a_wrong_password(
    tmp_path: Path, postgres_server: PostgresServer, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**postgres_server.dagster_env(postgres_database), "DAGSTER_PG_PASSWORD": "not-the-password"}
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    # dagster-postgres retries the connection (with backoff, about 10 s) before it gives up: loudly, no fallback.
    with pytest.raises(DagsterPostgresException, match="too many retries") as raised:
        dg.DagsterInstance.from_config(str(production_home(tmp_path)))
    assert 'password authentication failed for user "postgres"' in str(raised.value.__cause__)
