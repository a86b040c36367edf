#!/usr/bin/env bash
# Builds the Linux aarch64 wheel on an emulated arm64 Debian 13 (trixie) and runs one collection cycle with it,
# on an x86_64 Linux host, under qemu-user:
#   1. root:   register qemu-aarch64 with binfmt_misc, so that the kernel runs the root's programs, and debootstrap
#              an arm64 trixie root (first run only) with Debian's python3 (3.13), python3-venv, rustc, cargo and
#              gcc (a later run installs only what is missing);
#   2. source: copy the files git tracks (as they are in the work tree) into the root;
#   3. build:  maturin (the version pinned in requirements-dev.txt) builds the wheel with Debian's rustc, from
#              Cargo.lock as committed (--locked), one cargo job, niced;
#   4. cycle:  scripts/wheel-cycle.sh inside the root: a fresh virtualenv holding datadog-checks-base, the wheel
#              installed with --no-deps, one collection cycle against the bundled simulator and intake sink with
#              every event delivered exactly once, then the uninstall check.
# Each phase prints its wall-clock time. The root is kept for the next run; delete it to start over.
#
# Usage: scripts/arm64-cycle.sh [--prepare-only] [--wheel WHEEL]
#   --prepare-only  stop after phase 1 (the root and its toolchain)
#   --wheel WHEEL   skip phases 2 and 3 and run the cycle with this aarch64 wheel (the release's
#                   manylinux2014_aarch64 wheel, say)
# Environment:
#   ARM64_ROOT    where the arm64 root lives (default: .build/arm64-trixie, ignored by git)
#   DEBIAN_MIRROR the Debian mirror (default: http://deb.debian.org/debian)
#   NICE          the niceness of the emulated work (default: 15)
# Needs root (debootstrap, chroot, mounts) and, on Debian/Ubuntu: apt-get install debootstrap qemu-user-static
# binfmt-support.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM64_ROOT="${ARM64_ROOT:-$REPO/.build/arm64-trixie}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NICE="${NICE:-15}"
# python3-dev and gcc also build datadog-checks-base's dependencies that PyPI has no aarch64 wheel of.
PACKAGES=python3,python3-venv,python3-dev,rustc,cargo,gcc,libc6-dev,ca-certificates
IN_ROOT_REPO=/build/datadog-huntress

