#!/usr/bin/env bash
# Assembles the universal wheel for the Agent's tile installer into dist/, from the platform wheels given, or by
# default from every platform wheel of the current version in dist/. Each platform's native core goes into
# datadog_checks/huntress/_native/ under its own name (see scripts/universal_wheel.py).
#
# Only a wheel holding the cores of all five platforms is named datadog_huntress-<version>-py3-none-any.whl. With
# fewer, it is labelled with the platforms it holds (datadog_huntress-<version>+linux.x64-py3-none-any.whl) and a
# warning says which are missing; --require-all makes that an error (the release workflow uses it).
# Universal wheels of this version left in dist/ by an earlier run are replaced.
# Usage: scripts/build-universal.sh [--require-all] [WHEEL ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
py="${PYTHON:-$(command -v python3 || command -v python)}"
options=()
if [ "${1:-}" = --require-all ]; then options+=(--require-all); shift; fi
version="$(sed -nE "s/^__version__ = '([^']+)'/\1/p" python/datadog_checks/huntress/__about__.py)"
shopt -s nullglob
if [ $# -eq 0 ]; then
    set -- dist/datadog_huntress-"$version"-cp*-abi3-*.whl
    [ $# -gt 0 ] || { echo "build-universal: no platform wheel of version $version in dist/" >&2; exit 1; }
fi
rm -f dist/datadog_huntress-"$version"-py3-none-any.whl dist/datadog_huntress-"$version"+*-py3-none-any.whl
"$py" scripts/universal_wheel.py --out dist "${options[@]}" "$@"
