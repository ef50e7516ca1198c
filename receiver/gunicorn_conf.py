"""gunicorn settings for the receiver: ``gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'``.

One worker process with many threads by default: group commit gathers events within a process, so one
process makes the fewest, largest objects. Threads mostly wait on commits, so there are many of them.
Override with ``WEB_CONCURRENCY`` (processes) and ``PULL_EVENTS_THREADS``, or any gunicorn flag through
``GUNICORN_CMD_ARGS``.

SIGTERM: gunicorn stops accepting connections and lets in-flight requests finish (each waits at most
the commit timeout, so ``graceful_timeout`` is longer than that); then ``worker_exit`` drains the
batcher, committing whatever is still queued, and the process exits 0.
"""

from __future__ import annotations

import os
from typing import Any

from pull_events.settings import load_settings
from receiver.logs import gunicorn_logconfig

# Loading the settings here makes a bad one stop gunicorn at once, with the variable named.
_settings = load_settings()

bind = [f"0.0.0.0:{_settings.receiver.port}"]
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = int(os.environ.get("PULL_EVENTS_THREADS", "64"))
worker_connections = max(1000, threads * 4)
graceful_timeout = int(_settings.receiver.commit_timeout_seconds) + 5
timeout = max(30, graceful_timeout)
keepalive = 5
accesslog = None
# No runtime control socket: nothing uses it, and two receivers on one host would fight over its path.
control_socket_disable = True
logconfig_dict = gunicorn_logconfig()
# Headers carry the CloudEvent attributes; Chainguard's are short, but leave room for long ids and types.
limit_request_field_size = 16384


def worker_exit(server: Any, worker: Any) -> None:
    """Commit what is still queued before the worker process ends."""
    from receiver import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None:
        shutdown(app, timeout=_settings.receiver.commit_timeout_seconds)
