#!/bin/sh
# Fails if libgsink exports any dynamic symbol that is not part of the public
# API: every defined symbol must start with gsink_ (the version node GSINK_0,
# an absolute symbol from the linker version script, is allowed), and every
# function declared GSINK_API in include/gsink.h must be exported.
# Usage: check_exports.sh path/to/libgsink.so [path/to/gsink.h]
set -eu
lib=${1:?usage: check_exports.sh LIBGSINK_SO [GSINK_H]}
header=${2:-}
NM=${NM:-nm}

syms=$("$NM" -D --defined-only "$lib")
bad=$(echo "$syms" | awk '
    $2 == "A" && $3 ~ /^GSINK_[0-9]+$/ { next }     # version node
    { name = $NF; sub(/@.*/, "", name); if (name !~ /^gsink_/) print $0 }')
if [ -n "$bad" ]; then
    echo "check_exports: symbols outside the gsink_ namespace are exported from $lib:" >&2
    echo "$bad" >&2
    exit 1
fi
internal=$(echo "$syms" | awk '{ name = $NF; sub(/@.*/, "", name); if (name ~ /^gsink__/) print $0 }')
if [ -n "$internal" ]; then
    echo "check_exports: internal gsink__ helpers are exported:" >&2
    echo "$internal" >&2
    exit 1
fi
exported=$(echo "$syms" | awk '{ name = $NF; sub(/@.*/, "", name); print name }' | sort -u)
echo "check_exports: $(echo "$exported" | grep -c '^gsink_') gsink_ symbols, nothing else"

if [ -n "$header" ]; then
    declared=$(sed -n 's/^GSINK_API[^(]*[ *]\(gsink_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u)
    missing=$(printf '%s\n' "$declared" | while read -r f; do
        printf '%s\n' "$exported" | grep -qx "$f" || echo "$f"
    done)
    if [ -n "$missing" ]; then
        echo "check_exports: declared in $header but not exported:" >&2
        echo "$missing" >&2
        exit 1
    fi
    echo "check_exports: all $(printf '%s\n' "$declared" | wc -l) GSINK_API functions of the header are exported"
fi
