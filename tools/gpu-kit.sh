#!/usr/bin/env bash
# Prepares .gpu-kit/ (git-ignored) for a run on a lent GPU machine that has
# nvcc, gcc, python3 and pip's meson/ninja but no libblis, no check and no
# package repositories (see docs/gpu-session.md). Runs HERE, on Debian 12:
#  - `apt-get download`s the Debian packages the build links against and the
#    GPU machine lacks (BLIS runtime + headers, check + subunit, and libgomp1
#    as a fallback for BLIS's OpenMP runtime), once;
#  - writes .gpu-kit/stamp (commit, local modifications, date) and
#    .gpu-kit/manifest.sha256 (the tracked files as they are now), so that
#    tools/gpu-session.sh can say which source it built. Run it again right
#    before every device call: downloads are skipped, the stamp is refreshed.
# Then: device run, command `bash tools/gpu-session.sh test "$OUT"`, carry [".gpu-kit"].
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
# libblis-dev and libblis4 are empty metapackages (their files come from the
# flavour packages through update-alternatives): take the OpenMP flavour
# directly. check ships only static libraries (libcheck_pic.a), which need
# libsubunit at link time and run time.
pkgs=(libblis4-openmp libblis-openmp-dev check libsubunit-dev libsubunit0 libgomp1)
mkdir -p "$KIT"

apt_opts=()
[ "$(id -u)" = 0 ] && apt_opts+=(-oAPT::Sandbox::User=root)
if [ "$(dpkg --print-architecture)" != amd64 ]; then
  # The GPU machine is x86-64: fetch amd64 packages from a separate list.
  mkdir -p /tmp/gsink-apt-amd64/partial
  apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gsink-apt-amd64)
  apt-get "${apt_opts[@]}" update -qq
fi

for p in "${pkgs[@]}"; do
  if compgen -G "$KIT/${p}_*_amd64.deb" >/dev/null; then
    continue
  fi
  echo "gpu-kit: downloading $p"
  if ! (cd "$KIT" && apt-get "${apt_opts[@]}" download -q "$p:amd64" >/dev/null); then
    echo "gpu-kit: apt-get download $p failed (try: apt-get update)" >&2
    exit 1
  fi
done
# One version of each package only (an older one after an upgrade here).
for p in "${pkgs[@]}"; do
  mapfile -t debs < <(ls -1 "$KIT/${p}"_*_amd64.deb | sort -V)
  if ((${#debs[@]} > 1)); then
    rm -f "${debs[@]:0:${#debs[@]}-1}"
  fi
done

# Which source the device will build: commit, local changes, file hashes.
{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "describe: $(git log -1 --format='%h %cd %s' --date=short 2>/dev/null || echo unknown)"
  echo "branch: $(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)"
  echo "local_changes: $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) tracked files modified"
  echo "stamped: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
} > "$KIT/stamp"
git ls-files -z | xargs -0 sha256sum > "$KIT/manifest.sha256"

kit_bytes=$(du -cb "$KIT" | tail -1 | cut -f1)
tracked_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
untracked_bytes=$( (git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1) || true)
untracked_bytes=${untracked_bytes:-0}
total=$((kit_bytes + tracked_bytes + untracked_bytes))
ls -l "$KIT"
printf 'gpu-kit: kit %.1f MiB + tracked %.1f MiB + untracked %.1f MiB = %.1f MiB of the 64 MiB that travel\n' \
  "$(echo "$kit_bytes/1048576" | bc -l)" "$(echo "$tracked_bytes/1048576" | bc -l)" \
  "$(echo "$untracked_bytes/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if ((total > 60 * 1048576)); then
  echo "gpu-kit: too close to the 64 MiB limit" >&2
  exit 1
fi
echo "gpu-kit: ready; $(head -1 "$KIT/stamp")"
