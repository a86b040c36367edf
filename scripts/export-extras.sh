#!/usr/bin/env bash
# Writes the check as an integrations-extras folder, <out>/huntress/ (default dist/extras/huntress/), from this tree
# and the platform wheels given (default: every platform wheel of the current version in dist/), with the native
# cores prebuilt in datadog_checks/huntress/_native/ and hatchling as the build backend (scripts/extras_export.py).
#   --build        then build that folder's wheel as Datadog's extras pipeline does, `python -m build --wheel` run
#                  in the folder (hatchling, in an isolated build environment; scripts/build-extras-wheel.sh), into
#                  <out>/huntress/dist/, and print its path.
#   --require-all  fail unless the wheels hold every platform's core (a release); with fewer, the folder's version
#                  carries a local label naming what it holds (0.2.0+linux.x64) and a warning says so.
#   --out DIR      where to write huntress/ (replaced if it exists; default dist/extras of the project).
# Usage: scripts/export-extras.sh [--build] [--require-all] [--out DIR] [WHEEL ...]
# Environment: PYTHON  the Python (3.11 or newer) that runs the export.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

build=0
options=()
out="$ROOT/dist/extras"
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1; shift ;;
        --require-all) options+=(--require-all); shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "export-extras: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
py="${PYTHON:-$(command -v python3 || command -v python)}"
if [ $# -eq 0 ]; then
    version="$(sed -nE "s/^__version__ = '([^']+)'/\1/p" "$ROOT/python/datadog_checks/huntress/__about__.py")"
    shopt -s nullglob
    set -- "$ROOT"/dist/datadog_huntress-"$version"-cp*-abi3-*.whl
    [ $# -gt 0 ] || { echo "export-extras: no platform wheel of version $version in dist/" >&2; exit 1; }
fi
folder="$("$py" "$ROOT/scripts/extras_export.py" --out "$out" "${options[@]}" "$@")"
echo "$folder"
[ "$build" -eq 1 ] || exit 0

"$ROOT/scripts/build-extras-wheel.sh" "$folder"
