"""Every table's columns, defined once; each warehouse renders them in its own type system.

The pull table is a superset of the reference recorder's ``pull.schema.json``: ``actor`` and ``body`` keep
the same nested names (including ``act.aws-arn`` etc.), so queries written against the reference table
keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pull_events_dagster.warehouse import base

ColumnType = Literal["STRING", "INT64", "FLOAT64", "BOOL", "TIMESTAMP", "DATETIME", "DATE", "JSON", "RECORD"]
Mode = Literal["NULLABLE", "REQUIRED", "REPEATED"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    description: str = ""
    mode: Mode = "NULLABLE"
    fields: tuple[Column, ...] = ()


def _s(name: str, description: str = "") -> Column:
    return Column(name, "STRING", description)


def _i(name: str, description: str = "") -> Column:
    return Column(name, "INT64", description)


ENVELOPE: tuple[Column, ...] = (
    Column("event_id", "STRING", "CloudEvent id (Ce-Id)", "REQUIRED"),
    Column("event_source", "STRING", "CloudEvent source (Ce-Source); (source, id) is unique", "REQUIRED"),
    _s("event_type", "CloudEvent type (Ce-Type)"),
    _s("event_subject", "CloudEvent subject (Ce-Subject): the repository UIDP for pulls"),
    Column("event_time", "TIMESTAMP", "CloudEvent time (Ce-Time)"),
    _s("event_group", "Chainguard group extension (Ce-Group): the organization id"),
    _s("event_specversion", "CloudEvents spec version (Ce-Specversion)"),
    _s("event_datacontenttype", "media type of the event data (Content-Type / datacontenttype)"),
    _s("event_dataschema", "CloudEvent dataschema, when sent"),
    _s("event_audience", "Chainguard audience extension (Ce-Audience)"),
    _s("event_actor", "Chainguard actor extension (Ce-Actor): the service account that published the event"),
)

LINEAGE: tuple[Column, ...] = (
    _s("landing_object", "landing-zone key of the object the event was loaded from"),
    _i("landing_line", "1-based line number within landing_object"),
    Column("received_at", "TIMESTAMP", "when the receiver accepted the event"),
    _s("received_by", "receiver instance that accepted the event"),
    _s("body_sha256", "sha256 of the HTTP body the receiver accepted, as 'sha256:<hex>'"),
    _s(
        "token_sha256",
        "sha256 of the bearer token that authorized the delivery, as 'sha256:<hex>': a token authorizes one event, "
        "so a second event carrying it is rejected as token_replayed",
    ),
    Column("loaded_at", "TIMESTAMP", "when the pipeline loaded the event"),
    Column(
        "raw_event",
        "JSON",
        "the whole landed line when the other columns do not hold all of it: a key no column holds (an unknown "
        "extension, data field or claim) or a null value; NULL otherwise. Every line also stays in the landing "
        "zone at landing_object / landing_line",
    ),
)

ACTOR = Column(
    "actor",
    "RECORD",
    "identity that acted",
    fields=(
        _s("subject", "UIDP of the identity that acted"),
        Column(
            "act",
            "RECORD",
            "claims of the identity it assumed (claims without a field here keep the line in raw_event)",
            fields=tuple(
                _s(n) for n in ("iss", "sub", "aud", "aws-arn", "aws-acct", "aws-userid", "email", "job_workflow_ref")
            ),
        ),
    ),
)

PULL_BODY = Column(
    "body",
    "RECORD",
    "the registry pull",
    fields=(
        _s("repository", "repository path as the client named it"),
        _s("repo_id", "UIDP of the repository"),
        _s("subdomain", "registry subdomain, e.g. skills for skills.cgr.dev"),
        _s("tag", "tag pulled; NULL for pulls by digest"),
        _s("digest", "sha256 digest of the manifest or blob fetched"),
        _s("method", "HEAD or GET"),
        _s("type", "manifest or blob"),
        Column("when", "DATETIME", "when the pull happened (UTC civil time)"),
        _s("location"),
        _s("remote_address", "client IP address"),
        _s("user_agent"),
        Column(
            "error",
            "RECORD",
            "OCI distribution error, if the pull failed",
            fields=(_i("status"), _s("code"), _s("message")),
        ),
        Column(
            "policy_results",
            "RECORD",
            "policy evaluations",
            "REPEATED",
            fields=(_s("policy_id"), _s("policy_name"), _s("mode"), _s("result")),
        ),
    ),
)

POLICY_RESULTS = next(f for f in PULL_BODY.fields if f.name == "policy_results")

# A pull event's data as the pull table holds it: actor and body, key by key.
PULL_DATA = Column("data", "RECORD", "the pull event's data", fields=(ACTOR, PULL_BODY))


def nested_records(column: Column, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Column]]:
    """``column`` (a record found at key ``path`` of a line) and every non-repeated record in it, with their paths.

    These are the JSON objects whose keys the columns hold one by one; a line whose objects have more keys
    than that keeps raw_event.
    """
    if column.type != "RECORD" or column.mode == "REPEATED":
        return []
    found = [(path, column)]
    for field in column.fields:
        found += nested_records(field, (*path, field.name))
    return found


def held_leaves(column: Column) -> list[tuple[str, ...]]:
    """The values (paths relative to ``column``) of which one must be present for its column to hold it.

    A scalar or repeated column holds a value that is present. A record holds an object only when one of its
    leaves has a value, so a record whose fields are all absent or null (a string where an object belongs,
    ``{}``, only null values) keeps the line in raw_event rather than losing it. Both warehouses judge by this.
    """
    if column.type != "RECORD" or column.mode == "REPEATED":
        return [()]
    return [(field.name, *leaf) for field in column.fields for leaf in held_leaves(field)]


# The top-level keys of a landed line (CloudEvent attributes and extensions, then the receiver's own;
# see pull_events/landing.py) and the column each is loaded into. ``data`` goes to the pull table's
# actor and body, or to the events table's data. A line with any other key keeps raw_event.
LINE_KEYS: dict[str, str] = {
    "id": "event_id",
    "source": "event_source",
    "type": "event_type",
    "subject": "event_subject",
    "time": "event_time",
    "group": "event_group",
    "specversion": "event_specversion",
    "datacontenttype": "event_datacontenttype",
    "dataschema": "event_dataschema",
    "audience": "event_audience",
    "actor": "event_actor",
    "landing_object": "landing_object",
    "landing_line": "landing_line",
    "received_at": "received_at",
    "received_by": "received_by",
    "body_sha256": "body_sha256",
    "token_sha256": "token_sha256",
}
# Every key a line's top level may have without keeping raw_event.
TOP_LEVEL_KEYS = (*LINE_KEYS, "data")
# The line key each column is read from (a column added later is filled from old rows' raw_event by it).
LINE_KEY_OF_COLUMN = {column: key for key, column in LINE_KEYS.items()}


def known_keys() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each object of a pull line whose keys the columns hold one by one (its key path) and those keys."""
    levels = [((), TOP_LEVEL_KEYS)]
    levels += [(path, tuple(f.name for f in column.fields)) for path, column in nested_records(PULL_DATA, ("data",))]
    return levels