main() {
    prepare_only=0
    wheel=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --prepare-only) prepare_only=1; shift ;;
            --wheel) wheel="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
            -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "arm64-cycle: unknown argument $1" >&2; exit 2 ;;
        esac
    done

    fail() { echo "arm64-cycle: $*" >&2; exit 1; }
    [ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot and mounts)"
    for tool in debootstrap chroot mountpoint; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (apt-get install debootstrap qemu-user-static binfmt-support)"
    done

    started=$(date +%s)
    phase_start=0
    phase() { phase_start=$(date +%s); echo "== $1 ($(date -u +%H:%M:%SZ))"; }
    phase_end() { echo "-- $1: $(( $(date +%s) - phase_start )) s"; }

    # The kernel must hand aarch64 ELF files to qemu: every process in the root (apt, cargo, rustc, cc, python) is one.
    binfmt_ready() {
        [ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64
    }
    if ! binfmt_ready; then
        mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || fail "cannot mount binfmt_misc; qemu-user needs it to run the root's programs"
        command -v update-binfmts >/dev/null 2>&1 || fail "update-binfmts not found (apt-get install binfmt-support)"
        update-binfmts --enable qemu-aarch64 || fail "cannot register qemu-aarch64 with binfmt_misc"
    fi
    # The F flag (the interpreter opened at registration) lets qemu run inside a root that does not contain it.
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || fail "qemu-aarch64 is registered without the F flag; use Debian's qemu-user-static"

    mounted=()
    # Unmounts what mount_root mounted, in reverse order (a mount the root's programs already undid is skipped).
    unmount_all() {
        local i
        for (( i=${#mounted[@]}-1; i>=0; i-- )); do
            if mountpoint -q "${mounted[$i]}"; then umount "${mounted[$i]}" || umount -l "${mounted[$i]}"; fi
        done
        mounted=()
    }
    trap unmount_all EXIT
    mount_root() {
        local target
        for target in proc dev dev/pts; do
            mkdir -p "$ARM64_ROOT/$target"
            mountpoint -q "$ARM64_ROOT/$target" && continue
            case "$target" in
                proc) mount -t proc proc "$ARM64_ROOT/proc" ;;
                dev) mount --bind /dev "$ARM64_ROOT/dev" ;;
                dev/pts) mount --bind /dev/pts "$ARM64_ROOT/dev/pts" ;;
            esac
            mounted+=("$ARM64_ROOT/$target")
        done
    }
    # Runs a command in the root with a clean environment, niced.
    in_root() {
        chroot "$ARM64_ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive CARGO_BUILD_JOBS=1 \
            nice -n "$NICE" "$@"
    }

    # 1. The root.
    phase "root: arm64 Debian trixie at $ARM64_ROOT"
    if [ ! -f "$ARM64_ROOT/.arm64-cycle-ready" ]; then
        if [ ! -f "$ARM64_ROOT/.arm64-cycle-first-stage" ]; then
            # Never remove a root with the host's /dev or /proc mounted in it.
            if grep -q " $ARM64_ROOT/" /proc/mounts; then fail "$ARM64_ROOT has mounts below it; unmount them first"; fi
            rm -rf --one-file-system "$ARM64_ROOT"
            mkdir -p "$ARM64_ROOT"
            nice -n "$NICE" debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" \
                trixie "$ARM64_ROOT" "$DEBIAN_MIRROR"
            touch "$ARM64_ROOT/.arm64-cycle-first-stage"
        fi
        mount_root
        # The second stage removes /debootstrap when it completes.
        if [ -x "$ARM64_ROOT/debootstrap/debootstrap" ]; then in_root /debootstrap/debootstrap --second-stage; fi
        echo "deb $DEBIAN_MIRROR trixie main" > "$ARM64_ROOT/etc/apt/sources.list"
        touch "$ARM64_ROOT/.arm64-cycle-ready"
    fi
    mount_root
    cp /etc/resolv.conf "$ARM64_ROOT/etc/resolv.conf"
    # Certificate authorities the host trusts beyond Debian's (a proxy's, say) are trusted inside too: cargo and pip
    # reach crates.io and PyPI from the root.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$ARM64_ROOT/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$ARM64_ROOT/usr/local/share/ca-certificates/"
        in_root update-ca-certificates >/dev/null
    fi
    # A root made by an earlier version of this script may lack a package added since.
    missing=()
    for package in ${PACKAGES//,/ }; do
        in_root dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        in_root apt-get update -q
        in_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    echo "machine: $(in_root uname -m), $(in_root sh -c '. /etc/os-release; echo "$PRETTY_NAME"')"
    echo "python:  $(in_root python3 --version)"
    echo "rustc:   $(in_root rustc --version)"
    echo "cargo:   $(in_root cargo --version)"
    phase_end root
    [ "$prepare_only" -eq 1 ] && return 0

    if [ -z "$wheel" ]; then
        # 2. The source, as git tracks it (edits in the work tree included, untracked files and build output not).
        phase "source: copy the tracked files to $IN_ROOT_REPO"
        rm -rf "${ARM64_ROOT:?}$IN_ROOT_REPO"
        mkdir -p "$ARM64_ROOT$IN_ROOT_REPO"
        (cd "$REPO" && git ls-files -z --cached | xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1"' _ {} \
            | tar --null -T - -cf -) | tar -xf - -C "$ARM64_ROOT$IN_ROOT_REPO"
        phase_end source

        # 3. The build, with the root's Rust, from the committed lock file.
        phase "build: maturin build --release --locked (Debian's rustc, CARGO_BUILD_JOBS=1, nice $NICE)"
        maturin_pin="$(grep -E '^maturin==' "$REPO/requirements-dev.txt")"
        if [ ! -x "$ARM64_ROOT/opt/maturin/bin/maturin" ]; then
            in_root python3 -m venv /opt/maturin
            in_root /opt/maturin/bin/python -m pip install -q --disable-pip-version-check "$maturin_pin"
        fi
        in_root sh -c "cd $IN_ROOT_REPO && /opt/maturin/bin/maturin build --release --locked --out dist"
        set -- "$ARM64_ROOT$IN_ROOT_REPO"/dist/datadog_huntress-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] || fail "expected one wheel in $IN_ROOT_REPO/dist, found: $*"
        wheel_in_root="$IN_ROOT_REPO/dist/$(basename "$1")"
        phase_end build
    else
        mkdir -p "$ARM64_ROOT$IN_ROOT_REPO/dist"
        [ -d "$ARM64_ROOT$IN_ROOT_REPO/tests" ] || (cd "$REPO" && git ls-files -z | tar --null -T - -cf -) \
            | tar -xf - -C "$ARM64_ROOT$IN_ROOT_REPO"
        rm -f "$ARM64_ROOT$IN_ROOT_REPO"/dist/*.whl
        cp "$wheel" "$ARM64_ROOT$IN_ROOT_REPO/dist/"
        wheel_in_root="$IN_ROOT_REPO/dist/$(basename "$wheel")"
    fi

    # 4. The cycle, with the wheel installed as the Agent installs it.
    phase "cycle: $(basename "$wheel_in_root")"
    # The wheel must be an aarch64 one: its tag and the ELF machine of its core (183 = EM_AARCH64).
    in_root python3 - "$wheel_in_root" <<'PY'
import struct
import sys
import zipfile

path = sys.argv[1]
assert path.endswith('_aarch64.whl'), f'{path} is not tagged for aarch64'
with zipfile.ZipFile(path) as wheel:
    cores = [name for name in wheel.namelist() if '/_core' in name and name.endswith('.so')]
    assert len(cores) == 1, f'expected one native core, found {cores}'
    header = wheel.read(cores[0])[:20]
assert header[:4] == b'\x7fELF', f'{cores[0]} is not an ELF file'
machine = struct.unpack('<H', header[18:20])[0]
assert machine == 183, f'{cores[0]} is built for ELF machine {machine}, not aarch64 (183)'
print(f'wheel ok: {cores[0]} is an aarch64 ELF')
PY
    in_root env PYTHON=/usr/bin/python3 "$IN_ROOT_REPO/scripts/wheel-cycle.sh" "$wheel_in_root"
    phase_end cycle

    echo "arm64-cycle ok: $(( $(date +%s) - started )) s in all"
}

# Everything runs from main, so that an edit of this file during a run cannot change the run.
main "$@"
