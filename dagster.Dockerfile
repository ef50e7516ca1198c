# The Dagster code location: a gRPC code server for pull_events_dagster.definitions, which a Dagster deployment's
# webserver and daemon (their own image) reach on port 4000; runs launched from it execute in this image.
# Configured by environment variables (PULL_EVENTS_LANDING, PULL_EVENTS_WAREHOUSE, ... see README).
# Build: docker build -f dagster.Dockerfile -t pull-events-dagster .
# It holds only the `pipeline` dependency group: no receiver, webserver or test packages (README, Images).
FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app
# From the lock file only, so code changes do not reinstall the dependencies.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-default-groups --group pipeline --no-cache

# The image proper: the environment without uv, pip's copy of it or uv's cache.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/app/.venv/bin:$PATH"

WORKDIR /app
COPY --from=build /app/.venv ./.venv
COPY pull_events ./pull_events
COPY pull_events_dagster ./pull_events_dagster

# The default DuckDB warehouse (/app/.data/warehouse.duckdb) and local landing zone live here: mount a volume,
# or use GCS and BigQuery (PULL_EVENTS_LANDING=gs://..., PULL_EVENTS_WAREHOUSE=bigquery://...).
RUN useradd --system --uid 10002 --no-create-home dagster \
    && mkdir /app/.data && chown dagster /app/.data
USER dagster

EXPOSE 4000

# Exec form: the code server is PID 1 and gets SIGTERM. The location name is workspace.yaml's.
# `dagster api grpc` with the same flags serves one process instead of a server that reloads in a child.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "pull_events_dagster.definitions", "--location-name", "pull_events"]
