#!/usr/bin/env bash
# Builds the Linux aarch64 wheel and runs one collection cycle with it on an emulated arm64 Debian 13 (trixie), on
# an x86_64 Linux host, under qemu-user. Two ways to build:
#   --cross (fast): cross-compile on the host, in an amd64 trixie root with Debian's rustc 1.85, the aarch64 Rust
#            standard library (libstd-rust-dev:arm64) and zig, by scripts/build-wheel.sh as the release builds it
#            (manylinux2014_aarch64); only the cycle runs under emulation.
#   default (slow): compile inside the emulated arm64 root, with its own rustc 1.85 (a wheel tagged for trixie's
#            glibc). Every rustc process runs under qemu: expect hours.
# Phases, each printing its wall-clock time:
#   1. root:   register qemu-aarch64 with binfmt_misc, so that the kernel runs the root's programs, and debootstrap
#              an arm64 trixie root (first run only) with Debian's python3 (3.13), python3-venv, gcc (and, without
#              --cross, rustc and cargo); a later run installs only what is missing;
#      cross root (--cross): the same for an amd64 trixie root with rustc, cargo, libstd-rust-dev:arm64, python3;
#   2. source: copy the files git tracks (as they are in the work tree) into the root(s);
#   3. build:  --cross: scripts/build-wheel.sh --target aarch64-unknown-linux-gnu --no-universal in the cross root;
#              default: maturin (the version pinned in requirements-dev.txt) with the arm64 root's rustc;
#              both from Cargo.lock as committed, one cargo job, niced;
#   4. cycle:  scripts/wheel-cycle.sh inside the arm64 root: a fresh virtualenv holding datadog-checks-base, the
#              wheel installed with --no-deps, one collection cycle against the bundled simulator and intake sink
#              with every event delivered exactly once, then the uninstall check.
# The roots are kept for the next run; delete them to start over.
#
# Usage: scripts/arm64-cycle.sh [--cross] [--prepare-only] [--wheel WHEEL]
#   --cross         cross-compile on the host (see above)
#   --prepare-only  stop after phase 1 (the roots and their toolchains)
#   --wheel WHEEL   skip the build and run the cycle with this aarch64 wheel (the release's
#                   manylinux2014_aarch64 wheel, say)
# Environment:
#   ROOTS         the folder of the roots (default: /var/tmp/huntress-arm64)
#   ARM64_ROOT    the arm64 root (default: $ROOTS/arm64-trixie)
#   CROSS_ROOT    the amd64 root of --cross (default: $ROOTS/amd64-trixie)
#   DEBIAN_MIRROR the Debian mirror (default: http://deb.debian.org/debian)
#   NICE          the niceness of the builds and the emulated work (default: 15)
# Needs root (debootstrap, chroot, mounts) and, on Debian/Ubuntu: apt-get install debootstrap qemu-user-static
# binfmt-support.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTS="${ROOTS:-/var/tmp/huntress-arm64}"
ARM64_ROOT="${ARM64_ROOT:-$ROOTS/arm64-trixie}"
CROSS_ROOT="${CROSS_ROOT:-$ROOTS/amd64-trixie}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NICE="${NICE:-15}"
# python3-dev and gcc build datadog-checks-base's dependencies that PyPI has no aarch64 wheel of.
CYCLE_PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates
NATIVE_BUILD_PACKAGES=rustc,cargo
# The cross build: Debian's rustc 1.85 with the aarch64 standard library of the same version; zig (PyPI's ziglang,
# installed by scripts/build-wheel.sh) compiles the C parts (ring, zstd) and links against glibc 2.17.
CROSS_PACKAGES=rustc,cargo,libc6-dev,python3,python3-venv,ca-certificates
CROSS_FOREIGN_PACKAGES=libstd-rust-dev:arm64
TARGET=aarch64-unknown-linux-gnu
IN_ROOT_REPO=/build/datadog-huntress

