"""Every shell command of README.md and docs/*.md is covered: run as written by a named test (with only ports and
directories moved), or listed below with why it cannot run here and checked for form. A command added to the docs
without an entry here, or an entry whose command left the docs, fails the inventory test."""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack.oidc import DEFAULT_GROUP, OidcIssuer
from pull_events.landing import LocalLandingStore
from tests.devstack.documented import ShellCommand, commands_in, documented, documented_commands
from tests.receiver.deliveries import landed_records
from tests.receiver.server import ROOT
from tests.services import as_from_a_terminal, free_port


@dataclass(frozen=True)
class Ran:
    """Run exactly as written by the test ``by`` (``module::function`` under tests/devstack/)."""

    by: str


@dataclass(frozen=True)
class NotRunHere:
    """Cannot run here, for the reason ``why``; ``checked_by`` checks its form."""

    why: str
    checked_by: str


STACK = "test_documented_stack_commands.py::test_the_documented_stack_commands_work_on_a_fresh_copy"
RECEIVER = "test_every_documented_command.py::test_the_documented_receiver_commands_serve_and_count_deliveries"
FLASK = "test_every_documented_command.py::test_the_documented_flask_command_serves_the_receiver"
QUERIES = "test_documented_commands.py::test_each_documented_query_runs_against_the_warehouse"
CHAINCTL = "test_every_documented_command.py::test_the_chainctl_commands_use_only_documented_forms"
FORM = "test_every_documented_command.py::test_the_commands_not_run_here_are_well_formed"
NO_CHAINCTL = "needs chainctl and a Chainguard account: neither exists here"

RECEIVER_URL = 'export RECEIVER_URL="https://pull-events-receiver-abc123-uc.a.run.app/"'
METRICS = (
    "curl -s \"${RECEIVER_URL%/}/metrics\" | grep -E '^pull_events_receiver_(accepted_events|rejected_requests)_total'"
)
GROUP_SIZES = (
    "for group in receiver pipeline webserver dev; do UV_PROJECT_ENVIRONMENT=/tmp/env-$group UV_LINK_MODE=copy "
    "UV_COMPILE_BYTECODE=1 \\ uv sync --quiet --locked --no-default-groups --group $group "
    'echo "$group $(du -sh /tmp/env-$group | cut -f1) $(ls -d /tmp/env-$group/lib/python3.*/site-packages/*.dist-info '
    '| wc -l)" done'
)

# Keys: the command with its whitespace runs collapsed (ShellCommand.key).
COVERAGE: dict[str, Ran | NotRunHere] = {
    "scripts/stack": Ran(STACK),
    "scripts/test": NotRunHere("runs the whole suite, this test among it: CI runs it on a clean clone (.ci/run)", FORM),
    "scripts/send-sample-event": Ran(STACK),
    "scripts/send-sample-event 20": Ran(STACK),
    "scripts/generate-events --events 10000 --days 7": Ran(STACK),
    "scripts/generate-events --events 3600 --days 0 --rate 2": NotRunHere(
        "sends for 30 minutes by design; test_generate_events.py::test_a_rate_spaces_the_deliveries pins --rate "
        "with --days 0",
        FORM,
    ),
    "scripts/generate-events --events 500 --seed 42 --until 2026-03-10T00:00:00Z": Ran(STACK),
    "uv run gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'": Ran(RECEIVER),
    "uv run flask --app receiver run": Ran(FLASK),
    GROUP_SIZES: NotRunHere(
        "a measurement: installs four environments (about 1 GB) into fixed /tmp paths; tests/images/ installs the "
        "receiver and pipeline groups the same way, into temporary directories",
        FORM,
    ),
    "chainctl auth login": NotRunHere(NO_CHAINCTL, CHAINCTL),
    "chainctl iam organizations list -o table": NotRunHere(NO_CHAINCTL, CHAINCTL),
    'export ORG_ID="paste the ID column here"': NotRunHere("a value the reader pastes", FORM),
    RECEIVER_URL: NotRunHere("an example address of a deployed receiver", FORM),
    'chainctl events subscriptions create "$RECEIVER_URL" --parent "$ORG_ID" --yes': NotRunHere(NO_CHAINCTL, CHAINCTL),
    'chainctl events subscriptions list --parent "$ORG_ID" -o table': NotRunHere(NO_CHAINCTL, CHAINCTL),
    METRICS: Ran(RECEIVER),
    'chainctl events subscriptions delete "$SUBSCRIPTION_ID" --yes': NotRunHere(NO_CHAINCTL, CHAINCTL),
    'DAGSTER_HOME="$PWD/.data/dagster" uv run dagster job launch -j rebuild_from_landing -w workspace.yaml': Ran(STACK),
    'scripts/query " SELECT day, sum(image_pulls) AS image_pulls FROM cloudevents_pull_event_recorder.daily_pulls '
    'GROUP BY day ORDER BY day DESC LIMIT 14"': Ran(QUERIES),
    "scripts/query \"EXPORT DATABASE 'snapshot' (FORMAT parquet)\"": Ran(QUERIES),
}

