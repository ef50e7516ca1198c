"""What the receiver's own code reads from the environment, and its defaults, found by running that code.

``pull_events/settings.py`` and ``receiver/gunicorn_conf.py`` are executed against a recording environment: the
names they look up are the variables a deployment may set, and the values they compute with nothing set are the
defaults a deployment must agree with.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

from pull_events.settings import Settings, load_settings
from tests.deploy.terraform_config import ROOT

# A group is required while auth is on (the default); any well-formed one does.
_GROUP = "45a0c61ea6fd977f050c5fb9ac06a69eed764595"


class RecordingEnv(dict[str, str]):
    """An environment that remembers every name the project's own code looks up in it (libraries it imports on
    the way, e.g. prometheus_client, read variables of their own: those are not the receiver's settings)."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def _record(self, key: object) -> None:
        caller = Path(sys._getframe(2).f_code.co_filename)  # "<frozen os>" for os.getenv: not a project file
        if caller.is_absolute() and caller.is_relative_to(ROOT) and not caller.is_relative_to(ROOT / ".venv"):
            self.read.add(str(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._record(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self._record(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._record(key)
        return super().__contains__(key)


@dataclass(frozen=True)
class ReceiverDefaults:
    read: frozenset[str]  # every variable the receiver's configuration looks up
    gunicorn: ModuleType  # receiver/gunicorn_conf.py as evaluated with nothing set (workers, threads, ...)
    settings: Settings


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[RecordingEnv]:
    env = RecordingEnv(values)
    with mock.patch.object(os, "environ", env):
        yield env


def receiver_defaults() -> ReceiverDefaults:
    """Evaluate gunicorn_conf.py (which loads the settings) in a fresh module, without touching the real one."""
    spec = importlib.util.spec_from_file_location("_gunicorn_conf_probe", ROOT / "receiver" / "gunicorn_conf.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    with _environment({"CHAINGUARD_GROUP": _GROUP}) as env:
        spec.loader.exec_module(module)
    return ReceiverDefaults(frozenset(env.read), module, module._settings)


def pipeline_reads() -> frozenset[str]:
    """Every variable the pipeline's settings look up."""
    env = RecordingEnv({})
    load_settings(env, receiver=False)
    return frozenset(env.read)
