"""Synthetic Chainguard events written as receiver-format landing objects.

Used by the pipeline tests (small, hand-picked cases) and the benchmarks (a million events): lines are
built exactly as the receiver writes them (``pull_events/landing.py``: the CloudEvent in JSON form plus
``landing_object``, ``landing_line``, ``received_at``, ``received_by``, ``body_sha256``), keyed with
``object_key`` and stored through a real ``LandingStore``.

Every generated pull is also returned as a compact ``PullFacts`` record so a test can compute the
expected tables independently of the warehouse SQL.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from pull_events.landing import LandingStore, object_key

PULL_TYPE = "dev.chainguard.registry.pull.v1"
PUSH_TYPE = "dev.chainguard.registry.push.v1"
REPO_CREATED_TYPE = "dev.chainguard.api.platform.registry.repo.created.v1"
SOURCE = "cgr.dev"
GROUP = "45a0c61ea6fd977f050c5fb9ac06a69eed764595"
TAGS = ("latest", "latest-dev", "3.12", "3.11", "1.0.0")

# Every rejection reason of the load rules, in the order a generator cycles through them.
REJECTION_REASONS = (
    "invalid_json",
    "missing_attribute:id",
    "missing_attribute:source",
    "missing_attribute:type",
    "invalid_value:time",
    "wrong_type:data",
    "wrong_type:data.body",
    "missing_field:body.repository",
    "invalid_value:body.when",
    "wrong_type:body.error.status",
    "wrong_type:actor",
    "wrong_type:body.policy_results",
)


class PullFacts(NamedTuple):
    """What the derived tables depend on, for one distinct pull event."""

    source: str
    id: str
    repository: str
    when: datetime  # naive, UTC civil time, as in body.when
    method: str
    type: str
    tag: str | None
    error_status: int | None
    actor: str
    remote_address: str

    @property
    def image_pull(self) -> bool:
        """A manifest GET without error: what a person means by "a pull"."""
        return self.method == "GET" and self.type == "manifest" and self.error_status is None


class RawLine(str):
    """A line written exactly as given (not an event), e.g. broken JSON."""


def civil(moment: datetime) -> str:
    """``body.when`` format: no zone, 6 fraction digits, or none when the fraction is zero."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond:06d}" if moment.microsecond else text


def rfc3339(moment: datetime, nanos: int | None = None) -> str:
    """RFC 3339 UTC with microseconds (or nanoseconds when ``nanos`` is given)."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos is not None:
        return f"{base}.{moment.microsecond * 1000 + nanos:09d}Z"
    return f"{base}.{moment.microsecond:06d}Z"


def event_uuid(seed: int, number: int) -> str:
    """A deterministic UUID-shaped event id."""
    return str(uuid.UUID(int=((seed & 0xFFFFFFFF) << 96) | (0x4000 << 64) | number))


def pull_event(facts: PullFacts, *, extra: Mapping[str, Any] | None = None, digest: str | None = None) -> dict:
    """The CloudEvent (JSON form) of one pull, as the receiver turns a delivery into a line."""
    body: dict[str, Any] = {
        "repository": facts.repository,
        "repo_id": f"{GROUP}/{hashlib.sha1(facts.repository.encode()).hexdigest()[:16]}",
        "digest": digest or f"sha256:{hashlib.sha256(facts.id.encode()).hexdigest()}",
        "method": facts.method,
        "type": facts.type,
        "when": civil(facts.when),
        "location": "ColumbusOHUS",
        "remote_address": facts.remote_address,
        "user_agent": "docker/27.3.1 go/go1.22.7 git-commit/41ca978 os/linux arch/amd64",
    }
    if facts.tag is not None:
        body["tag"] = facts.tag
    if facts.error_status is not None:
        body["error"] = {"status": facts.error_status, "code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": facts.id,
        "source": facts.source,
        "type": PULL_TYPE,
        "subject": body["repo_id"],
        "time": rfc3339((facts.when + timedelta(milliseconds=250)).replace(tzinfo=UTC), nanos=171),
        "datacontenttype": "application/json",
        "group": GROUP,
        "audience": "customer",
        "data": {
            "actor": {
                "subject": facts.actor,
                "act": {"iss": "https://issuer.enforce.dev", "sub": facts.actor, "aud": "cgr.dev"},
            },
            "body": body,
        },
    }
    for name, value in (extra or {}).items():
        event[name] = value
    return event


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A change to one key of an event (``path`` dotted from the event's top level)."""

    def change(event: dict) -> None:
        *parents, last = path.split(".")
        target = event
        for parent in parents:
            target = target[parent]
        target[last] = value

    return change


