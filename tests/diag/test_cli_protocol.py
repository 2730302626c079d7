"""gsink-cli analyze --sequences N --micro-batch M: the report equals the
one-batch report of the same N sequences (every number to 1e-6 relative),
the progress line reaches the last sequence, and bad values are usage errors."""
import json
import os
import subprocess

import pytest

CLI = os.environ.get("GSINK_CLI")


def analyze(tmp_path, name, *extra):
    if not CLI:
        pytest.fail("GSINK_CLI is not set (run through meson test)")
    out = tmp_path / name
    r = subprocess.run([CLI, "analyze", "--preset", "tiny", "--seq", "48", "--seed", "5", "--threads", "1",
                        "--json", str(out), *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.load(open(out)), r


def compare(a, b, path="", skip=("input",), rel=1e-6, abs=1e-7):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k not in skip:
                compare(a[k], b[k], path + "." + k, skip, rel, abs)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, "%s[%d]" % (path, i), skip, rel, abs)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=abs), path
    else:
        assert a == b, path


@pytest.mark.parametrize("agg", ["sum", "per-seq"])
def test_micro_batches_equal_one_batch(tmp_path, agg):
    one, _ = analyze(tmp_path, "one.json", "--sequences", "7", "--agg", agg, "-q")
    streamed, r = analyze(tmp_path, "mb.json", "--sequences", "7", "--micro-batch", "3", "--agg", agg)
    assert one["input"]["sequences"] == streamed["input"]["sequences"] == 7
    assert one["input"]["micro_batches"] == 1 and streamed["input"]["micro_batches"] == 3
    assert streamed["input"]["loss"] == pytest.approx(one["input"]["loss"], rel=1e-6)
    compare(one, streamed)
    # stderr is not a terminal: a progress line per tenth, the last at 7/7
    lines = [x for x in r.stderr.splitlines() if "sequences" in x and "tokens/s" in x]
    assert lines and "7/7 sequences" in lines[-1]
    assert "in micro-batches of 3" in r.stdout


def test_quiet_and_no_progress_print_nothing(tmp_path):
    for flag in ("-q", "--no-progress"):
        _, r = analyze(tmp_path, "q.json", "--sequences", "3", "--micro-batch", "1", flag)
        assert "tokens/s" not in r.stderr


@pytest.mark.parametrize("bad", [["--micro-batch", "0"], ["--sequences", "-1"], ["--micro-batch", "x"]])
def test_bad_values_are_usage_errors(bad):
    r = subprocess.run([CLI, "analyze", "--preset", "tiny", *bad], capture_output=True, text=True)
    assert r.returncode == 2 and "expects an integer" in r.stderr


def test_cuda_device_streams_like_cpu(tmp_path):
    """The protocol on the CUDA backend (a GPU, or the emulated module in the cuda-emu suite): the streamed
    report of 5 sequences in micro-batches of 2 equals the CPU's, fp32, to summation-order rounding."""
    info = subprocess.run([CLI, "info"], capture_output=True, text=True).stdout
    if not any(l.strip().startswith("cuda:") and "none" not in l for l in info.splitlines()):
        pytest.skip("no CUDA device (this test runs in the cuda-emu suite on the emulated module)")
    cpu, _ = analyze(tmp_path, "cpu.json", "--sequences", "5", "--micro-batch", "2", "-q", "--seq", "40")
    gpu, _ = analyze(tmp_path, "gpu.json", "--sequences", "5", "--micro-batch", "2", "-q", "--seq", "40",
                     "--device", "cuda")
    assert gpu["input"]["micro_batches"] == 3
    compare(cpu, gpu, rel=2e-4, abs=2e-6)
