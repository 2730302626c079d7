#!/bin/sh
# Downloads the .deb files of the training corpus's source packages into DIR
# (no installation, no root needed beyond what apt-get download needs), for
#   tools/corpus/prepare.py --out OUT --deb DIR/*.deb
# The package list must match SOURCES in tools/corpus/prepare.py (checked by
# tests/train/test_tool.py).
#
# usage: tools/corpus/fetch.sh DIR [PACKAGE...]   (default: all source packages)
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [PACKAGE...]" >&2
    exit 2
fi
dir=$1
shift
if [ $# -eq 0 ]; then
    set -- linux-doc-6.1 python3.11-doc debian-handbook debian-reference-en git-doc perl-doc \
        postgresql-doc-15 python-django-doc rust-doc sqlite3-doc
fi
mkdir -p "$dir"
cd "$dir"
apt-get download "$@"
ls -l -- *.deb
