#!/usr/bin/env bash
# One collection cycle against the bundled Huntress simulator and a local intake
# sink: no credentials needed. Prints what `datadog-agent check huntress` shows.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >&2
exec .venv/bin/python scripts/demo.py "$@"
