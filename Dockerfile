# The receiver: gunicorn serving receiver:create_app(), configured by environment variables
# (PULL_EVENTS_LANDING, CHAINGUARD_GROUP, ... see README). Build: docker build -t pull-events-receiver .
# It holds only the `receiver` dependency group: no Dagster, DuckDB or BigQuery client (README, Images).
FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app
# From the lock file only, so code changes do not reinstall the dependencies.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-default-groups --group receiver --no-cache

# The image proper: the environment without uv, pip's copy of it or uv's cache.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/app/.venv/bin:$PATH" \
    PORT=8080

WORKDIR /app
COPY --from=build /app/.venv ./.venv
COPY pull_events ./pull_events
COPY receiver ./receiver

# The default local landing zone (/app/.data/landing) is the one place the receiver writes: mount a volume
# there, or land in GCS (PULL_EVENTS_LANDING=gs://...).
RUN useradd --system --uid 10001 --no-create-home receiver \
    && mkdir /app/.data && chown receiver /app/.data
USER receiver

EXPOSE 8080

# Exec form: gunicorn is PID 1 and gets SIGTERM from `docker stop` / Cloud Run, then drains and exits.
CMD ["gunicorn", "-c", "python:receiver.gunicorn_conf", "receiver:create_app()"]
