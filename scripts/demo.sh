#!/usr/bin/env bash
# The whole check (SIEM, incident reports, escalations, signals, agents,
# organizations) against the bundled Huntress simulator and a local intake sink:
# no credentials needed. Ends with a summary per feed and the next steps.
#   scripts/demo.sh [--events N] [--runs N]
#   scripts/demo.sh --config conf.yaml [--instance I]   your instance, on demo data
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >&2
exec .venv/bin/python scripts/demo.py "$@"