# Changes to a pull event after which its columns no longer hold all of its line, so both warehouses must
# keep the line in raw_event (an unchanged pull_event keeps none).
RAW_EVENT_CASES: dict[str, Callable[[dict], None]] = {
    "unknown extension": _set("chainguarddev1delivery", "d-1"),
    "unknown data key": _set("data.trace", {"id": 1}),
    "unknown actor key": _set("data.actor.kind", "user"),
    "unknown claim": _set("data.actor.act.custom_claim", "c"),
    "claims that are not an object": _set("data.actor.act", "not-an-object"),
    "unknown body key": _set("data.body.future_field", [1]),
    "unknown error key": _set("data.body.error", {"status": 500, "retry": True}),
    "unknown policy key": _set("data.body.policy_results", [{"policy_id": "p", "extra": 1}]),
    "policy not an object": _set("data.body.policy_results", [{"policy_id": "p"}, "odd"]),
    "null value": _set("data.body.tag", None),
    "null attribute": _set("subject", None),
}


def events_with_fields_without_columns() -> list[dict]:
    """Six pulls, three of them with fields no column holds: the check figures name those fields."""
    events = [pull_event(_facts_for(f"c{n}")) for n in range(6)]
    events[0]["chainguarddev1delivery"] = "d-0"
    events[1]["chainguarddev1delivery"] = "d-1"
    events[1]["data"]["body"]["future_field"] = 1
    events[2]["data"]["actor"]["act"]["custom_claim"] = "c"
    return events


def _facts_for(event_id: str) -> PullFacts:
    return PullFacts(
        "cgr.dev",
        event_id,
        "acme.dev/python",
        datetime(2026, 11, 18, 9, 30),
        "GET",
        "manifest",
        "latest",
        None,
        "actor-1",
        "10.0.0.1",
    )


EXPECTED_KEYS_WITHOUT_COLUMN = {
    "chainguarddev1delivery": 2,
    "data.actor.act.custom_claim": 1,
    "data.body.future_field": 1,
}


# Changes after which the columns still hold the whole line: no raw_event.
HELD_CASES: dict[str, Callable[[dict], None]] = {
    "publisher extension": _set("actor", "svc-publisher"),
    "dataschema": _set("dataschema", "https://schema/pull"),
    "empty location": _set("data.body.location", ""),
    "no policy results": _set("data.body.policy_results", []),
    "policy results": _set("data.body.policy_results", [{"policy_id": "p", "result": "RESULT_ALLOWED"}]),
    "error": _set("data.body.error", {"status": 404, "code": "MANIFEST_UNKNOWN", "message": "m"}),
    "every known claim": _set("data.actor.act", {"iss": "i", "sub": "s", "aud": "a", "aws-arn": "arn", "email": "e"}),
}


