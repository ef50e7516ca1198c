"""gunicorn settings for the bare endpoint: the receiver's (``receiver.gunicorn_conf``), so the ceiling runs
with the same workers, threads, keep-alive and logging, served the way a plain Flask app is: gunicorn's gthread.

Left out: the receiver's ``worker_exit`` hook (it drains the receiver's batcher, which the bare app does not
have) and its worker class (``receiver.front.FrontWorker`` serves the receiver app only). Every other setting
is copied, so a change to the receiver's config moves the ceiling with it.
"""

from __future__ import annotations

from receiver import gunicorn_conf as _receiver_conf

# gunicorn reads every module-level name it knows as a setting and ignores the rest.
globals().update(
    {
        name: value
        for name, value in vars(_receiver_conf).items()
        if not name.startswith("_") and name not in ("worker_exit", "worker_class")
    }
)
worker_class = "gthread"
worker_connections = max(1000, _receiver_conf.threads * 4)
