"""The receiver: verified, durable intake of Chainguard CloudEvents into the landing zone.

``create_app()`` is a Flask app factory, so both of these serve it::

    flask --app receiver run                                              # development
    gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'     # production

Settings come from the environment (``pull_events.settings``); a missing or invalid one stops the
start with a message naming the variable.
"""

from __future__ import annotations

import atexit

from flask import Flask

from pull_events.landing import LandingStore, new_instance_id, open_landing_store
from pull_events.settings import Settings, SettingsError, load_settings
from receiver.auth import ChainguardVerifier
from receiver.batcher import Batcher
from receiver.intake import Intake
from receiver.logs import configure_logging
from receiver.metrics import ReceiverMetrics
from receiver.readiness import Readiness
from receiver.replay import TokenBindings
from receiver.views import EXTENSION, ReceiverState, bp, receiver_state, register_error_handlers

# A batch waits for at most this many batches' worth of bytes to be queued behind it.
PENDING_BATCHES = 4


def create_app(settings: Settings | None = None, store: LandingStore | None = None) -> Flask:
    """Build the receiver app from ``settings`` (default: the environment) landing into ``store``
    (default: the configured landing zone)."""
    log = configure_logging()
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            log.critical(
                f"invalid setting {exc.variable}: cannot start",
                extra={"fields": {"variable": exc.variable, "problem": str(exc)}},
            )
            raise
    options = settings.receiver
    if store is None:
        store = open_landing_store(settings.landing)
    instance = new_instance_id(options.instance_name)
    metrics = ReceiverMetrics()
    batcher = Batcher(
        store,
        instance,
        max_events=options.batch_max_events,
        max_bytes=options.batch_max_bytes,
        max_wait=options.batch_max_wait_seconds,
        max_pending_events=options.max_pending_events,
        max_pending_bytes=PENDING_BATCHES * options.batch_max_bytes,
        commit_timeout=options.commit_timeout_seconds,
        max_line_bytes=options.max_line_bytes,
        metrics=metrics,
    )
    verifier = None
    if options.auth == "chainguard":
        assert options.group is not None  # load_settings requires it while auth is on
        verifier = ChainguardVerifier(
            options.issuer,
            options.group,
            options.jwks_min_refresh_seconds,
            max_lifetime_seconds=options.max_token_lifetime_seconds,
            leeway_seconds=options.token_leeway_seconds,
        )
    else:
        log.warning(
            "AUTHENTICATION IS OFF (PULL_EVENTS_AUTH=off): ANY CALLER CAN LAND EVENTS. FOR A LOCAL DEMO ONLY.",
            extra={"fields": {"auth": "off"}},
        )

    app = Flask(__name__)
    # One byte more than allowed: werkzeug stops a chunked body silently at the limit, so the view reads
    # up to limit + 1 bytes and refuses a body that got that far (see views.read_body).
    app.config["MAX_CONTENT_LENGTH"] = options.max_body_bytes + 1
    app.extensions[EXTENSION] = ReceiverState(
        intake=Intake(batcher=batcher, verifier=verifier, instance=instance, bindings=TokenBindings()),
        batcher=batcher,
        store=store,
        metrics=metrics,
        readiness=Readiness(store, batcher, verifier, options.min_free_bytes),
        max_body_bytes=options.max_body_bytes,
    )
    app.register_blueprint(bp)
    register_error_handlers(app)
    # gunicorn drains through its worker_exit hook; this covers `flask run` and other servers.
    atexit.register(batcher.close, options.commit_timeout_seconds)
    log.info(
        "receiver ready to start",
        extra={
            "fields": {
                "landing": settings.landing.uri,
                "auth": options.auth,
                "issuer": options.issuer if verifier else None,
                "group": options.group if verifier else None,
                "instance": instance,
            }
        },
    )
    return app


def shutdown(app: Flask, timeout: float | None = None) -> None:
    """Stop taking events and commit everything pending (gunicorn's worker_exit hook calls this)."""
    receiver_state(app).batcher.close(timeout)


__all__ = ["create_app", "shutdown"]
