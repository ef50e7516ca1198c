"""Terraform makes the dataset; the pipeline makes (and evolves) its tables and its rebuild's shadow dataset."""

from __future__ import annotations

import pytest

from pull_events.settings import parse_warehouse
from pull_events_dagster.warehouse import base
from tests.deploy.receiver_config import pipeline_reads
from tests.deploy.terraform_config import TerraformConfig, expression, load, one


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


def test_no_table_is_declared_the_pipeline_creates_them(config: TerraformConfig) -> None:
    assert config.resources("google_bigquery_table") == {}


def test_the_only_dataset_is_the_pipelines_default_and_not_its_shadow(config: TerraformConfig) -> None:
    datasets = config.resources("google_bigquery_dataset")
    assert list(datasets) == [("google_bigquery_dataset", "warehouse")]
    assert expression(datasets[("google_bigquery_dataset", "warehouse")]["dataset_id"]) == "var.dataset_id"
    assert config.variables()["dataset_id"]["default"] == base.DATASET
    # The pipeline deletes and recreates <dataset>__rebuild, so it must be its creator (and owner): not Terraform.
    declared = {str(body["dataset_id"]) for body in datasets.values()}
    assert not any(base.SHADOW_SUFFIX in d for d in declared)


def test_the_dataset_keeps_its_tables_on_destroy(config: TerraformConfig) -> None:
    dataset = config.resource("google_bigquery_dataset", "warehouse")
    assert dataset["delete_contents_on_destroy"] is False
    assert one(dataset["lifecycle"])["prevent_destroy"] is True


def test_the_dataset_location_is_where_the_pipeline_puts_its_shadow(config: TerraformConfig) -> None:
    # The pipeline has no BigQuery location setting: its shadow dataset goes to BigQuery's default, US.
    assert "PULL_EVENTS_BIGQUERY_LOCATION" not in pipeline_reads()
    variable = config.variables()["bigquery_location"]
    assert variable["default"] == "US"
    assert expression(one(variable["validation"])["condition"]) == 'var.bigquery_location == "US"'


def test_pipeline_environment_output_names_only_settings_the_pipeline_reads(config: TerraformConfig) -> None:
    environment = config.outputs()["pipeline_environment"]["value"]
    assert set(environment) == {"PULL_EVENTS_LANDING", "PULL_EVENTS_WAREHOUSE"}
    assert set(environment) <= pipeline_reads()
    # With the interpolations filled in, the pipeline's own parser reads the project and the declared dataset.
    warehouse = environment["PULL_EVENTS_WAREHOUSE"]
    filled = warehouse.replace("${var.project_id}", "a-project").replace(
        "${google_bigquery_dataset.warehouse.dataset_id}", base.DATASET
    )
    assert "${" not in filled, warehouse
    location = parse_warehouse(filled)
    assert (location.kind, location.project, location.dataset) == ("bigquery", "a-project", base.DATASET)
