# Sourced by the other scripts: checks the shell, goes to the project root and puts a working `uv` on PATH.
# A missing uv is installed with Astral's official installer, at the version the Dockerfile pins, into
# ~/.local/bin: no pip and no Python needed (uv then installs the Python the project asks for).
set -euo pipefail
# Keep equal to the Dockerfile's `uv==` (tests/devstack/test_prerequisites.py checks it).
UV_VERSION=0.13.9
# The scripts use `wait -n` and expand empty arrays under `set -u`: bash 4.4 or later (macOS ships 3.2).
if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4) )); then
  echo "these scripts need bash 4.4 or later, not $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.local/bin:$PATH"

# Prints the body of URL on stdout, with curl or else wget.
_download() {
  if command -v curl >/dev/null 2>&1; then
    curl --proto '=https' --tlsv1.2 -LsSf "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -qO- "$1"
  else
    echo "neither curl nor wget found: install one of them (see README, Prerequisites)" >&2
    return 1
  fi
}

if ! command -v uv >/dev/null 2>&1; then
  echo "uv not found: installing uv $UV_VERSION into ~/.local/bin (https://astral.sh/uv/$UV_VERSION/install.sh)" >&2
  # Both names of the installer's "leave the shell profiles alone" switch (it was renamed).
  _download "https://astral.sh/uv/$UV_VERSION/install.sh" \
    | env UV_INSTALL_DIR="$HOME/.local/bin" UV_NO_MODIFY_PATH=1 INSTALLER_NO_MODIFY_PATH=1 sh >&2
  command -v uv >/dev/null 2>&1 || { echo "uv was not installed into ~/.local/bin" >&2; exit 1; }
fi
