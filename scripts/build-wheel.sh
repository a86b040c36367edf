#!/usr/bin/env bash
# Builds the release wheels into dist/:
#   - the platform wheel of this host (or of --target): abi3 (Python >= 3.9); on Linux manylinux2014 (glibc 2.17),
#     linked with zig (the `ziglang` package) so that it runs on old distributions;
#   - the universal wheel, from every platform wheel of this version found in dist/ (scripts/build-universal.sh).
#     Put the other platforms' wheels in dist/ first to bundle them: only with all five is it named
#     datadog_huntress-<version>-py3-none-any.whl; built from fewer, it warns and carries a local version label
#     naming what it holds, such as datadog_huntress-<version>+linux.x64-py3-none-any.whl.
# Wheels of other versions are removed from dist/. The build needs Rust, Python and the platform's C compiler only.
#
# Usage: scripts/build-wheel.sh [--target RUST_TARGET] [--no-universal]
# Environment: PYTHON  the Python that creates the build virtualenv .build/wheel-venv (default: python3, else python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

target=()
universal=1
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=(--target "$2"); shift 2 ;;
        --no-universal) universal=0; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-wheel: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
venv=.build/wheel-venv
if [ -d "$venv/Scripts" ]; then bin="$venv/Scripts"; else bin="$venv/bin"; fi
if [ ! -x "$bin/maturin" ] && [ ! -x "$bin/maturin.exe" ]; then
    py="${PYTHON:-$(command -v python3 || command -v python)}"
    "$py" -m venv "$venv"
    if [ -d "$venv/Scripts" ]; then bin="$venv/Scripts"; else bin="$venv/bin"; fi
    "$bin/python" -m pip install -q --disable-pip-version-check "$(grep -E '^maturin==' requirements-dev.txt)"
fi

version="$(sed -nE "s/^__version__ = '([^']+)'/\1/p" python/datadog_checks/huntress/__about__.py)"
mkdir -p dist
for stale in dist/datadog_huntress-*.whl; do
    case "$stale" in
        "dist/datadog_huntress-$version-"*|"dist/datadog_huntress-$version+"*|'dist/datadog_huntress-*.whl') ;;
        *) rm -f "$stale" ;;
    esac
done

build=("$bin/maturin" build --release --out dist --quiet "${target[@]}")
if [ "$(uname -s)" = Linux ]; then
    "$bin/python" -m pip install -q --disable-pip-version-check "ziglang==0.17.0"
    # maturin runs zig through the Python on PATH (python -m ziglang).
    PATH="$ROOT/$bin:$PATH" "${build[@]}" --zig --compatibility manylinux2014
else
    "${build[@]}"
fi

if [ "$universal" -eq 1 ]; then
    scripts/build-universal.sh
fi
ls dist/*.whl
