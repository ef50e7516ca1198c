"""The cloud implementations of the landing and warehouse resources: a GCS bucket and a BigQuery dataset.

Imported by ``resources`` only when the settings name them, so the embedded default (a directory and a DuckDB file)
never imports dagster-gcp or the Google clients.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from dagster_gcp import BigQueryResource, GCSResource

from pull_events.landing import GcsLandingStore, LandingStore
from pull_events_dagster.defs.resources import LandingResource, WarehouseResource
from pull_events_dagster.warehouse.base import DATASET, Warehouse


class GcsLandingResource(LandingResource):
    """A GCS bucket (and prefix), read through dagster-gcp's GCS client."""

    bucket: str
    prefix: str = ""
    gcs: GCSResource

    def store(self) -> LandingStore:
        return GcsLandingStore(self.bucket, self.prefix, client=self.gcs.get_client())

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}".rstrip("/")


class BigQueryWarehouseResource(WarehouseResource):
    """A BigQuery dataset, through dagster-gcp's BigQueryResource."""

    bigquery: BigQueryResource
    dataset: str = DATASET

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        from pull_events_dagster.warehouse.bigquery import BigQueryWarehouse

        emulator = os.environ.get("BIGQUERY_EMULATOR_HOST")
        if emulator:
            # google-cloud-bigquery follows BIGQUERY_EMULATOR_HOST but still asks for credentials, which an
            # emulator neither has nor checks (google-cloud-storage goes anonymous by itself in this case).
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import bigquery

            client = bigquery.Client(
                project=self.bigquery.project,
                location=self.bigquery.location,
                credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=emulator),
            )
            try:
                yield BigQueryWarehouse(client, self.dataset, self.bigquery.location, **self.options())  # type: ignore[arg-type]
            finally:
                client.close()
            return
        with self.bigquery.get_client() as client:
            yield BigQueryWarehouse(client, self.dataset, self.bigquery.location, **self.options())  # type: ignore[arg-type]

    def kind(self) -> str:
        return "bigquery"


def gcs_landing_resource(bucket: str, prefix: str) -> GcsLandingResource:
    """The landing resource for ``gs://bucket/prefix``, with dagster-gcp's default client."""
    return GcsLandingResource(bucket=bucket, prefix=prefix, gcs=GCSResource())


def bigquery_warehouse_resource(project: str, dataset: str, **shared: int) -> BigQueryWarehouseResource:
    """The warehouse resource for ``project.dataset``."""
    return BigQueryWarehouseResource(bigquery=BigQueryResource(project=project), dataset=dataset, **shared)