# chainctl's forms, from its reference (https://edu.chainguard.dev/chainguard/chainctl/chainctl-docs/, the pages of
# these commands): positional arguments and flags. The subscription's own form is also the spec's
# (`chainctl events subscriptions create --parent <org or folder> <url>`, /work/shared/spec/chainguard-webhook.md).
GLOBAL_FLAGS = {"-o", "--output", "-y", "--yes"}
CHAINCTL_FORMS: dict[tuple[str, ...], tuple[int, set[str]]] = {
    ("auth", "login"): (0, set()),
    ("iam", "organizations", "list"): (0, {"-o", "--output"}),
    ("events", "subscriptions", "create"): (1, {"--parent", "--yes", "-y", "-o", "--output"}),
    ("events", "subscriptions", "list"): (0, {"--parent", "-o", "--output"}),
    ("events", "subscriptions", "delete"): (1, {"--yes", "-y", "-o", "--output"}),
}
FLAGS_WITH_VALUES = {"--parent", "-o", "--output"}


def test_every_documented_command_is_in_the_coverage_table() -> None:
    documented_keys = [command.key for command in documented_commands()]
    uncovered = [key for key in documented_keys if key not in COVERAGE]
    gone = [key for key in COVERAGE if key not in documented_keys]
    assert (uncovered, gone) == ([], []), "add each new command to COVERAGE (run it, or say why not); drop gone ones"
    assert len(documented_keys) == len(set(documented_keys)) == 21


def _test_function(module: str, name: str) -> tuple[ast.Module, ast.FunctionDef | None]:
    tree = ast.parse((ROOT / "tests/devstack" / module).read_text())
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    return tree, (found[0] if found else None)


def _strings_used(tree: ast.Module, function: ast.FunctionDef) -> set[str]:
    """The string literals in ``function`` and in the module's functions it calls, and the module-level string
    constants they name."""
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    used: set[str] = set()
    pending, seen = [function], {function.name}
    while pending:
        for node in ast.walk(pending.pop()):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)
            elif isinstance(node, ast.Name) and node.id in constants:
                used.add(constants[node.id])
            elif isinstance(node, ast.Name) and node.id == "documented_queries":
                used.add("documented_queries")
            elif isinstance(node, ast.Name) and node.id in functions and node.id not in seen:
                seen.add(node.id)
                pending.append(functions[node.id])
    return used


def test_each_entry_names_a_test_that_exists_and_runs_the_docs_text() -> None:
    for key, coverage in COVERAGE.items():
        module, name = (coverage.by if isinstance(coverage, Ran) else coverage.checked_by).split("::")
        tree, function = _test_function(module, name)
        assert function is not None, f"{key}: no test {module}::{name}"
        if isinstance(coverage, Ran):
            # It looks the command up in the docs by its key (or takes every scripts/query command of the docs).
            used = _strings_used(tree, function)
            assert key in used or (key.startswith("scripts/query ") and "documented_queries" in used), (
                f"{module}::{name} does not run {key}"
            )


