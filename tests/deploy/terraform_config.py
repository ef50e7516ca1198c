"""The Terraform configuration in ``deploy/``, parsed with python-hcl2 (providers cannot be fetched here, so
``terraform validate`` cannot run: the tests check the parsed HCL instead)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Plain values: strings without their quotes, blocks as lists of dicts, no comments.
_OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
_VAR_REFERENCE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
_RESOURCE_REFERENCE = re.compile(r"^\$\{([a-z0-9_]+)\.([A-Za-z0-9_-]+)\.[a-z_]+\}$")


@dataclass(frozen=True)
class TerraformConfig:
    """Every top-level block of every ``*.tf`` file of one directory, merged."""

    files: dict[str, dict[str, Any]]

    def _blocks(self, kind: str) -> list[dict[str, Any]]:
        return [block for parsed in self.files.values() for block in parsed.get(kind, [])]

    def variables(self) -> dict[str, dict[str, Any]]:
        return {name: body for block in self._blocks("variable") for name, body in block.items()}

    def outputs(self) -> dict[str, dict[str, Any]]:
        return {name: body for block in self._blocks("output") for name, body in block.items()}

    def resources(self, kind: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(type, name): body}``, of one resource type when ``kind`` is given."""
        found = {}
        for block in self._blocks("resource"):
            for resource_type, named in block.items():
                if kind is None or resource_type == kind:
                    found.update({(resource_type, name): body for name, body in named.items()})
        return found

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources(kind)[(kind, name)]

    def referenced_variables(self) -> set[str]:
        """Variables referenced anywhere but in variable blocks (a variable's own validation is no use of it)."""
        text = json.dumps(
            {path: {k: v for k, v in parsed.items() if k != "variable"} for path, parsed in self.files.items()}
        )
        return set(_VAR_REFERENCE.findall(text))


def load(directory: Path = DEPLOY) -> TerraformConfig:
    files = {
        path.name: hcl2.loads(path.read_text(), serialization_options=_OPTIONS)
        for path in sorted(directory.glob("*.tf"))
    }
    if not files:
        raise FileNotFoundError(f"no *.tf files in {directory}")
    return TerraformConfig(files)


def one(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The single block of a nested block list (``template``, ``scaling``, ...)."""
    assert len(blocks) == 1, f"expected one block, found {len(blocks)}"
    return blocks[0]


def expression(value: Any) -> str:
    """An interpolated expression without its ``${ }``: ``"${var.x}"`` -> ``"var.x"``."""
    assert isinstance(value, str) and value.startswith("${") and value.endswith("}"), f"not an expression: {value!r}"
    return value[2:-1]


def resource_reference(value: Any) -> tuple[str, str]:
    """``"${google_service_account.receiver.email}"`` -> ``("google_service_account", "receiver")``."""
    match = _RESOURCE_REFERENCE.match(str(value))
    assert match, f"not a reference to a resource attribute: {value!r}"
    return match.group(1), match.group(2)
