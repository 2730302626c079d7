#!/usr/bin/env bash
# Runs a command on this Debian machine roughly as the lent GPU machine would
# see it (docs/gpu-session.md), to check tools/gpu-session.sh here:
#   tools/gpu-minenv.sh bash tools/gpu-session.sh test /tmp/gsink-out --emulate
# In a private mount namespace (root + unshare; nothing changes outside it)
# Debian's BLIS, check, subunit and their .pc files, pkg-config, swig, tclsh,
# bindgen, abigail-tools, cargo and rustc are absent (overlays whiting them
# out), so the build must take BLIS and check from the kit; PATH is reduced
# to the CUDA and system directories (no ~/.cargo, no pyenv), after
# GSINK_MINENV_PATH if set (e.g. a venv with pip's meson and ninja, as there).
set -euo pipefail
if [ $# = 0 ]; then sed -n '2,10p' "$0"; exit 2; fi
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
  echo "gpu-minenv: needs root and unshare" >&2
  exit 1
fi
exec unshare -m --propagation private bash -c '
  set -e
  t=$(mktemp -d /tmp/gsink-minenv.XXXXXX)
  mount -t tmpfs gsink-minenv "$t"
  hide() { # DIR NAME...: an overlay on DIR whose upper layer whites NAMEs out
    local dir=$1 key; shift
    key=$(echo "$dir" | tr / _)
    mkdir -p "$t/$key/up" "$t/$key/work"
    for n in "$@"; do
      if [ -e "$dir/$n" ] || [ -L "$dir/$n" ]; then mknod "$t/$key/up/$n" c 0 0; fi
    done
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$t/$key/up,workdir=$t/$key/work" "$dir"
  }
  hide /usr/bin pkg-config pkgconf x86_64-linux-gnu-pkg-config swig swig4.0 tclsh tclsh8.6 \
       bindgen abidiff abidw cargo rustc checkmk
  hide /usr/include check.h check_stdint.h subunit
  hide /usr/include/x86_64-linux-gnu blis.h cblas.h blis-openmp blis-pthread blis-serial
  hide /usr/lib/x86_64-linux-gnu libcheck.a libcheck_pic.a libsubunit.a libsubunit.so \
       libsubunit.so.0 libsubunit.so.0.0.0 libblis.a libblis.so libblis.so.4 \
       blis-pthread blis-serial
  # blis-openmp/ stays, less its libblis.a: its libblas.so.3 is the BLAS
  # alternative that Debian numpy loads (the .venv of the emulated Python
  # suites); the build links only libblis, which it must take from the kit
  hide /usr/lib/x86_64-linux-gnu/blis-openmp libblis.a libblis.so
  hide /usr/lib/x86_64-linux-gnu/pkgconfig check.pc libsubunit.pc
  export PATH=${GSINK_MINENV_PATH:+$GSINK_MINENV_PATH:}/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin
  unset PKG_CONFIG_PATH CPATH LIBRARY_PATH LD_LIBRARY_PATH
  echo "gpu-minenv: hidden: BLIS, check, subunit, pkg-config, swig, tclsh, bindgen, abigail, cargo; PATH=$PATH" >&2
  exec "$@"
' gpu-minenv "$@"
