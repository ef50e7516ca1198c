# The receiver: gunicorn serving receiver:create_app(), configured by environment variables
# (PULL_EVENTS_LANDING, CHAINGUARD_GROUP, ... see README). Build: docker build -t pull-events-receiver .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app
# Dependencies first (from the lock file only), so code changes do not reinstall them.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project

COPY pull_events ./pull_events
COPY receiver ./receiver

RUN useradd --system --uid 10001 --no-create-home receiver
USER receiver

ENV PATH="/app/.venv/bin:$PATH" \
    PORT=8080
EXPOSE 8080

# Exec form: gunicorn is PID 1 and gets SIGTERM from `docker stop` / Cloud Run, then drains and exits.
CMD ["gunicorn", "-c", "python:receiver.gunicorn_conf", "receiver:create_app()"]