def other_event(event_type: str, event_id: str, moment: datetime, data: Mapping[str, Any]) -> dict:
    """A CloudEvent of a type other than pulls."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "https://console-api.enforce.dev",
        "type": event_type,
        "subject": f"{GROUP}/0123456789abcdef",
        "time": rfc3339(moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment),
        "datacontenttype": "application/json",
        "group": GROUP,
        "data": dict(data),
    }


def poison_event(reason: str, facts: PullFacts) -> dict | RawLine:
    """A line that the load must reject with exactly ``reason`` (each rule's first failure)."""
    if reason == "invalid_json":
        return RawLine('{"specversion":"1.0","id":"' + facts.id + '","data":{"body": ')
    event = pull_event(facts)
    data = event["data"]
    body = data["body"]
    breakers: dict[str, Callable[[], None]] = {
        "missing_attribute:id": lambda: event.pop("id"),
        "missing_attribute:source": lambda: event.update(source=""),
        "missing_attribute:type": lambda: event.update(type=17),
        "invalid_value:time": lambda: event.update(time="yesterday at noon"),
        "wrong_type:data": lambda: event.update(data="not an object"),
        "wrong_type:data.body": lambda: data.update(body=["not", "an", "object"]),
        "missing_field:body.repository": lambda: body.pop("repository"),
        "invalid_value:body.when": lambda: body.update(when="2026-13-45T99:00:00"),
        "wrong_type:body.error.status": lambda: body.update(error={"status": "404", "code": "X", "message": "m"}),
        "wrong_type:actor": lambda: data.update(actor="someone"),
        "wrong_type:body.policy_results": lambda: body.update(policy_results={"policy_id": "p"}),
    }
    breakers[reason]()
    return event


def landed_line(
    event: Mapping[str, Any] | RawLine, key: str, line: int, received_at: datetime, received_by: str
) -> str:
    """One NDJSON line (no newline) exactly as the receiver writes it."""
    if isinstance(event, RawLine):
        return str(event)
    data_bytes = json.dumps(event.get("data"), separators=(",", ":")).encode()
    record = {
        "landing_object": key,
        "landing_line": line,
        **event,
        "received_at": rfc3339(received_at),
        "received_by": received_by,
        "body_sha256": "sha256:" + hashlib.sha256(data_bytes).hexdigest(),
    }
    return json.dumps(record, separators=(",", ":"))


def write_object(
    store: LandingStore,
    event_type: str,
    events: Sequence[Mapping[str, Any] | RawLine],
    committed_at: datetime,
    *,
    instance: str = "factory",
    sequence: int = 0,
    received_at: datetime | None = None,
) -> str:
    """Write one receiver-format object of ``events`` (dicts or raw lines); returns its key."""
    key = object_key(event_type, committed_at, instance, sequence)
    received_at = received_at or committed_at - timedelta(milliseconds=3)
    text = "".join(landed_line(e, key, n, received_at, instance) + "\n" for n, e in enumerate(events, 1))
    store.write_new(key, text.encode())
    return key


@dataclass(frozen=True)
class LandingSpec:
    """What to generate. Rates are fractions of lines."""

    events: int = 1_000  # distinct valid events, pulls and other types
    repositories: int = 10
    days: int = 7
    first_day: date = date(2026, 11, 1)
    events_per_object: int = 500  # lines per object
    duplicate_rate: float = 0.0  # redelivered copies of earlier pulls (same source and id)
    bad_line_rate: float = 0.0  # poison lines, cycling through REJECTION_REASONS
    other_type_rate: float = 0.0  # events of other types (push, repo created)
    extra_field_rate: float = 0.05  # pulls carrying unknown extension and body fields
    actors: int = 50
    clients: int = 200
    seed: int = 1
    committed_from: datetime | None = None  # commit time of the first object; default one minute ago
    commit_spacing: timedelta = timedelta(milliseconds=1)
    instance: str = "factory"
    keep_facts: bool = True  # False for huge runs: only counts are kept


@dataclass
class SyntheticLanding:
    """What was written, for expectations."""

    keys: list[str] = field(default_factory=list)
    pulls: list[PullFacts] = field(default_factory=list)  # each distinct valid pull once
    pull_count: int = 0
    other_events: int = 0
    duplicates: int = 0
    with_extra_fields: int = 0  # distinct pulls carrying fields no column holds
    rejected: list[tuple[str, int, str]] = field(default_factory=list)  # (key, line, reason)
    lines: int = 0
    bytes: int = 0


def synthetic_landing(store: LandingStore, spec: LandingSpec = LandingSpec()) -> SyntheticLanding:
    """Write ``spec.events`` distinct events (plus duplicates and poison lines) as landing objects."""
    rng = random.Random(spec.seed)
    result = SyntheticLanding()
    repositories = [f"registry.example.com/team-{i % 7}/image-{i:04d}" for i in range(spec.repositories)]
    actors = [f"{GROUP}/{i:016x}" for i in range(spec.actors)]
    clients = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(spec.clients)]
    committed = spec.committed_from or datetime.now(UTC) - timedelta(minutes=1)
    buffers: dict[str, list[dict | RawLine]] = {PULL_TYPE: [], PUSH_TYPE: [], REPO_CREATED_TYPE: []}
    recent: list[dict] = []  # ring of recent pulls to redeliver
    sequence = 0
    reason_index = 0

    def flush(event_type: str) -> None:
        nonlocal committed, sequence
        lines = buffers[event_type]
        if not lines:
            return
        key = object_key(event_type, committed, spec.instance, sequence)
        received_at = committed - timedelta(milliseconds=3)
        text = "".join(landed_line(e, key, n, received_at, spec.instance) + "\n" for n, e in enumerate(lines, 1))
        data = text.encode()
        store.write_new(key, data)
        for n, line in enumerate(lines, 1):
            reason = getattr(line, "reason", "")
            if reason:
                result.rejected.append((key, n, reason))
        result.keys.append(key)
        result.lines += len(lines)
        result.bytes += len(data)
        lines.clear()
        sequence += 1
        committed += spec.commit_spacing

    def add(event_type: str, event: dict | RawLine) -> None:
        buffers[event_type].append(event)
        if len(buffers[event_type]) >= spec.events_per_object:
            flush(event_type)

    number = 0
    for _ in range(spec.events):
        # Redeliveries and poison lines come in between distinct events, at their rates.
        while recent and rng.random() < spec.duplicate_rate:
            add(PULL_TYPE, rng.choice(recent))
            result.duplicates += 1
        while rng.random() < spec.bad_line_rate:
            number += 1
            reason = REJECTION_REASONS[reason_index % len(REJECTION_REASONS)]
            reason_index += 1
            facts = _random_pull(rng, spec, number, repositories, actors, clients)
            add(PULL_TYPE, _Poison.wrap(poison_event(reason, facts), reason))
        number += 1
        moment = _random_when(rng, spec)
        if rng.random() < spec.other_type_rate:
            event_type = PUSH_TYPE if number % 2 else REPO_CREATED_TYPE
            add(event_type, other_event(event_type, event_uuid(spec.seed, number), moment, {"n": number}))
            result.other_events += 1
            continue
        facts = _random_pull(rng, spec, number, repositories, actors, clients, moment)
        extra = None
        if rng.random() < spec.extra_field_rate:
            extra = {"chainguarddev1delivery": f"d-{number}"}
        event = pull_event(facts, extra=extra)
        if extra:
            event["data"]["body"]["future_field"] = {"n": number}
            result.with_extra_fields += 1
        add(PULL_TYPE, event)
        result.pull_count += 1
        if spec.keep_facts:
            result.pulls.append(facts)
        if len(recent) < 1000:
            recent.append(event)
        else:
            recent[rng.randrange(1000)] = event
    for event_type in buffers:
        flush(event_type)
    return result


