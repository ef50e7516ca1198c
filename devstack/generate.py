"""``scripts/generate-events``: send realistic, signed deliveries to a receiver, or re-send landed ones.

Generate (``devstack.traffic``): ``--events N`` deliveries dated over the last ``--days D`` (0: dated as they are
sent), ``--rate R`` per second (0: as fast as ``--connections`` keep-alive connections allow), from ``--seed S``
(the same seed and ``--until`` give the same events). Replay (``devstack.replay``): ``--replay-from DAY
--replay-to DAY`` re-sends every line landed on those days (from ``--landing``), each with a new token.

Each delivery is signed by the local stack's development issuer (``--unsigned``: no token). A progress bar shows
on a terminal; the run ends with one JSON line on stdout: ``sent``, ``accepted``, ``refused`` (answered, not 2xx),
``failed`` (no answer), ``distinct_accepted`` (event ids), ``redeliveries``, ``statuses``, ``p50_ms`` and
``p95_ms`` (from sending a request to reading its whole answer), and the seed or the replay's counts. Exit
status 1 if any delivery was not accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from devstack.issuer import DevIssuerMissing, default_state_dir, serving_signer
from devstack.oidc import Signer
from devstack.progress import Progress
from devstack.replay import ReplayCounts, landed_events, landed_keys
from devstack.sample import default_url
from devstack.sender import send_all
from devstack.traffic import Planned, TrafficSpec, plan
from pull_events.landing import open_landing_store
from pull_events.settings import DEFAULT_LANDING, SettingsError, parse_landing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/generate-events",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=_at_least(1), default=1000, help="deliveries to send, redeliveries included")
    parser.add_argument("--days", type=_non_negative, default=1.0, help="spread over the last D days (0: now)")
    parser.add_argument("--rate", type=_non_negative, default=0.0, help="deliveries per second (0: no limit)")
    parser.add_argument("--url", default=default_url(), help="the receiver")
    parser.add_argument("--seed", type=int, default=None, help="(default: a random one, printed at the end)")
    parser.add_argument("--until", type=_instant, default=None, help="the end of the --days window (default: now)")
    parser.add_argument("--connections", type=_at_least(1), default=16, help="keep-alive connections in the pool")
    parser.add_argument("--unsigned", action="store_true", help="send no token (a receiver with auth off)")
    parser.add_argument("--issuer-state", type=Path, default=default_state_dir(), help="the development issuer's")
    replay = parser.add_argument_group("replay landed events")
    replay.add_argument("--replay-from", type=date.fromisoformat, metavar="DAY", help="first landing day (UTC)")
    replay.add_argument("--replay-to", type=date.fromisoformat, metavar="DAY", help="last landing day (UTC)")
    replay.add_argument(
        "--landing", default=os.environ.get("PULL_EVENTS_LANDING") or str(DEFAULT_LANDING), help="directory or gs://"
    )
    args = parser.parse_args(argv)
    if (args.replay_from is None) != (args.replay_to is None):
        parser.error("--replay-from and --replay-to go together")
    if args.replay_from is not None and args.replay_to < args.replay_from:
        parser.error("--replay-to is before --replay-from")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        signer, group = serving_signer(args.issuer_state, unsigned=args.unsigned)
    except DevIssuerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    report: dict[str, Any]
    if args.replay_from is not None:
        try:
            store = open_landing_store(parse_landing(args.landing))
        except SettingsError as exc:
            print(f"--landing: {exc}", file=sys.stderr)
            return 2
        counts = ReplayCounts()
        keys = landed_keys(store, args.replay_from, args.replay_to)
        report = _send(args, landed_events(store, keys, counts), signer, total=None, description="replay")
        report |= {"objects": counts.objects, "lines": counts.lines, "skipped": counts.skipped}
    else:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        until = args.until or datetime.now(UTC)
        spec = TrafficSpec(events=args.events, days=args.days, seed=seed, until=until, group=group)
        report = _send(args, plan(spec), signer, total=args.events, description="events")
        report |= {"seed": seed, "until": until.isoformat().replace("+00:00", "Z"), "days": args.days}
    print(json.dumps(report), flush=True)
    return 0 if report["accepted"] == report["sent"] else 1


def _send(
    args: argparse.Namespace, deliveries: Iterator[Planned], signer: Signer | None, total: int | None, description: str
) -> dict[str, Any]:
    progress = Progress(total, description)
    try:
        results, elapsed = send_all(
            args.url, deliveries, signer, rate=args.rate, connections=args.connections, on_answer=progress.update
        )
    finally:
        progress.close()
    return results.summary(elapsed)


def _at_least(minimum: int) -> Any:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _instant(raw: str) -> datetime:
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


if __name__ == "__main__":
    sys.exit(main())
