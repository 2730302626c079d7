"""docs/results/experiment-gpu/run.sh on the CPU at a tiny shape: the script
that a lent GPU runs must work as written (flags, output layout, summary)."""
import json
import os
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.parametrize("device", ["cpu", "cuda-emulated"])
def test_run_sh_smoke(tmp_path, small_data, device):
    out = tmp_path / "exp"
    # the summary's medians take steps after 50; the emulated device is slow: fewer, smaller steps
    solo, steps, bt = (55, 60, "--batch 2 --seq 64") if device == "cpu" else (51, 52, "--batch 1 --seq 32")
    env = dict(os.environ, DEVICE="cpu", PRECISION="fp32", SOLO_STEPS=str(solo), DATA=str(small_data),
               TRAIN=os.environ["GSINK_TRAIN"],
               ARGS="--d-model 32 --layers 2 --heads 2 --kv-heads 1 --d-head 16 --d-ff 64 "
                    "--threads 1 --warmup 5 --eval-batches 1 " + bt)
    if device == "cuda-emulated":
        # the GPU flags (--device cuda --precision bf16) on the emulated CUDA module
        if not os.environ.get("GSINK_CUDA_EMU"):
            pytest.skip("no emulated CUDA module in this build (sanitizer build or no C++ compiler)")
        env.update(DEVICE="cuda", PRECISION="bf16", GSINK_CUDA_MODULE=os.environ["GSINK_CUDA_EMU"])
    r = subprocess.run(["bash", os.path.join(ROOT, "docs", "results", "experiment-gpu", "run.sh"), str(out), str(steps)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = (out / "README.txt").read_text()
    for phase, n in (("solo", solo), ("runs", steps)):
        for mode in ("off", "full", "backward-only"):
            rows = [json.loads(x) for x in open(out / phase / mode / "log.jsonl")]
            assert max(x.get("step", 0) for x in rows) == n
            line = [x for x in summary.splitlines() if x.startswith(phase) and x.split()[1] == mode]
            assert len(line) == 1 and "steps %6d" % n in line[0], summary
            tok_s = float(line[0].split()[-1])
            assert tok_s > 0
    # the side-by-side arms wrote their diagnostics, which the analysis reads
    for mode in ("off", "full", "backward-only"):
        assert (out / "runs" / mode / "final_diag.json").exists()
        assert (out / "runs" / mode / "diag.jsonl").stat().st_size > 0