class _Poison(dict):
    """A poison event remembering the reason it must be rejected for."""

    reason: str = ""

    @classmethod
    def wrap(cls, event: dict | RawLine, reason: str) -> dict | RawLine:
        if isinstance(event, RawLine):
            raw = _PoisonRaw(event)
            raw.reason = reason
            return raw
        poisoned = cls(event)
        poisoned.reason = reason
        return poisoned


class _PoisonRaw(RawLine):
    reason: str = ""


def _random_when(rng: random.Random, spec: LandingSpec) -> datetime:
    day = spec.first_day + timedelta(days=rng.randrange(spec.days))
    micros = 0 if rng.random() < 0.1 else rng.randrange(1, 1_000_000)
    return datetime(day.year, day.month, day.day) + timedelta(seconds=rng.randrange(86_400), microseconds=micros)


def _random_pull(
    rng: random.Random,
    spec: LandingSpec,
    number: int,
    repositories: Sequence[str],
    actors: Sequence[str],
    clients: Sequence[str],
    moment: datetime | None = None,
) -> PullFacts:
    roll = rng.random()
    method, kind = ("GET", "manifest") if roll < 0.3 else ("HEAD", "manifest") if roll < 0.4 else ("GET", "blob")
    tag = rng.choice(TAGS) if kind == "manifest" and rng.random() < 0.8 else None
    return PullFacts(
        source=SOURCE,
        id=event_uuid(spec.seed, number),
        repository=rng.choice(repositories),
        when=moment or _random_when(rng, spec),
        method=method,
        type=kind,
        tag=tag,
        error_status=rng.choice((401, 404, 429)) if rng.random() < 0.03 else None,
        actor=rng.choice(actors),
        remote_address=rng.choice(clients),
    )
