"""A real browser looks at the UI: headless Chromium against ``dagster-webserver`` on loopback.

The instance (a temp ``DAGSTER_HOME``) and the DuckDB warehouse are filled in process first, the way the sensors'
runs fill them (``tests/pipeline/test_pipeline_end_to_end.py``'s helpers); then the webserver serves them, with no
daemon, so nothing changes while the browser looks. Screenshots go to ``.artifacts/ui/`` (``PULL_EVENTS_ARTIFACTS``
moves it) for a person, or CI, to look at.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from pull_events.landing import LocalLandingStore
from pull_events_dagster.defs import build_definitions
from pull_events_dagster.warehouse import base
from tests.pipeline.conftest import pipeline_settings
from tests.pipeline.factories import PULL_TYPE, pull_event, write_object
from tests.pipeline.test_duckdb_warehouse import facts
from tests.pipeline.test_pipeline_end_to_end import derive, launch, sensor_tick
from tests.services import as_from_a_terminal, stop_process
from tests.ui.browser import Page, chromium, chromium_path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PULL_EVENTS_ARTIFACTS", ROOT / ".artifacts")) / "ui"
# The code location's first load imports Dagster and the project: on two busy cores, tens of seconds.
SERVER_TIMEOUT_S = 240.0
SETUP = ROOT / "scripts" / "setup-browser"


@pytest.fixture(scope="module")
def browser_installed() -> str:
    """Chromium, installed by ``scripts/setup-browser`` when missing; the test is skipped only if it cannot be."""
    if chromium_path() is None:
        setup = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900)
        if chromium_path() is None:
            pytest.skip(f"chromium is not installed and scripts/setup-browser could not install it: {setup.stderr}")
    path = chromium_path()
    assert path is not None
    return path


@dataclass(frozen=True)
class Shown:
    """What the pages must show: the data the instance and warehouse were filled with."""

    url: str
    day: str  # the day partition materialized
    top_repository: str
    image_pulls: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fill(home: Path, landing: Path, warehouse: Path) -> tuple[str, int]:
    """Load pulls of yesterday and derive the tables into the instance at ``home``: the day and its image pulls."""
    settings = pipeline_settings(str(landing), str(warehouse))
    defs = build_definitions(settings)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None, hour=9, minute=0, second=0, microsecond=0)
    pulls = [
        *(facts(f"nginx-{n}", when=yesterday + timedelta(minutes=n), repository="acme.dev/nginx") for n in range(7)),
        *(facts(f"redis-{n}", when=yesterday + timedelta(minutes=n), repository="acme.dev/redis") for n in range(3)),
        facts("redis-404", when=yesterday, repository="acme.dev/redis", error_status=404),
    ]
    write_object(LocalLandingStore(landing), PULL_TYPE, [pull_event(p) for p in pulls], datetime.now(UTC))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        requests, _ = sensor_tick(defs, instance, None)
        assert all(run.success for run in launch(defs, instance, requests))
        _, runs, _ = derive(defs, instance, None)
        assert len(runs) == 1
    return yesterday.date().isoformat(), 10


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shown]:
    """``dagster-webserver`` on a loopback port, serving an instance with loaded pulls and derived tables."""
    work = tmp_path_factory.mktemp("ui")
    home, landing, warehouse = work / "dagster_home", work / "landing", work / "warehouse" / "warehouse.duckdb"
    for directory in (home, landing, warehouse.parent):
        directory.mkdir(parents=True)
    day, image_pulls = _fill(home, landing, warehouse)
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PULL_EVENTS_LANDING": str(landing),
        "PULL_EVENTS_WAREHOUSE": str(warehouse),
    }
    log = (work / "webserver.log").open("wb")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(ROOT / "workspace.yaml"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=as_from_a_terminal,  # Dagster handles SIGTERM as SIGINT: neither may be inherited ignored
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, server, work / "webserver.log")
        yield Shown(url=url, day=day, top_repository="acme.dev/nginx", image_pulls=image_pulls)
    finally:
        stop_process(server)
        log.close()


def _wait_for_server(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(
        f"dagster-webserver did not answer within {SERVER_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def page(browser_installed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """One browser for the module: a dialog dismissed once stays dismissed (its profile remembers)."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as page:
        yield page


COMMUNITY_DIALOG = "Join the Dagster community"


def show(page: Page, url: str, expected: list[str]) -> str:
    """Open ``url`` and wait until it shows ``expected``; Dagster's newsletter dialog, if it opens, is skipped so that
    the screenshots show the page."""
    page.goto(url)
    text = page.wait_for_text(expected)
    if COMMUNITY_DIALOG in text:
        assert page.click_text("Skip"), "the community dialog has no Skip button"
        deadline = time.monotonic() + 30
        while COMMUNITY_DIALOG in page.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = page.wait_for_text(expected)
    return text


def test_the_lineage_shows_every_table_from_the_pull_table_to_the_summary(webserver: Shown, page: Page) -> None:
    tables = [base.PULLS, base.EVENTS, base.REJECTED, base.QUARANTINED, base.DAILY_PULLS, base.REPOSITORY_SUMMARY]
    # The graph's nodes show each asset's latest event and its materialization: the lineage was drawn, not only
    # the list of names beside it.
    text = show(
        page, f"{webserver.url}/asset-groups", ["Global asset lineage", *tables, "Latest event", "Materialized"]
    )
    page.screenshot(ARTIFACTS / "lineage.png")
    assert text.count("Latest event") == len(tables)


def test_the_daily_pulls_page_shows_the_days_preview_and_figures(webserver: Shown, page: Page) -> None:
    day = webserver.day
    expected = [
        "daily_pulls",
        "Latest materialization",
        f"Top repositories, {day}",
        # The Markdown table rendered as a table: its cells are tab-separated in the page's text.
        "acme.dev/nginx\t7\t7\t0\t0.00 %",
        "acme.dev/redis\t3\t4\t1\t25.00 %",
        f"{day}\t10\t11\t1\t9.09 %\t2",
        "image_pulls",
        "error_rate_pct",
    ]
    show(page, f"{webserver.url}/assets/{base.DATASET}/{base.DAILY_PULLS}", expected)
    # The numeric metadata: the metadata table's row of each key ends with its value (the columns table, above it,
    # has rows named image_pulls and errors too, ending with their descriptions).
    for key, value in (("image_pulls", "10"), ("errors", "1"), ("error_rate_pct", "9.09")):
        cells = page.evaluate(
            "[...document.querySelectorAll('tr')]"
            f".filter(tr => tr.cells.length > 1 && tr.cells[0].innerText.trim() === {json.dumps(key)})"
            ".map(tr => tr.cells[tr.cells.length - 1].innerText.trim())"
        )
        assert cells[-1] == value, (key, cells)
    page.screenshot(ARTIFACTS / "daily_pulls.png")
    # The preview itself in view for the second picture (the page scrolls inside its own pane).
    assert page.evaluate(
        "(() => { const el = [...document.querySelectorAll('h3')]"
        ".find(h => h.innerText.startsWith('Top repositories'));"
        " if (!el) return false; el.scrollIntoView({block: 'center'}); return true; })()"
    )
    page.screenshot(ARTIFACTS / "daily_pulls_preview.png")
