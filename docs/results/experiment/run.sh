#!/bin/sh
# Reproduces docs/results/experiment: the corpus, the three runs (baseline, full
# V-scale with learnable theta, backward-only V-scale), the tables and figures,
# and models/default. About 90 minutes on 2 cores (the runs share them).
#   bash docs/results/experiment/run.sh [RUNS_DIR]
set -eu
cd "$(dirname "$0")/../../.."
RUNS=${1:-.cache/exp3}
DATA=.cache/corpus/docs-v2
if [ ! -f $DATA/train.bin ]; then
    tools/corpus/fetch.sh .cache/corpus/debs
    .venv/bin/python tools/corpus/prepare.py --out $DATA --deb .cache/corpus/debs/*.deb
fi
mkdir -p "$RUNS"
for m in off full backward-only; do
    build/examples/train/gsink-train --data $DATA --out "$RUNS/$m" --preset exp --layers 6 \
        --windows doc-start --steps 7000 --seed 1 --threads 1 --vscale $m \
        --diag-every 250 --eval-every 250 --ckpt-every 1000 --no-progress --log-every 100 \
        > "$RUNS/$m.log" 2>&1 &
done
wait
.venv/bin/python docs/results/experiment/analyze.py "$RUNS" docs/results/experiment > docs/results/experiment/tables.md
GSINK_LIBRARY=build/lib/libgsink.so .venv/bin/python tools/make_default_model.py "$RUNS/off/final" $DATA/val.bin models/default
