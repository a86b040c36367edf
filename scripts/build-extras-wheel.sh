#!/usr/bin/env bash
# Builds the wheel of an integrations-extras check folder as Datadog's release pipeline does: `python -m build
# --wheel` run in the folder (what `ddev release build` runs), with the build backend its pyproject.toml names
# (hatchling) installed in an isolated build environment. The `build` frontend lives in .build/extras-venv.
# Usage: scripts/build-extras-wheel.sh FOLDER [OUTDIR]   (OUTDIR defaults to FOLDER/dist; prints the wheel's path)
# Environment: PYTHON  the Python that creates .build/extras-venv (default: python3, else python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_REQUIREMENT='build==1.6.1'
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: scripts/build-extras-wheel.sh FOLDER [OUTDIR]" >&2; exit 2; }
folder="$(cd "$1" && pwd)"
outdir="${2:-$folder/dist}"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"

venv="$ROOT/.build/extras-venv"
if [ -d "$venv/Scripts" ]; then bin="$venv/Scripts"; else bin="$venv/bin"; fi
if ! "$bin/python" -c 'import build' >/dev/null 2>&1; then
    py="${PYTHON:-$(command -v python3 || command -v python)}"
    "$py" -m venv "$venv"
    if [ -d "$venv/Scripts" ]; then bin="$venv/Scripts"; else bin="$venv/bin"; fi
    "$bin/python" -m pip install -q --disable-pip-version-check "$BUILD_REQUIREMENT"
fi
fresh="$(mktemp -d "${TMPDIR:-/tmp}/huntress-extras-build.XXXXXX")"
trap 'rm -rf "$fresh"' EXIT
(cd "$folder" && "$bin/python" -m build --wheel --outdir "$fresh" . >&2)
for wheel in "$fresh"/*.whl; do
    mv -f "$wheel" "$outdir/"
    echo "$outdir/$(basename "$wheel")"
done
