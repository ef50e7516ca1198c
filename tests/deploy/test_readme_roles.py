"""The README's "GCS and BigQuery roles each part needs" table says exactly what deploy/ binds, per identity."""

from __future__ import annotations

import re

import pytest

from tests.deploy.iam_bindings import bindings, custom_roles
from tests.deploy.terraform_config import ROOT, TerraformConfig, load

SECTION = "## GCS and BigQuery roles each part needs"


@pytest.fixture(scope="module")
def config() -> TerraformConfig:
    return load()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def readme_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first table under SECTION, by column header."""
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header, rows = _cells(lines[0]), lines[2:]
    return [dict(zip(header, _cells(row), strict=True)) for row in rows]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _identity(cell: str) -> str:
    name = _code(cell)[0]
    return name.removeprefix("google_service_account.").removeprefix("var.")


def documented(rows: list[dict[str, str]]) -> tuple[set[tuple[str, str, str]], set[str]]:
    """(identity, role, scope) of every row naming a role, and the identities of the rows saying none."""
    granted, none = set(), set()
    for row in rows:
        identity = _identity(row["runs as (`deploy/`)"])
        if row["role"] == "none":
            none.add(identity)
        else:
            granted.add((identity, _code(row["role"])[0], row["on"]))
    return granted, none


def test_the_table_lists_exactly_the_bindings_of_deploy(config: TerraformConfig) -> None:
    granted, _ = documented(readme_rows((ROOT / "README.md").read_text()))
    assert granted == {(b.member, b.role, b.scope) for b in bindings(config)}


def test_every_service_account_is_in_the_table_and_none_means_no_binding(config: TerraformConfig) -> None:
    granted, none = documented(readme_rows((ROOT / "README.md").read_text()))
    accounts = {name for _, name in config.resources("google_service_account")}
    assert {identity for identity, _, _ in granted} | none >= accounts
    assert none & {b.member for b in bindings(config)} == set()


def test_custom_roles_are_shown_with_their_exact_permissions(config: TerraformConfig) -> None:
    rows = readme_rows((ROOT / "README.md").read_text())
    for role in custom_roles(config).values():
        cells = [row["role"] for row in rows if _code(row["role"])[:1] == [role["role_id"]]]
        assert cells, f"{role['role_id']} is not in the table"
        assert all(set(_code(cell)[1:]) == set(role["permissions"]) for cell in cells)