def _commands_checked_by(test: str) -> list[ShellCommand]:
    return [
        command
        for command in documented_commands()
        if isinstance(coverage := COVERAGE.get(command.key), NotRunHere) and coverage.checked_by.endswith(test)
    ]


def test_the_commands_not_run_here_are_well_formed() -> None:
    for command in [*_commands_checked_by(FORM.split("::")[1]), *_commands_checked_by(CHAINCTL.split("::")[1])]:
        syntax = subprocess.run(["bash", "-n", "-c", command.text], capture_output=True, text=True, timeout=30)
        assert (syntax.returncode, syntax.stderr) == (0, ""), command

    # scripts/test is what CI runs, and the generator takes every option of the 30-minute command.
    assert (ROOT / ".ci/run").read_text().splitlines()[-1] == "exec scripts/test"
    assert subprocess.run(["bash", "-n", ROOT / "scripts/test"], timeout=30).returncode == 0
    usage = subprocess.run([ROOT / "scripts/generate-events", "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0
    for option in ("--events", "--days", "--rate"):
        assert re.search(rf"^\s+{option} ", usage.stdout, re.MULTILINE), option

    # The size measurement installs groups the project has.
    [groups] = re.findall(r"^for group in ([\w ]+); do", documented(GROUP_SIZES).text)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert set(groups.split()) <= set(declared) and len(groups.split()) == 4

    # The example receiver address is the receiver's root, where it takes POST /.
    [url] = shlex.split(documented(RECEIVER_URL).text.removeprefix("export RECEIVER_URL="))
    assert (urlsplit(url).scheme, urlsplit(url).path) == ("https", "/")
    assert '@bp.post("/")' in (ROOT / "receiver/views.py").read_text()


def test_the_chainctl_commands_use_only_documented_forms() -> None:
    commands = _commands_checked_by(CHAINCTL.split("::")[1])
    assert len(commands) == 5
    for command in commands:
        words = shlex.split(command.text)
        assert words[0] == "chainctl", command
        path = next(form for form in CHAINCTL_FORMS if tuple(words[1 : 1 + len(form)]) == form)
        positionals, flags = CHAINCTL_FORMS[path]
        rest = words[1 + len(path) :]
        given: list[str] = []
        arguments: list[str] = []
        while rest:
            word = rest.pop(0)
            if word.startswith("-"):
                assert word in flags, f"{command.text}: {word} is not a flag of chainctl {' '.join(path)}"
                given.append(word)
                if word in FLAGS_WITH_VALUES:
                    assert rest and not rest[0].startswith("-"), f"{command.text}: {word} needs a value"
                    rest.pop(0)
            else:
                arguments.append(word)
        assert len(arguments) == positionals, command.text
        if path == ("events", "subscriptions", "create"):
            # The spec's form: the sink URL and the parent the tokens will name; --yes so it runs unattended.
            assert (arguments, "--parent" in given, "--yes" in given) == (["$RECEIVER_URL"], True, True)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@contextmanager
def running(command: ShellCommand, env: dict[str, str], ready_url: str, log: Path, stop: int) -> Iterator[None]:
    """Run ``command`` as written (bash, in the project directory) until ``ready_url`` answers 200; then ``stop``."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", command.text], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=as_from_a_terminal,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _get(ready_url) != 200:
            assert process.poll() is None, f"{command.text} exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{command.text} never got ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield
    finally:
        os.killpg(process.pid, stop)
        process.wait(60)


def receiver_env(tmp_path: Path, issuer: OidcIssuer, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "PULL_EVENTS_LANDING": str(tmp_path / "landing"), "PULL_EVENTS_HOST": "127.0.0.1",
        "PULL_EVENTS_AUTH": "chainguard", "CHAINGUARD_ISSUER": issuer.url, "CHAINGUARD_GROUP": DEFAULT_GROUP, **extra,
    }  # fmt: skip


def send_sample(url: str, issuer_state: Path) -> list[str]:
    command = [ROOT / "scripts/send-sample-event", "1", url, "--issuer-state", str(issuer_state)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines()]


def test_the_documented_receiver_commands_serve_and_count_deliveries(
    tmp_path: Path, dev_issuer: OidcIssuer, issuer_state: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = receiver_env(tmp_path, dev_issuer, PORT=str(port))
    gunicorn = documented("uv run gunicorn -c python:receiver.gunicorn_conf 'receiver:create_app()'")
    with running(gunicorn, env, url + "readyz", tmp_path / "gunicorn.log", signal.SIGTERM):
        assert send_sample(url, issuer_state) == ["202"]
        unsigned = subprocess.run(
            [ROOT / "scripts/send-sample-event", "1", url, "--unsigned"], capture_output=True, text=True, timeout=120
        )
        assert unsigned.stdout.split()[0] == "401"
        counted = subprocess.run(
            ["bash", "-c", documented(METRICS).text], env={**os.environ, "RECEIVER_URL": url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert counted.returncode == 0
    assert sorted(counted.stdout.splitlines()) == [
        'pull_events_receiver_accepted_events_total{type="dev.chainguard.registry.pull.v1"} 1.0',
        'pull_events_receiver_rejected_requests_total{reason="missing_token",status="401"} 1.0',
    ]
    assert "Listening at: http://127.0.0.1:" in (tmp_path / "gunicorn.log").read_text()
    assert len(landed_records(LocalLandingStore(tmp_path / "landing"))) == 1


def test_the_documented_flask_command_serves_the_receiver(
    tmp_path: Path, dev_issuer: OidcIssuer, issuer_state: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = receiver_env(tmp_path, dev_issuer, FLASK_RUN_PORT=str(port))
    flask = documented("uv run flask --app receiver run")
    with running(flask, env, url + "readyz", tmp_path / "flask.log", signal.SIGINT):
        assert send_sample(url, issuer_state) == ["202"]
    records = landed_records(LocalLandingStore(tmp_path / "landing"))
    assert [record["type"] for record in records] == ["dev.chainguard.registry.pull.v1"]


def test_commands_are_split_as_the_shell_reads_them() -> None:
    block = (
        'scripts/query "\n  SELECT 1 # inside quotes: not a comment\n  FROM t"   # a comment\n'
        "echo a \\\n  b\n# a comment line\n\nchainctl x '#y' z#w  # c\n"
    )
    commands = commands_in(block, console=False, document="d.md", first_line=10)
    assert [(command.line, command.text) for command in commands] == [
        (10, 'scripts/query "\n  SELECT 1 # inside quotes: not a comment\n  FROM t"'),
        (13, "echo a \\\n  b"),
        (17, "chainctl x '#y' z#w"),
    ]
    assert commands[0].key == 'scripts/query " SELECT 1 # inside quotes: not a comment FROM t"'


def test_a_console_block_gives_the_lines_after_its_prompts() -> None:
    block = "$ scripts/query 'SELECT 1'\n┌───┐\n│ 1 │\n$ echo done  # and a comment\ndone\n"
    assert [command.text for command in commands_in(block, console=True, document="d.md", first_line=1)] == [
        "scripts/query 'SELECT 1'",
        "echo done",
    ]


def test_a_command_left_open_fails_the_inventory() -> None:
    with pytest.raises(AssertionError, match=r"d\.md:3: a command is never closed"):
        commands_in('echo ok\n\nscripts/query "SELECT\n', console=False, document="d.md", first_line=1)


def test_the_readme_names_the_uv_installer_the_scripts_run() -> None:
    # Inline in the Prerequisites (it cannot run here: no internet), so its version is checked against _uv.sh's.
    [pinned] = re.findall(r"^UV_VERSION=(\S+)$", (ROOT / "scripts/_uv.sh").read_text(), re.MULTILINE)
    readme = (ROOT / "README.md").read_text()
    [named] = re.findall(r"`curl -LsSf https://astral\.sh/uv/(\S+)/install\.sh \| sh`", readme)
    assert named == pinned
    assert "https://astral.sh/uv/$UV_VERSION/install.sh" in (ROOT / "scripts/_uv.sh").read_text()
