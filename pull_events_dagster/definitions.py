"""The code location ``workspace.yaml`` loads: definitions for the landing zone and warehouse configured
in the environment (``PULL_EVENTS_LANDING``, ``PULL_EVENTS_WAREHOUSE``; see ``pull_events/settings.py``)."""

from __future__ import annotations

from pull_events.settings import load_settings
from pull_events_dagster.defs import build_definitions

defs = build_definitions(load_settings(receiver=False))