# How many of the latest rows that keep raw_event the checks read to name the keys without a column.
KEY_SAMPLE_ROWS = 10_000

TABLES: dict[str, tuple[Column, ...]] = {
    base.PULLS: (
        *ENVELOPE,
        _s("repository", "copy of body.repository at top level: BigQuery clusters only on top-level columns"),
        Column(
            "day",
            "DATE",
            "UTC day of body.when: the partitioning column, and the day daily_pulls counts the pull in. A "
            "redelivered event carries the same body.when, so (event_source, event_id) is de-duplicated within it",
        ),
        ACTOR,
        PULL_BODY,
        *LINEAGE,
    ),
    base.EVENTS: (*ENVELOPE, Column("data", "JSON", "the event data"), *LINEAGE),
    base.REJECTED: (
        _s("landing_object"),
        _i("landing_line"),
        _s("reason", "why the line could not be loaded"),
        _s("raw_line", "the line exactly as landed"),
        Column("rejected_at", "TIMESTAMP"),
        _s("run_id", "Dagster run that found it"),
    ),
    base.LOADED_OBJECTS: (
        Column("landing_object", "STRING", mode="REQUIRED"),
        _i("lines", "lines in the object"),
        _i("pulls_inserted"),
        _i("events_inserted"),
        _i("duplicates_skipped"),
        _i("lines_rejected"),
        Column("loaded_at", "TIMESTAMP"),
        _s("run_id"),
    ),
    base.QUARANTINED: (
        Column("landing_object", "STRING", mode="REQUIRED"),
        _s("reason", "object_missing (gone when read) or object_unreadable (the store refused to give it)"),
        _s("detail", "the error the store gave"),
        Column("quarantined_at", "TIMESTAMP", "when a load last failed to read it"),
        _s("run_id", "Dagster run that last failed to read it"),
    ),
    base.DAILY_PULLS: (
        Column("day", "DATE", "UTC day of body.when", "REQUIRED"),
        Column("repository", "STRING", mode="REQUIRED"),
        _i("events", "all pull events (HEAD and GET, manifests and blobs)"),
        _i("image_pulls", "manifest GETs without error: what a person means by a pull"),
        _i("manifest_heads", "manifest HEADs (existence checks, e.g. by pull-through caches)"),
        _i("blob_gets"),
        _i("errors", "events with an error"),
        _i("unique_actors", "distinct actor.subject"),
        _i("unique_clients", "distinct body.remote_address"),
        Column("first_pull", "DATETIME", "earliest body.when of the day"),
        Column("last_pull", "DATETIME", "latest body.when of the day"),
        Column("computed_at", "TIMESTAMP", "when the day was last recomputed"),
    ),
    # The repository summary's state, maintained with daily_pulls as days are recomputed (docs/derived-tables.md):
    # the distinct actors, clients and tags of each repository per day, and over all days.
    base.DAILY_VALUES: (
        Column("day", "DATE", "UTC day of body.when", "REQUIRED"),
        Column("repository", "STRING", mode="REQUIRED"),
        Column("kind", "STRING", "actor (actor.subject), client (body.remote_address) or tag (body.tag)", "REQUIRED"),
        Column("value", "STRING", mode="REQUIRED"),
        _i("image_pulls", "the day's image pulls of the tag (tags only; a tag is listed only when it has some)"),
    ),
    base.REPOSITORY_VALUES: (
        Column("repository", "STRING", mode="REQUIRED"),
        Column("kind", "STRING", "actor, client or tag", "REQUIRED"),
        Column("value", "STRING", mode="REQUIRED"),
        _i("days", "days on which daily_repository_values lists it: the row goes when this reaches 0"),
        _i("image_pulls", "image pulls of the tag over all days (tags only)"),
    ),
    base.SUMMARY_PENDING: (
        Column("repository", "STRING", "a repository whose days changed since the summary last read them", "REQUIRED"),
        Column("marked_at", "TIMESTAMP"),
    ),
    base.REPOSITORY_SUMMARY: (
        Column("repository", "STRING", mode="REQUIRED"),
        _i("events"),
        _i("image_pulls"),
        _i("errors"),
        Column("error_rate", "FLOAT64", "errors / events"),
        _i("unique_actors"),
        _i("unique_clients"),
        Column("first_seen", "DATETIME", "earliest body.when, among pulls not dated in the future (see last_seen)"),
        Column(
            "last_seen",
            "DATETIME",
            "latest body.when among pulls dated up to the UTC day of computed_at + PULL_EVENTS_FUTURE_TOLERANCE_S "
            "(the horizon day); pulls dated on later days count in no time-based column (a check flags them); NULL "
            "when every pull of the repository is dated later",
        ),
        _i(
            "image_pulls_last_7d",
            "image pulls dated on the 7 UTC days ending with computed_at's day (or on the horizon day, if later)",
        ),
        _i(
            "image_pulls_last_30d",
            "image pulls dated on the 30 UTC days ending with computed_at's day (or on the horizon day, if later)",
        ),
        Column(
            "top_tags",
            "RECORD",
            "the 5 most pulled tags by image pulls",
            "REPEATED",
            fields=(_s("tag"), _i("image_pulls")),
        ),
        Column("computed_at", "TIMESTAMP"),
    ),
}