main() {
    cross=0
    prepare_only=0
    wheel=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --cross) cross=1; shift ;;
            --prepare-only) prepare_only=1; shift ;;
            --wheel) wheel="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
            -h|--help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
    # mount_root ROOT: the host's /proc, /dev and /dev/pts in ROOT.
    mount_root() {
        local root="$1" target
        for target in proc dev dev/pts; do
            mkdir -p "$root/$target"
            mountpoint -q "$root/$target" && continue
            case "$target" in
                proc) mount -t proc proc "$root/proc" ;;
                dev) mount --bind /dev "$root/dev" ;;
                dev/pts) mount --bind /dev/pts "$root/dev/pts" ;;
            esac
            mounted+=("$root/$target")
        done
    }
    # in_chroot ROOT COMMAND...: runs a command in ROOT with a clean environment, niced.
    in_chroot() {
        local root="$1"; shift
        chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive CARGO_BUILD_JOBS=1 \
            nice -n "$NICE" "$@"
    }
    in_root() { in_chroot "$ARM64_ROOT" "$@"; }

    # make_root ROOT ARCH PACKAGES [FOREIGN_PACKAGES]: a Debian trixie root of ARCH (debootstrap on the first run),
    # with the host's resolver and extra certificate authorities, holding PACKAGES (comma-separated) and
    # FOREIGN_PACKAGES (name:arch, space-separated; their architecture is added to dpkg).
    make_root() {
        local root="$1" arch="$2" packages="$3" foreign="${4:-}" package
        if [ ! -f "$root/.arm64-cycle-ready" ]; then
            if [ ! -f "$root/.arm64-cycle-first-stage" ]; then
                # Never remove a root with the host's /dev or /proc mounted in it.
                if grep -q " $root/" /proc/mounts; then fail "$root has mounts below it; unmount them first"; fi
                rm -rf --one-file-system "$root"
                mkdir -p "$root"
                nice -n "$NICE" debootstrap --foreign --arch="$arch" --variant=minbase --include="$packages" \
                    trixie "$root" "$DEBIAN_MIRROR"
                touch "$root/.arm64-cycle-first-stage"
            fi
            mount_root "$root"
            # The second stage removes /debootstrap when it completes.
            if [ -x "$root/debootstrap/debootstrap" ]; then in_chroot "$root" /debootstrap/debootstrap --second-stage; fi
            echo "deb $DEBIAN_MIRROR trixie main" > "$root/etc/apt/sources.list"
            touch "$root/.arm64-cycle-ready"
        fi
        mount_root "$root"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        # Certificate authorities the host trusts beyond Debian's (a proxy's, say) are trusted inside too: apt, cargo
        # and pip reach Debian, crates.io and PyPI from the root.
        if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
            mkdir -p "$root/usr/local/share/ca-certificates"
            cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
            in_chroot "$root" update-ca-certificates >/dev/null
        fi
        for package in $foreign; do
            in_chroot "$root" dpkg --print-foreign-architectures | grep -qx "${package#*:}" \
                || in_chroot "$root" dpkg --add-architecture "${package#*:}"
        done
        # A root made by an earlier version of this script may lack a package added since.
        local missing=()
        for package in ${packages//,/ } $foreign; do
            in_chroot "$root" dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
                || missing+=("$package")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            echo "installing ${missing[*]}"
            in_chroot "$root" apt-get update -q
            in_chroot "$root" apt-get install -y -q --no-install-recommends "${missing[@]}"
        fi
        echo "machine: $(in_chroot "$root" uname -m), $(in_chroot "$root" sh -c '. /etc/os-release; echo "$PRETTY_NAME"')"
        echo "python:  $(in_chroot "$root" python3 --version)"
        if in_chroot "$root" sh -c 'command -v rustc' >/dev/null; then
            echo "rustc:   $(in_chroot "$root" rustc --version)"
            echo "cargo:   $(in_chroot "$root" cargo --version)"
        fi
    }

    # copy_source ROOT: the source as git tracks it (edits in the work tree included, untracked files and build
    # output not), at IN_ROOT_REPO in ROOT.
    copy_source() {
        local root="$1"
        rm -rf "${root:?}$IN_ROOT_REPO"
        mkdir -p "$root$IN_ROOT_REPO"
        (cd "$REPO" && git ls-files -z --cached | xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1"' _ {} \
            | tar --null -T - -cf -) | tar -xf - -C "$root$IN_ROOT_REPO"
    }

    # 1. The roots.
    packages="$CYCLE_PACKAGES"
    [ "$cross" -eq 1 ] || [ -n "$wheel" ] || packages="$packages,$NATIVE_BUILD_PACKAGES"
    phase "root: arm64 Debian trixie at $ARM64_ROOT"
    make_root "$ARM64_ROOT" arm64 "$packages"
    phase_end root
    if [ "$cross" -eq 1 ] && [ -z "$wheel" ]; then
        phase "cross root: amd64 Debian trixie at $CROSS_ROOT"
        make_root "$CROSS_ROOT" amd64 "$CROSS_PACKAGES" "$CROSS_FOREIGN_PACKAGES"
        echo "aarch64 std: $(in_chroot "$CROSS_ROOT" sh -c "ls -d \$(rustc --print sysroot)/lib/rustlib/$TARGET")"
        phase_end "cross root"
    fi
    [ "$prepare_only" -eq 1 ] && return 0

    # 2. The source.
    phase "source: copy the tracked files to $IN_ROOT_REPO"
    copy_source "$ARM64_ROOT"
    [ "$cross" -eq 1 ] && [ -z "$wheel" ] && copy_source "$CROSS_ROOT"
    mkdir -p "$ARM64_ROOT$IN_ROOT_REPO/dist"
    phase_end source

    # 3. The build, from the committed lock file.
    if [ -n "$wheel" ]; then
        cp "$wheel" "$ARM64_ROOT$IN_ROOT_REPO/dist/"
    elif [ "$cross" -eq 1 ]; then
        phase "build: scripts/build-wheel.sh --target $TARGET --no-universal (on the host, CARGO_BUILD_JOBS=1, nice $NICE)"
        in_chroot "$CROSS_ROOT" sh -c "cd $IN_ROOT_REPO && scripts/build-wheel.sh --target $TARGET --no-universal"
        # build-wheel.sh does not pass --locked: the build must have left the committed lock file as it was.
        cmp -s "$REPO/Cargo.lock" "$CROSS_ROOT$IN_ROOT_REPO/Cargo.lock" || fail "the build changed Cargo.lock"
        set -- "$CROSS_ROOT$IN_ROOT_REPO"/dist/datadog_huntress-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] || fail "expected one wheel in $CROSS_ROOT$IN_ROOT_REPO/dist, found: $*"
        cp "$1" "$ARM64_ROOT$IN_ROOT_REPO/dist/"
        wheel="$1"
        phase_end build
    else
        phase "build: maturin build --release --locked (Debian's rustc under emulation, CARGO_BUILD_JOBS=1, nice $NICE)"
        maturin_pin="$(grep -E '^maturin==' "$REPO/requirements-dev.txt")"
        if [ ! -x "$ARM64_ROOT/opt/maturin/bin/maturin" ]; then
            in_root python3 -m venv /opt/maturin
            in_root /opt/maturin/bin/python -m pip install -q --disable-pip-version-check "$maturin_pin"
        fi
        in_root sh -c "cd $IN_ROOT_REPO && /opt/maturin/bin/maturin build --release --locked --out dist"
        set -- "$ARM64_ROOT$IN_ROOT_REPO"/dist/datadog_huntress-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] || fail "expected one wheel in $IN_ROOT_REPO/dist, found: $*"
        wheel="$1"
        phase_end build
    fi
    wheel_in_root="$IN_ROOT_REPO/dist/$(basename "$wheel")"

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
    echo "emulated: $(in_root uname -m), $(in_root python3 -c 'import platform; print(platform.machine(), platform.python_version())')"
    in_root env PYTHON=/usr/bin/python3 "$IN_ROOT_REPO/scripts/wheel-cycle.sh" "$wheel_in_root"
    phase_end cycle

    echo "arm64-cycle ok: $(( $(date +%s) - started )) s in all"
}

# Everything runs from main, so that an edit of this file during a run cannot change the run.
main "$@"
