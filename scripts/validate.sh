#!/usr/bin/env bash
# Runs the ddev validations of integrations-extras against this project, offline.
#
# ddev expects the integrations-extras layout, `<repo>/huntress/{manifest.json, datadog_checks/huntress, ...}`,
# while this project keeps its Python sources under `python/`. So the script builds a throwaway tree
#
#   <tmp>/integrations-extras/            git init'ed; ddev runs here with --here
#   <tmp>/integrations-extras/huntress/   links to the project files, and
#       datadog_checks -> <project>/python/datadog_checks
#
# and runs `ddev --here validate <name> huntress` for each validation, one by one (`validate all` ignores --here).
# The tree root is named `integrations-extras` because ddev derives the repository rules it applies from that name
# (with --here, `integrations-<name>` selects `<name>`). The tree holds only links: no project file is copied or
# edited, so ddev validates the project as it is.
#
# Usage: scripts/validate.sh [--sync] [--keep] [VALIDATION ...]
#   --sync   regenerate from assets/configuration/spec.yaml first, through the link into the project:
#            `validate config --sync` writes python/datadog_checks/huntress/data/conf.yaml.example and
#            `validate models --sync` writes python/datadog_checks/huntress/config_models/.
#            Run it after every change to spec.yaml, then commit what it wrote.
#   --keep   keep the throwaway tree and print its path.
#   VALIDATION ...  run only these (default: all of them, see VALIDATIONS below).
#
# Environment:
#   DDEV_VENV   the virtualenv holding ddev (default: .build/ddev-venv); created if missing, with Python 3.13.
#   PYTHON313   the Python 3.13 interpreter used to create it (default: found on PATH or in pyenv).
#
# Exit status: 0 when every validation passes, 1 when any fails, 2 on a setup error.

set -uo pipefail

VALIDATIONS=(config models metadata package readmes service-checks dashboards imports legacy-signature integration-style)
CHECK=huntress
DDEV_SPEC='ddev>=20,<21'

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DDEV_VENV="${DDEV_VENV:-$ROOT/.build/ddev-venv}"
case "$DDEV_VENV" in
    /*) ;;
    *) DDEV_VENV="$PWD/$DDEV_VENV" ;;
esac

sync=0
keep=0
selected=()
for arg in "$@"; do
    case "$arg" in
        --sync) sync=1 ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) selected+=("$arg") ;;
    esac
done
if [ ${#selected[@]} -gt 0 ]; then
    for name in "${selected[@]}"; do
        case " ${VALIDATIONS[*]} " in
            *" $name "*) ;;
            *) echo "unknown validation: $name (known: ${VALIDATIONS[*]})" >&2; exit 2 ;;
        esac
    done
    VALIDATIONS=("${selected[@]}")
fi

die() { echo "validate.sh: $*" >&2; exit 2; }

find_python313() {
    if [ -n "${PYTHON313:-}" ]; then echo "$PYTHON313"; return 0; fi
    if command -v python3.13 >/dev/null 2>&1 && python3.13 -c 'import sys' >/dev/null 2>&1; then
        command -v python3.13; return 0
    fi
    local pyenv_root candidate
    pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for candidate in "$pyenv_root"/versions/3.13*/bin/python3.13; do
        if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}

# 1. ddev, in its own virtualenv.
if [ ! -x "$DDEV_VENV/bin/ddev" ]; then
    py="$(find_python313)" || die "no Python 3.13 found; set PYTHON313"
    echo "Creating $DDEV_VENV with $py and installing $DDEV_SPEC ..."
    "$py" -m venv "$DDEV_VENV" || die "could not create $DDEV_VENV"
    "$DDEV_VENV/bin/python" -m pip install --quiet "$DDEV_SPEC" || die "could not install $DDEV_SPEC"
fi
DDEV="$DDEV_VENV/bin/ddev"
"$DDEV" --version >/dev/null 2>&1 || die "$DDEV does not run"

