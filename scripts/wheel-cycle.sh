#!/usr/bin/env bash
# Installs each given wheel as the Agent does and runs one collection cycle with it:
#   1. a fresh virtualenv (Python 3.13, the Agent's) holding datadog-checks-base, at the version pinned in
#      requirements-dev.txt;
#   2. `pip install --no-deps <wheel>`, as `datadog-agent integration install -w` does;
#   3. tests/wheel_cycle.py: one run of the installed check against the bundled Huntress simulator and intake
#      sink; every event must be delivered exactly once;
#   4. `pip uninstall datadog-huntress`, after which datadog_checks.base must still import and
#      datadog_checks.huntress must be gone.
# Usage: scripts/wheel-cycle.sh WHEEL [WHEEL ...]
# Environment: PYTHON  the Python 3.13 that creates the virtualenvs (default: python3.13 on PATH or in pyenv, else python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -gt 0 ] || { echo "usage: scripts/wheel-cycle.sh WHEEL [WHEEL ...]" >&2; exit 2; }

find_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    local candidate
    for candidate in python3.13 "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3.13 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$candidate"; return
        fi
    done
    echo "wheel-cycle: Python 3.13 not found; set PYTHON" >&2
    exit 2
}

PY="$(find_python)"
BASE_REQUIREMENT="$(grep -E '^datadog-checks-base' "$ROOT/requirements-dev.txt")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/huntress-wheel-cycle.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

for wheel in "$@"; do
    wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
    echo "== $(basename "$wheel")"
    venv="$WORK/agent-python-$(basename "$wheel" .whl)"
    "$PY" -m venv "$venv"
    if [ -x "$venv/Scripts/python.exe" ]; then python="$venv/Scripts/python.exe"; else python="$venv/bin/python"; fi
    "$python" -m pip install -q --disable-pip-version-check "$BASE_REQUIREMENT"
    "$python" -m pip install -q --disable-pip-version-check --no-deps "$wheel"
    (cd "$WORK" && "$python" "$ROOT/tests/wheel_cycle.py" "$ROOT" "$venv")
    "$python" -m pip uninstall -q -y --disable-pip-version-check datadog-huntress
    (cd "$WORK" && "$python" - <<'PY'
import importlib.util
import datadog_checks.base  # noqa: F401  still importable
assert importlib.util.find_spec('datadog_checks.huntress') is None, 'datadog_checks.huntress is still installed'
print('uninstall ok: datadog_checks.base imports, datadog_checks.huntress is gone')
PY
    )
    rm -rf "$venv"
done
