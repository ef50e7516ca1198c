"""gunicorn settings for the bare endpoint: exactly the receiver's (``receiver.gunicorn_conf``), so the
ceiling runs with the same worker class, workers, threads, keep-alive and logging.

Only the receiver's ``worker_exit`` hook is left out: it drains the receiver's batcher, which the bare
app does not have. Every other setting is copied, so a change to the receiver's config moves the
ceiling with it.
"""

from __future__ import annotations

from receiver import gunicorn_conf as _receiver_conf

# gunicorn reads every module-level name it knows as a setting and ignores the rest.
globals().update(
    {name: value for name, value in vars(_receiver_conf).items() if not name.startswith("_") and name != "worker_exit"}
)
