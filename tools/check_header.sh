#!/bin/sh
# The public header must compile on its own as strict C11 and as C++.
# Usage: check_header.sh path/to/include
set -eu
inc=${1:?usage: check_header.sh INCLUDE_DIR}
CC=${CC:-cc}
CXX=${CXX:-c++}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gsink-header.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
printf '#include <gsink.h>\nint main(void) { return gsink_version_number() == GSINK_VERSION_NUMBER ? 0 : 1; }\n' >"$tmp/c.c"
cp "$tmp/c.c" "$tmp/cxx.cpp"
"$CC" -std=c11 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$inc" "$tmp/c.c"
echo "check_header: gsink.h compiles with $CC -std=c11 -pedantic -Werror"
"$CC" -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$inc" "$tmp/c.c"
echo "check_header: gsink.h compiles with $CC -std=c99 -pedantic -Werror"
if command -v "$CXX" >/dev/null 2>&1; then
    "$CXX" -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$inc" "$tmp/cxx.cpp"
    echo "check_header: gsink.h compiles with $CXX -std=c++11 -pedantic -Werror"
else
    echo "check_header: $CXX not found; C++ check skipped" >&2
    exit 77
fi
