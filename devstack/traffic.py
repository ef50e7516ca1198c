"""Realistic registry traffic as a seeded stream of deliveries: what ``scripts/generate-events`` sends.

Pulls come in sessions as clients make them: ``docker pull`` resolves the tag (HEAD), fetches the index and the
platform's manifest, then the blobs it lacks; a kubelet or Renovate only checks the tag (HEAD); a pull by
digest skips the tag. Repositories, identities and clients follow long tails (``devstack.catalog``). A share
of sessions fails (401, 403 by policy, 404, 429, a missing blob), a share of events is another type (pushes,
tag and repository changes), and a share of deliveries is a redelivery of an event sent shortly before (same
id and body, new token), as an at-least-once sender makes them.

Everything but the dates comes from the seed alone. Events are dated over the ``days`` before ``until``, in
the order they are sent; with ``days == 0`` each session is dated when it is generated (live traffic).
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from devstack.catalog import PLATFORMS, POLICIES, Actor, Catalog, Repository, catalog, digest, uidp
from devstack.delivery import Event
from devstack.oidc import DEFAULT_GROUP

PULL = "dev.chainguard.registry.pull.v1"
PUSH = "dev.chainguard.registry.push.v1"
API_TYPES = (
    "dev.chainguard.api.platform.registry.tag.updated.v1",
    "dev.chainguard.api.platform.registry.tag.created.v1",
    "dev.chainguard.api.platform.registry.repo.updated.v1",
)
API_SOURCE = "https://console-api.enforce.dev"
OciError = tuple[int, str, str]  # status, code, message
# The OCI distribution errors a session can end with.
ERRORS: tuple[OciError, ...] = (
    (401, "UNAUTHORIZED", "authentication required"),
    (403, "DENIED", "requested access to the resource is denied by policy"),
    (404, "MANIFEST_UNKNOWN", "manifest unknown"),
    (429, "TOOMANYREQUESTS", "too many requests"),
    (404, "BLOB_UNKNOWN", "blob unknown to registry"),
)
# Redeliveries repeat one of the events sent this recently.
REDELIVERY_WINDOW = 200
# Ce-Actor: the Chainguard service account that publishes events (one organisation of Chainguard's own).
PUBLISHER = uidp("a3b45c0d6e7f8091a2b3c4d5e6f708192a3b4c5d", "events-publisher")


@dataclass(frozen=True)
class TrafficSpec:
    events: int  # deliveries in all, redeliveries included
    days: float
    seed: int
    until: datetime
    group: str = DEFAULT_GROUP
    error_share: float = 0.04  # of pull sessions
    other_share: float = 0.03  # of sessions: one event of another type
    redelivery_share: float = 0.02  # of deliveries


@dataclass(frozen=True)
class Planned:
    event: Event
    redelivery: bool


def plan(spec: TrafficSpec, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Iterator[Planned]:
    """The ``spec.events`` deliveries of a run, lazily, in sending order."""
    rng = random.Random(spec.seed)
    world = catalog(spec.group)
    window = timedelta(days=spec.days)
    recent: deque[Event] = deque(maxlen=REDELIVERY_WINDOW)
    pending: deque[Event] = deque()
    for produced in range(spec.events):
        if recent and rng.random() < spec.redelivery_share:
            yield Planned(rng.choice(recent), redelivery=True)
            continue
        if not pending:
            # Each session starts in its own slice of the window, so the run covers it evenly in sending order.
            offset = window * ((produced + rng.random()) / spec.events)
            pending.extend(_session(rng, world, spec, clock() if spec.days == 0 else spec.until - window + offset))
        event = pending.popleft()
        recent.append(event)
        yield Planned(event, redelivery=False)


def _session(rng: random.Random, world: Catalog, spec: TrafficSpec, start: datetime) -> list[Event]:
    events = _Session(rng, world, spec, start)
    if rng.random() < spec.other_share:
        return [events.other()]
    return events.pulls()


class _Session:
    """One client's requests: the same identity, client, address and repository, a few milliseconds apart."""

    def __init__(self, rng: random.Random, world: Catalog, spec: TrafficSpec, start: datetime) -> None:
        self.rng, self.world, self.spec, self.moment = rng, world, spec, start
        self.repository: Repository = rng.choices(world.repositories, world.repository_weights)[0]
        self.actor: Actor = rng.choices(world.actors, world.actor_weights)[0]
        self.client = rng.choice(self.actor.clients)
        self.address = rng.choice(self.actor.addresses)
        self.platform = rng.choices(PLATFORMS, (7, 3))[0]
        # Moving tags are rebuilt daily: the digest a tag names changes from one day to the next.
        self.build = f"{start:%Y-%m-%d}"

    def pulls(self) -> list[Event]:
        rng, repository = self.rng, self.repository
        tag = rng.choices(repository.tags, [8, 3, *[1] * (len(repository.tags) - 3), 1.5])[0]
        index = digest(repository.name, tag or "latest", self.build if tag else "2024-06-01")
        error = rng.choice(ERRORS) if rng.random() < self.spec.error_share else None
        if error is not None and error[1] != "BLOB_UNKNOWN":
            method = "HEAD" if error[0] in (401, 429) else "GET"
            tag = "nightly" if error[1] == "MANIFEST_UNKNOWN" else tag
            return [self.pull("manifest", method, index, tag, error=error, denied=error[0] == 403)]
        kind = rng.choices(("pull", "check", "resolve"), (55, 30, 15))[0]
        events = [self.pull("manifest", "HEAD", index, tag)] if tag else []
        if kind == "check" and tag:
            return events
        events.append(self.pull("manifest", "GET", index, tag))
        if kind == "resolve":
            return events
        manifest = digest(index, self.platform)
        events.append(self.pull("manifest", "GET", manifest, ""))
        blobs = [digest(manifest, "config")] + [
            digest(repository.name, self.platform, str(layer)) for layer in range(repository.layers - 1)
        ]
        fetched = [blob for number, blob in enumerate(blobs) if number == 0 or rng.random() < 0.6]  # cached
        for number, blob in enumerate(fetched):
            missing = error is not None and number == len(fetched) - 1
            events.append(self.pull("blob", "GET", blob, "", error=error if missing else None))
        return events

    def pull(
        self, kind: str, method: str, fetched: str, tag: str, error: OciError | None = None, denied: bool = False
    ) -> Event:
        body: dict[str, Any] = {"repository": self.repository.name, "repo_id": self.repository.repo_id}
        if tag:
            body["tag"] = tag
        body |= {"digest": fetched, "method": method, "type": kind, "when": self.tick()}
        body |= {"location": self.actor.location, "remote_address": self.address, "user_agent": self.client}
        if error is not None:
            body["error"] = {"status": error[0], "code": error[1], "message": error[2]}
        if self.actor.policies and kind == "manifest" and method == "GET":
            body["policy_results"] = [
                {
                    "policy_id": f"{self.world.group}/policy/{policy_id}",
                    "policy_name": name,
                    "mode": "POLICY_MODE_ENFORCED" if number == 0 else "POLICY_MODE_DRY_RUN",
                    "result": "RESULT_DENIED" if denied and number == 0 else "RESULT_ALLOWED",
                }
                for number, (policy_id, name) in enumerate(POLICIES)
            ]
        return self.event(PULL, "cgr.dev", self.repository.repo_id, body)

    def other(self) -> Event:
        repository, rng = self.repository, self.rng
        tag = rng.choice([t for t in repository.tags if t])
        new, previous = digest(repository.name, tag, self.build, "push"), digest(repository.name, tag, "previous")
        event_type = rng.choices((PUSH, *API_TYPES), (4, 3, 1, 1))[0]
        if event_type == PUSH:
            body = {"repository": repository.name, "repo_id": repository.repo_id, "tag": tag, "digest": new}
            body |= {"type": "manifest", "when": self.tick(), "location": self.actor.location}
            body |= {"remote_address": self.address, "user_agent": self.client}
            body |= {"display_name": repository.name.rsplit("/", 1)[1], "tag_previous_digest": previous}
            return self.event(PUSH, "cgr.dev", repository.repo_id, body)
        if "repo" in event_type:
            body = {"id": repository.repo_id, "name": repository.name.rsplit("/", 1)[1]}
            return self.event(event_type, API_SOURCE, repository.repo_id, body)
        tag_id = uidp(repository.repo_id, "tag", tag)
        body = {"id": tag_id, "name": tag, "digest": new, "last_updated": self.tick() + "Z"}
        return self.event(event_type, API_SOURCE, tag_id, body)

    def event(self, event_type: str, source: str, subject: str, body: dict[str, Any]) -> Event:
        data = {"actor": {"subject": self.actor.subject, "act": dict(self.actor.act)}, "body": body}
        attributes = {
            "specversion": "1.0",
            "id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "source": source,
            "type": event_type,
            "subject": subject,
            "time": self.published(),
            "group": self.world.group,
            "audience": "customer",
            "actor": PUBLISHER,
            "datacontenttype": "application/json",
        }
        return Event(attributes, data)

    def tick(self) -> str:
        """The next request's time (``body.when``: civil UTC, 6 fraction digits, none when zero)."""
        self.moment += timedelta(milliseconds=self.rng.uniform(3, 250))
        moment = min(self.moment, self.spec.until) if self.spec.days else self.moment
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f" if moment.microsecond else "%Y-%m-%dT%H:%M:%S")

    def published(self) -> str:
        """``Ce-Time``: when the event was published, a little after the request, in either precision seen."""
        moment = self.moment + timedelta(milliseconds=self.rng.uniform(5, 900))
        if self.rng.random() < 0.3:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{self.rng.randrange(1000):03d}Z"
