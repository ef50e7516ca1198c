from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.environments import group_environment


def _environment(group: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp(f"{group}-group") / "venv"
    yield group_environment(group, directory)
    # Where uv cannot hardlink from its cache the environment is a full copy (the pipeline's: hundreds of MB),
    # and pytest keeps its last temporary folders.
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def receiver_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of an environment holding only the receiver group, as the receiver image does."""
    yield from _environment("receiver", tmp_path_factory)


@pytest.fixture(scope="session")
def pipeline_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of an environment holding only the pipeline group, as the code-location image does."""
    yield from _environment("pipeline", tmp_path_factory)
