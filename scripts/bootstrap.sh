#!/usr/bin/env bash
# Installs what the project needs, on a fresh machine too, and builds the native
# module in place. Idempotent: a second call only rebuilds what changed.
#   .venv/            Python 3.13 (the Agent's version) with requirements-dev.txt
#   python/.../_core  the Rust core, built with maturin (release profile)
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    for candidate in python3.13 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13 /root/.pyenv/versions/3.13*/bin/python3.13; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    echo "bootstrap: Python 3.13 not found; set PYTHON=/path/to/python3.13" >&2
    exit 2
}

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "bootstrap: cargo (Rust ≥ 1.85) is required" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
stamp=.venv/.requirements.sha
wanted=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "bootstrap: installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements-dev.txt
    echo "$wanted" > "$stamp"
fi

echo "bootstrap: building the Rust core (release)"
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --quiet 2>&1 | grep -v -E '^(📦|✏️|🛠|🔗|🐍)' || true
.venv/bin/python -c 'import datadog_checks.huntress._core' || { echo "bootstrap: the native module did not build" >&2; exit 1; }
