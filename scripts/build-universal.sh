#!/usr/bin/env bash
# Assembles dist/datadog_huntress-<version>-py3-none-any.whl, the wheel for the Agent's tile installer, from the
# platform wheels given, or by default from every platform wheel of the current version in dist/. Each platform's
# native core goes into datadog_checks/huntress/_native/ under its own name (see scripts/universal_wheel.py).
# Usage: scripts/build-universal.sh [WHEEL ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
py="${PYTHON:-$(command -v python3 || command -v python)}"
if [ $# -eq 0 ]; then
    version="$(sed -nE "s/^__version__ = '([^']+)'/\1/p" python/datadog_checks/huntress/__about__.py)"
    shopt -s nullglob
    set -- dist/datadog_huntress-"$version"-cp*-abi3-*.whl
    [ $# -gt 0 ] || { echo "build-universal: no platform wheel of version $version in dist/" >&2; exit 1; }
fi
"$py" scripts/universal_wheel.py --out dist "$@"
