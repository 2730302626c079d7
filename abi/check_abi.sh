#!/bin/sh
# ABI baseline of libgsink (abigail-tools).
#   check_abi.sh check  LIB   compare LIB (built with -g) with abi/libgsink.abi
#   check_abi.sh update LIB   rewrite abi/libgsink.abi from LIB
# The debug-info library is built by meson: `meson compile -C BUILD abi/libgsink.so`
# (target in abi/meson.build); `meson test -C BUILD --suite abi` runs the check.
# Additions (new functions, status 4 from abidiff) pass with a note to update
# the baseline; incompatible changes (status 8) fail.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
mode=${1:?usage: check_abi.sh check|update LIB}
lib=${2:?usage: check_abi.sh check|update LIB}
baseline="$here/libgsink.abi"

dump() { # out
    abidw --headers-dir "$root/include" --drop-private-types --no-corpus-path \
        --no-show-locs --no-comp-dir-path --exported-interfaces-only --out-file "$1" "$lib"
}

case "$mode" in
update)
    dump "$baseline"
    echo "check_abi: wrote $baseline"
    ;;
check)
    [ -f "$baseline" ] || { echo "check_abi: no baseline $baseline; run '$0 update LIB'" >&2; exit 1; }
    if ! grep -q "<abi-instr" "$baseline"; then
        echo "check_abi: the baseline carries no type information (made from a library without -g)" >&2
        exit 1
    fi
    set +e
    abidiff --headers-dir2 "$root/include" --drop-private-types --no-show-locs "$baseline" "$lib"
    rc=$?
    set -e
    if [ $((rc & 1)) -ne 0 ] || [ $((rc & 2)) -ne 0 ]; then
        echo "check_abi: abidiff failed (status $rc)" >&2
        exit 1
    fi
    if [ $((rc & 8)) -ne 0 ]; then
        echo "check_abi: INCOMPATIBLE ABI change against abi/libgsink.abi (see above)." >&2
        echo "check_abi: keep the old ABI (add _v2 functions, append struct fields) or bump the soversion." >&2
        exit 1
    fi
    if [ $((rc & 4)) -ne 0 ]; then
        echo "check_abi: compatible ABI additions; update the baseline with: abi/check_abi.sh update $lib"
        exit 0
    fi
    echo "check_abi: ABI identical to abi/libgsink.abi"
    ;;
*)
    echo "usage: check_abi.sh check|update LIB" >&2
    exit 2
    ;;
esac
