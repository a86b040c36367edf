#!/usr/bin/env bash
# Builds the release wheel for the Agent into dist/: abi3 (Python >= 3.9),
# manylinux2014 (glibc 2.17), linked with zig so that it runs on old distributions.
#   sudo datadog-agent integration install -w dist/datadog_huntress-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
.venv/bin/python -m pip install -q "ziglang==0.17.0"
# maturin finds zig through the Python on PATH (python -m ziglang).
export VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH"
rm -rf dist
.venv/bin/maturin build --release --zig --compatibility manylinux2014 --out dist --quiet
ls dist/*.whl
