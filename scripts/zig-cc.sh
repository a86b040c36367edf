#!/usr/bin/env bash
# The C compiler for the release wheel: maturin's zig wrapper (glibc 2.17),
# without `-static`. isal-sys passes `LDFLAGS=-static` to ISA-L's configure,
# whose test programs zig cannot link statically against glibc.
args=()
for arg in "$@"; do
    [[ $arg == -static ]] || args+=("$arg")
done
exec "$CC_x86_64_unknown_linux_gnu" "${args[@]}"
