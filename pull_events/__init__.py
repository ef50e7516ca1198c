"""Shared core of pull-events: configuration and the landing-zone layout.

Both the receiver and the Dagster pipeline import from here, so the two sides can never disagree
on where an event lands or how it is named.
"""
