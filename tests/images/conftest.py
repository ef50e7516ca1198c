from __future__ import annotations

from pathlib import Path

import pytest

from tests.images.environments import group_environment


@pytest.fixture(scope="session")
def receiver_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of an environment holding only the receiver group, as the receiver image does."""
    return group_environment("receiver", tmp_path_factory.mktemp("receiver-group") / "venv")


@pytest.fixture(scope="session")
def pipeline_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of an environment holding only the pipeline group, as the code-location image does."""
    return group_environment("pipeline", tmp_path_factory.mktemp("pipeline-group") / "venv")
