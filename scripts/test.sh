#!/usr/bin/env bash
# The whole test suite: Rust unit tests of the core, then pytest (the real check
# over loopback HTTP against the Huntress simulator and the intake sink).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "== cargo test (core, without the Python binding)"
cargo test --no-default-features --quiet
echo "== pytest"
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
