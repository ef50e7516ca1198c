"""Markdown for the metadata Dagster's UI renders: tables of a preview, a check's reasons and objects.

Every value is text from the warehouse or the landing zone (repository names, object keys, reasons): a ``|`` or a
line break in one would break the table, so cells are escaped.
"""

from collections.abc import Iterable, Sequence

import dagster as dg

from pull_events_dagster.warehouse import base


def cell(value: object) -> str:
    """One table cell: pipes escaped, line breaks flattened."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "none") -> str:
    """A Markdown table, or ``empty`` without rows (a header alone reads as a broken table)."""
    lines = [f"| {' | '.join(map(cell, row))} |" for row in rows]
    if not lines:
        return empty
    return "\n".join([f"| {' | '.join(headers)} |", "|" + "---|" * len(headers), *lines])


def _percent(errors: int, events: int) -> str:
    return f"{base.error_rate_pct(errors, events):.2f} %"


def repositories_table(repositories: Sequence[base.RepositoryPulls]) -> str:
    return table(
        ("repository", "image pulls", "events", "errors", "error rate"),
        ((r.repository, r.image_pulls, r.events, r.errors, _percent(r.errors, r.events)) for r in repositories),
        empty="no pulls",
    )


def daily_preview_metadata(preview: base.DailyPreview) -> dict[str, object]:
    """A run's days of ``daily_pulls``: a Markdown preview, and the totals the Plots tab draws over runs."""
    image_pulls = sum(day.image_pulls for day in preview.days)
    events = sum(day.events for day in preview.days)
    errors = sum(day.errors for day in preview.days)
    days = table(
        ("day", "image pulls", "events", "errors", "error rate", "repositories"),
        (
            (d.day.isoformat(), d.image_pulls, d.events, d.errors, _percent(d.errors, d.events), d.repositories)
            for d in preview.days
        ),
    )
    first, last = preview.days[0].day.isoformat(), preview.days[-1].day.isoformat()
    span = first if first == last else f"{first} .. {last}"
    text = f"### Top repositories, {span}\n\n{repositories_table(preview.top_repositories)}\n\n### By day\n\n{days}"
    return {
        "preview": dg.MetadataValue.md(text),
        # Plain numbers: Dagster's Plots tab draws each numeric key over the materializations.
        "image_pulls": image_pulls,
        "events": events,
        "errors": errors,
        "error_rate_pct": base.error_rate_pct(errors, events),
    }


def summary_preview_metadata(preview: base.SummaryPreview) -> dict[str, object]:
    """The summary after a run: its top repositories, and its totals over all days for the Plots tab."""
    text = f"### Top repositories, all days\n\n{repositories_table(preview.top_repositories)}"
    return {
        "preview": dg.MetadataValue.md(text),
        "repositories": preview.repositories,
        "image_pulls": preview.image_pulls,
        "events": preview.events,
        "errors": preview.errors,
        "error_rate_pct": base.error_rate_pct(preview.errors, preview.events),
    }
