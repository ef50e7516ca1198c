"""Every variable of deploy/ is documented, declared where used, and used where declared."""

from __future__ import annotations

import pytest

from tests.deploy.terraform_config import TerraformConfig, load


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


def test_every_variable_has_a_type_and_a_description(config: TerraformConfig) -> None:
    undocumented = [name for name, body in config.variables().items() if not str(body.get("description", "")).strip()]
    untyped = [name for name, body in config.variables().items() if "type" not in body]
    assert undocumented == [] and untyped == []


def test_every_referenced_variable_is_declared(config: TerraformConfig) -> None:
    assert config.referenced_variables() - set(config.variables()) == set()


def test_every_declared_variable_is_used_outside_its_own_block(config: TerraformConfig) -> None:
    assert set(config.variables()) - config.referenced_variables() == set()


def test_every_output_is_documented(config: TerraformConfig) -> None:
    assert [name for name, body in config.outputs().items() if not str(body.get("description", "")).strip()] == []