# 2. The throwaway tree.
[ -d "$ROOT/python/datadog_checks/$CHECK" ] || die "missing python/datadog_checks/$CHECK"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/huntress-validate.XXXXXX")" || die "mktemp failed"
if [ "$keep" -eq 0 ]; then
    trap 'rm -rf "$TMP"' EXIT
fi
TREE="$TMP/integrations-extras"
DEST="$TREE/$CHECK"
mkdir -p "$DEST"

ln -s "$ROOT/python/datadog_checks" "$DEST/datadog_checks"
for item in README.md CHANGELOG.md manifest.json metadata.csv pyproject.toml hatch.toml assets tests images LICENSE; do
    if [ -e "$ROOT/$item" ]; then
        ln -s "$ROOT/$item" "$DEST/$item"
    fi
done

(
    cd "$TREE" || exit 2
    git init -q . && git add -A >/dev/null 2>&1
    git -c user.name=validate -c user.email=validate@localhost commit -q -m tree >/dev/null 2>&1 || true
)

# ddev gets its own empty configuration: nothing is read from or written to the user's ddev config.
DDEV_CONFIG_FILE="$TMP/ddev-config.toml"
: > "$DDEV_CONFIG_FILE"
export DDEV_CONFIG="$DDEV_CONFIG_FILE"
export NO_COLOR=1 DDEV_INTERACTIVE=false

run_ddev() {
    (cd "$TREE" && "$DDEV" --here validate "$@" 2>&1)
}

if [ "$sync" -eq 1 ]; then
    echo "=== config --sync"
    run_ddev config "$CHECK" --sync
    echo "=== models --sync"
    run_ddev models "$CHECK" --sync
fi

# Preconditions. Some validations select the check from files and silently validate nothing when a file is
# missing (for example `package` without __about__.py), so a missing file is reported as a failure here.
precondition_failures=()
[ -f "$DEST/datadog_checks/$CHECK/__about__.py" ] || precondition_failures+=("python/datadog_checks/$CHECK/__about__.py is missing (ddev does not see a check without it)")
[ -f "$DEST/manifest.json" ] || precondition_failures+=("manifest.json is missing (ddev does not see an integration without it)")
[ -f "$DEST/pyproject.toml" ] || precondition_failures+=("pyproject.toml is missing")
[ -f "$DEST/README.md" ] || precondition_failures+=("README.md is missing")
[ -f "$DEST/datadog_checks/$CHECK/config_models/instance.py" ] || precondition_failures+=("python/datadog_checks/$CHECK/config_models/ is missing (ddev skips the models validation without it; scripts/validate.sh --sync writes it)")
[ -f "$DEST/metadata.csv" ] || precondition_failures+=("metadata.csv is missing (ddev skips the metadata validation without it)")

declare -A status
failed=0
for name in "${VALIDATIONS[@]}"; do
    echo "=== $name"
    output="$(run_ddev "$name" "$CHECK")"
    rc=$?
    printf '%s\n' "$output"
    # A validation that selected nothing passes vacuously; treat "0 checks" as a failure.
    if [ $rc -eq 0 ] && printf '%s' "$output" | grep -Eq 'for 0 (checks|integrations)'; then
        echo "(no check was validated: counted as a failure)"
        rc=1
    fi
    if [ $rc -eq 0 ] && [ "$name" = metadata ] && ! printf '%s' "$output" | grep -Eq 'Passed: [1-9]'; then
        echo "(metadata.csv was not validated: counted as a failure)"
        rc=1
    fi
    if [ $rc -eq 0 ]; then status[$name]=PASS; else status[$name]=FAIL; failed=1; fi
done

echo
echo "=== Summary"
for name in "${VALIDATIONS[@]}"; do
    printf '  %-18s %s\n' "$name" "${status[$name]}"
done
if [ ${#precondition_failures[@]} -gt 0 ]; then
    failed=1
    echo "  preconditions      FAIL"
    for item in "${precondition_failures[@]}"; do
        echo "    - $item"
    done
fi
if [ "$keep" -eq 1 ]; then
    echo "  tree kept at $TREE"
fi
exit "$failed"
