"""gunicorn settings for the receiver: ``gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'``.

One worker process with many threads by default: group commit gathers events within a process, so one
process makes the fewest, largest objects. Threads mostly wait on commits, so there are many of them.
Override with ``WEB_CONCURRENCY`` (processes) and ``PULL_EVENTS_THREADS``, or any gunicorn flag through
``GUNICORN_CMD_ARGS``.

The worker is the receiver's asyncio front (``receiver.front.FrontWorker``): it hands a request to one of the
``threads`` only once it is complete and its token checked, with header and body read deadlines.

SIGTERM: the front stops accepting connections, closes idle ones and lets in-flight requests finish (each
waits at most the commit timeout, so ``graceful_timeout`` is longer than that); then ``worker_exit`` drains the
batcher, committing whatever is still queued, and the process exits 0.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.glogging import Logger

from pull_events.settings import check_listen_address, load_settings
from receiver.logs import gunicorn_logconfig

# Loading the settings here makes a bad one stop gunicorn at once, with the variable named.
_settings = load_settings()
check_listen_address(_settings.receiver)

bind = [f"{_settings.receiver.host}:{_settings.receiver.port}"]
# An asyncio front (receiver.front): a request reaches an app thread only once it is complete and its token
# checked, so slow or idle clients hold a socket, never a thread. gthread would give each connection a thread.
worker_class = "receiver.front.FrontWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = int(os.environ.get("PULL_EVENTS_THREADS", "64"))
# Open connections per worker; more are answered 503 and closed. Idle ones cost a socket and a coroutine.
worker_connections = int(os.environ.get("PULL_EVENTS_MAX_CONNECTIONS", "4096"))
graceful_timeout = int(_settings.receiver.commit_timeout_seconds) + 5
timeout = max(30, graceful_timeout)
keepalive = 5


class NoAccessLogLogger(Logger):
    """gunicorn's logger without the access-log records the receiver does not keep.

    With ``logconfig_dict`` set, gunicorn builds an access-log record for every request even though
    ``accesslog`` is None and the record goes nowhere: about 5 % of a request's CPU. This logger skips
    that work unless an access log is configured (``--access-logfile``).
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.cfg.accesslog is not None:
            super().access(resp, req, environ, request_time)


logger_class = NoAccessLogLogger
accesslog = None
# No runtime control socket: nothing uses it, and two receivers on one host would fight over its path.
control_socket_disable = True
logconfig_dict = gunicorn_logconfig()
# Request heads are parsed by the front (receiver.front.MAX_HEAD_BYTES), not by gunicorn.


def post_worker_init(worker: Any) -> None:
    """Garbage collection tuned for many short requests (measured: 16 us of collection per event down to 2).

    What the worker holds after start-up (modules, the app) lives as long as the process: frozen, the
    full collections no longer walk it. And with up to ``threads`` requests in flight, whose objects
    are young, the default young-generation threshold (700) triggers a collection every few dozen
    requests that walks them all; 10,000 does so about 40 times less often. Garbage without cycles is
    freed at once as ever, and the few cycles wait a little longer.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def worker_exit(server: Any, worker: Any) -> None:
    """Commit what is still queued before the worker process ends."""
    from receiver import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None:
        shutdown(app, timeout=_settings.receiver.commit_timeout_seconds)
