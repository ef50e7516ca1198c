"""What the scripts need from the machine (README, Prerequisites): bash, curl and uv, not Python nor pip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.receiver.server import ROOT

SCRIPTS = sorted(path for path in (ROOT / "scripts").iterdir() if path.is_file())


def test_the_scripts_install_the_uv_the_dockerfile_pins() -> None:
    [pinned] = re.findall(r"^UV_VERSION=(\S+)$", (ROOT / "scripts/_uv.sh").read_text(), re.MULTILINE)
    [in_image] = re.findall(r"\buv==(\S+)", (ROOT / "Dockerfile").read_text())
    assert pinned == in_image


def test_no_script_calls_python_or_pip_itself() -> None:
    for script in SCRIPTS:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            # Python runs only under uv (`uv run python`, the emulators' own venv); `uv pip` is uv's.
            assert not re.search(r"(?<![\w/.-])(python3?|pip3?)\b", re.sub(r"uv (run [^|;]*python|pip)", "", code)), (
                f"{script.name}:{number}: {line.strip()}"
            )


def test_the_scripts_run_with_only_bash_and_uv_on_the_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "env", "uv"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    env = {"HOME": os.environ["HOME"], "PATH": str(bin_dir)}
    for script in ("generate-events", "send-sample-event"):
        result = subprocess.run(
            [bin_dir / "bash", ROOT / "scripts" / script, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (result.returncode, result.stderr) == (0, ""), script
        assert result.stdout.startswith(f"usage: scripts/{script}")
