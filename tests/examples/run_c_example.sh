#!/bin/sh
# Installs libgsink into a staging directory (meson install --destdir), then
# builds examples/c/analyze.c exactly as a user would, with
#     cc analyze.c $(pkg-config --cflags --libs gsink)
# against the installed header, gsink.pc and library, and runs it.
# Usage: run_c_example.sh SOURCE_ROOT BUILD_ROOT
set -eu
src=${1:?usage: run_c_example.sh SOURCE_ROOT BUILD_ROOT}
build=${2:?usage: run_c_example.sh SOURCE_ROOT BUILD_ROOT}
stage="$build/tests/examples/c-install"
rm -rf "$stage"
mkdir -p "$stage"

meson install -C "$build" --no-rebuild --destdir "$stage/root" --quiet >"$stage/install.log" 2>&1 || {
    cat "$stage/install.log" >&2
    echo "run_c_example: meson install failed" >&2
    exit 1
}
pc=$(find "$stage/root" -name gsink.pc | head -n 1)
[ -n "$pc" ] || { echo "run_c_example: gsink.pc was not installed" >&2; exit 1; }

# The .pc file names the final prefix; the sysroot variable maps its -I/-L
# into the staging directory.
export PKG_CONFIG_PATH="$(dirname "$pc")"
export PKG_CONFIG_SYSROOT_DIR="$stage/root"
export PKG_CONFIG_LIBDIR="$(dirname "$pc")"
cflags=$(pkg-config --cflags gsink)
libs=$(pkg-config --libs gsink)
echo "pkg-config --cflags --libs gsink: $cflags $libs"
case "$cflags" in
    *"-I$stage/root/"*) ;;
    *) echo "run_c_example: pkg-config does not point into the staged install" >&2; exit 1 ;;
esac

CC=${CC:-cc}
# shellcheck disable=SC2086  # word splitting of the pkg-config output is intended
"$CC" -std=c11 -Wall -Wextra -Werror -o "$stage/analyze" "$src/examples/c/analyze.c" $cflags $libs

# The -L directory already carries the sysroot prefix.
libdir=$(pkg-config --libs-only-L gsink | sed 's/^ *-L//; s/ .*$//')
export LD_LIBRARY_PATH="$libdir"
# The program must resolve libgsink from the staged install, not the build.
ldd "$stage/analyze" | grep libgsink
ldd "$stage/analyze" | grep -q "$stage/root" || { echo "run_c_example: not linked to the installed library" >&2; exit 1; }

out=$("$stage/analyze")
echo "$out"
echo "$out" | grep -qE '^ *layer +R_GS +sink_rate +t0/early' || { echo "run_c_example: no table header" >&2; exit 1; }
rows=$(echo "$out" | grep -cE '^ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$')
[ "$rows" -eq 2 ] || { echo "run_c_example: expected 2 layer rows for the micro preset, got $rows" >&2; exit 1; }

# Same numbers as the copy built in the tree.
"$stage/analyze" --numbers >"$stage/installed.txt"
"$build/examples/c/analyze" --numbers >"$stage/tree.txt"
diff -u "$stage/tree.txt" "$stage/installed.txt"
# The operations example builds and runs the same way.
# shellcheck disable=SC2086
"$CC" -std=c11 -Wall -Wextra -Werror -o "$stage/ops" "$src/examples/c/ops.c" $cflags $libs -lm
"$stage/ops" | grep -q "sink rate (eps 0.3): 1.00" || { echo "run_c_example: ops example output" >&2; exit 1; }
echo "run_c_example: ok"
