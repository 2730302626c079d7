#!/usr/bin/env bash
# Sets up a Debian 12 machine for libgsink and builds it into build/.
#  - installs the Debian packages the build and the test suites need (when
#    running as root or with sudo; otherwise it only checks for them),
#  - creates .venv (Debian's python3 with --system-site-packages, so Debian's
#    torch and numpy are visible) and adds the PyPI packages the tests use,
#  - configures and compiles with meson.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(meson ninja-build pkg-config gcc g++ libblis-dev check python3-venv python3-numpy
      python3-torch python3-pytest python3-matplotlib swig tcl-dev bindgen abigail-tools
      libclang-rt-14-dev unzip libopenmpi-dev openmpi-bin)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "bootstrap: missing packages and no root: ${missing[*]}" >&2; exit 1; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# Pinned PyPI packages used by the reference tests: gguf (independent GGUF
# reader/quantiser), safetensors (PyTorch-side checkpoints), tokenizers
# (independent BPE), transformers 4.40 (a release that still runs on
# Debian's torch 1.13) to check our checkpoints open in HuggingFace, and
# sentencepiece + protobuf (Google's SentencePiece BPE, and transformers'
# converter of its models to tokenizer.json).
pins=("gguf==0.19.0" "safetensors==0.8.0" "tokenizers==0.19.1" "transformers==4.40.2"
      "sentencepiece==0.2.0" "protobuf==4.25.3")
if ! .venv/bin/python - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    sys.exit(0 if all(version(p.split("==")[0]) == p.split("==")[1] for p in sys.argv[1:]) else 1)
except PackageNotFoundError:
    sys.exit(1)
PY
then
  .venv/bin/pip install -q "${pins[@]}"
fi

if [ ! -f build/build.ninja ]; then
  # shellcheck disable=SC2086
  meson setup build -Dbuildtype=release ${GSINK_MESON_ARGS:-} >/dev/null
fi
meson compile -C build
