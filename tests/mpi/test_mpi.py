"""Data parallel over MPI (docs/distributed.md): gsink-train on 2 ranks against one process on the
same global batch, checkpoints that resume on 1 and 2 ranks, the start-of-run broadcast and its
checksum, and gsink-cli analyze's report on 2 ranks. Tiny models: the suite runs in well under a
minute on 2 cores. GSINK_TRAIN, GSINK_CLI and MPIRUN come from meson (tests/mpi/meson.build)."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "corpus"))

import prepare  # noqa: E402

TRAIN = os.environ.get("GSINK_TRAIN", os.path.join(ROOT, "build", "examples", "train", "gsink-train"))
CLI = os.environ.get("GSINK_CLI", os.path.join(ROOT, "build", "examples", "gsink-cli"))
MPIRUN = os.environ.get("MPIRUN", shutil.which("mpirun") or "mpirun")
# Root in a container (CI): Open MPI wants both; shared memory + self only, no binding, 2 ranks on any CPUs.
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
MPI_ARGS = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]

COMMON = ["--preset", "test", "--threads", "1", "--seq", "32", "--eval-every", "3", "--eval-batches", "2",
          "--diag-every", "4", "--no-progress", "--warmup", "2"]


def _env(extra=None):
    e = dict(os.environ)
    e.update(MPI_ENV)
    if extra:
        e.update(extra)
    return e


def run1(*args, check=True, env=None):
    r = subprocess.run([TRAIN, *map(str, args)], capture_output=True, text=True, env=_env(env), timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"gsink-train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def mpirun(np_, cmd, *args, check=True, env=None, mpmd=None):
    argv = [MPIRUN, "-np", str(np_), *MPI_ARGS, cmd, *map(str, args)]
    if mpmd:  # more application contexts: [(n, argv), ...]
        for n, more in mpmd:
            argv += [":", "-np", str(n), cmd, *map(str, more)]
    r = subprocess.run(argv, capture_output=True, text=True, env=_env(env), timeout=180)
    if check and r.returncode != 0:
        raise AssertionError(f"mpirun {cmd} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Markov-like stream over 512 ids: enough structure for gradients that matter."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n = 40000
    ids = np.zeros(n, np.int64)
    steps = rng.integers(0, 5, n)
    for i in range(1, n):
        ids[i] = (ids[i - 1] * 7 + steps[i]) % 512
    prepare.write_tokens(str(d / "train.bin"), ids, 512, 0)
    prepare.write_tokens(str(d / "val.bin"), ids[:6000], 512, 0)
    return d


def log(out):
    steps, vals = {}, {}
    for line in (out / "log.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "loss" in d:
            steps[d["step"]] = d["loss"]
        if "val_loss" in d:
            vals[d["step"]] = d["val_loss"]
    return steps, vals


def weights(path):
    """{name: float32 array} of a model.safetensors."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        assert v["dtype"] == "F32"
        out[k] = np.frombuffer(raw[base + a:base + b], np.float32)
    return out


def assert_losses_close(a, b, rtol=1e-6):
    assert sorted(a) == sorted(b)
    for s in a:
        assert abs(a[s] - b[s]) <= rtol * max(1.0, abs(a[s])), (s, a[s], b[s])


def assert_weights_close(pa, pb, atol=1e-5):
    wa, wb = weights(pa), weights(pb)
    assert sorted(wa) == sorted(wb)
    worst = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
    assert worst <= atol, worst


# (3, 2): uneven rows (1 and 2) and accumulation; V-scale: the learnable theta's gradients are exchanged too
@pytest.mark.parametrize("batch,accum,more", [(4, 1, []), (3, 2, []), (4, 1, ["--vscale", "full"])])
def test_two_ranks_match_one_process(data, tmp_path, batch, accum, more):
    args = ["--data", data, *COMMON, "--seed", 7, "--steps", 8, "--batch", batch, "--grad-accum", accum, *more]
    one, two = tmp_path / "one", tmp_path / "two"
    run1(*args, "--out", one)
    r = mpirun(2, TRAIN, *args, "--out", two)
    assert "data parallel over 2 ranks" in r.stderr
    (l1, v1), (l2, v2) = log(one), log(two)
    assert sorted(l1) == list(range(1, 9))
    assert_losses_close(l1, l2)
    assert_losses_close(v1, v2)
    assert_weights_close(one / "final" / "model.safetensors", two / "final" / "model.safetensors")
    cfg = json.loads((two / "log.jsonl").read_text().splitlines()[0])["config"]
    assert cfg["ranks"] == 2 and cfg["batch"] == batch
    # rank 0 alone writes the run directory: one log, one diag stream of the same lines
    assert len((two / "diag.jsonl").read_text().splitlines()) == len((one / "diag.jsonl").read_text().splitlines())
    if more:  # theta after training, from the last diagnostics line
        t1 = [l.get("theta") for l in json.loads((one / "diag.jsonl").read_text().splitlines()[-1])["layers"]]
        t2 = [l.get("theta") for l in json.loads((two / "diag.jsonl").read_text().splitlines()[-1])["layers"]]
        assert t1[0] is not None and np.allclose(t1, t2, rtol=1e-4, atol=1e-7), (t1, t2)


def test_gradient_buckets_do_not_change_the_result(data, tmp_path):
    """The all-reduce runs in buckets (25 MB by default; the test model fits one): many small buckets
    (10 KB: 41 of them here) give the same weights bit for bit, as each value is summed once either way."""
    args = ["--data", data, *COMMON, "--seed", 2, "--steps", 4, "--batch", 4]
    mpirun(2, TRAIN, *args, "--out", tmp_path / "one_bucket")
    r = mpirun(2, TRAIN, *args, "--out", tmp_path / "buckets", env={"GSINK_DIST_BUCKET_MB": "0.01"})
    assert "buckets of 0.01 MB" in r.stderr, r.stderr[:500]
    assert log(tmp_path / "one_bucket")[0] == log(tmp_path / "buckets")[0]
    for f in ("state.bin", "optimizer.bin"):
        a = (tmp_path / "one_bucket" / "ckpt-00000004" / f).read_bytes()
        assert a == (tmp_path / "buckets" / "ckpt-00000004" / f).read_bytes(), f


def test_checkpoint_of_two_ranks_resumes_on_one_and_two(data, tmp_path):
    args = ["--data", data, *COMMON, "--seed", 3, "--steps", 10, "--batch", 4, "--ckpt-every", 5]
    ref1, ref2 = tmp_path / "ref1", tmp_path / "ref2"
    run1(*args, "--out", ref1)
    mpirun(2, TRAIN, *args, "--out", ref2)
    stopped = tmp_path / "stopped"
    mpirun(2, TRAIN, *args, "--out", stopped, "--stop-at", 5)
    assert (stopped / "latest").read_text().strip() == "ckpt-00000005"
    on1, on2 = tmp_path / "on1", tmp_path / "on2"
    shutil.copytree(stopped, on1)
    shutil.copytree(stopped, on2)
    run1(*args, "--out", on1, "--resume")
    mpirun(2, TRAIN, *args, "--out", on2, "--resume")
    # 2 -> 2 continues the 2-rank run bit for bit (same partition of every batch)
    assert log(on2) == log(ref2)
    for f in ("state.bin", "optimizer.bin"):
        assert (on2 / "ckpt-00000010" / f).read_bytes() == (ref2 / "ckpt-00000010" / f).read_bytes(), f
    # 2 -> 1 continues like the single-process run, to fp32 rounding
    assert_losses_close(log(on1)[0], log(ref1)[0])
    assert_losses_close(log(on1)[1], log(ref1)[1])
    assert_weights_close(on1 / "final" / "model.safetensors", ref1 / "final" / "model.safetensors")
    # and a 1-process checkpoint resumes on 2 ranks
    one_stop = tmp_path / "one_stop"
    run1(*args, "--out", one_stop, "--stop-at", 5)
    mpirun(2, TRAIN, *args, "--out", one_stop, "--resume")
    assert_losses_close(log(one_stop)[0], log(ref1)[0])
    assert_weights_close(one_stop / "final" / "model.safetensors", ref1 / "final" / "model.safetensors")


def test_rank0_weights_and_data_order_win(data, tmp_path):
    """Ranks started with different seeds train rank 0's model on rank 0's data order."""
    base = ["--data", data, *COMMON, "--steps", 6, "--batch", 4]
    ref, out = tmp_path / "ref", tmp_path / "out"
    run1(*base, "--seed", 11, "--out", ref)
    mpirun(1, TRAIN, *base, "--seed", 11, "--out", out, mpmd=[(1, [*base, "--seed", 12345, "--out", out])])
    assert_losses_close(log(ref)[0], log(out)[0])
    assert_weights_close(ref / "final" / "model.safetensors", out / "final" / "model.safetensors")


def test_weight_checksum_mismatch_stops_the_run(data, tmp_path):
    args = ["--data", data, *COMMON, "--seed", 1, "--steps", 3, "--batch", 4, "--out", tmp_path / "o"]
    r = mpirun(2, TRAIN, *args, check=False, env={"GSINK_DIST_TEST_CORRUPT_RANK": "1"})
    assert r.returncode != 0
    assert "differ from rank 0" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o" / "final").exists()


def test_ranks_with_other_options_are_refused(data, tmp_path):
    base = ["--data", data, *COMMON, "--seed", 1, "--batch", 4, "--out", tmp_path / "o"]
    r = mpirun(1, TRAIN, *base, "--steps", 3, check=False, mpmd=[(1, [*base, "--steps", 4])])
    assert r.returncode != 0 and "other options than rank 0" in r.stderr, r.stderr[-2000:]
    # options that decide when the ranks meet (evaluations) are part of the check
    r = mpirun(1, TRAIN, *base, "--steps", 3, check=False, mpmd=[(1, [*base, "--steps", 3, "--eval-every", 2])])
    assert r.returncode != 0 and "other options than rank 0" in r.stderr, r.stderr[-2000:]


def test_global_batch_needs_a_row_per_rank(data, tmp_path):
    r = mpirun(2, TRAIN, "--data", data, *COMMON, "--steps", 1, "--batch", 1, "--out", tmp_path / "o", check=False)
    assert r.returncode != 0 and "at least one row per rank" in r.stderr


# ---- gsink-cli analyze on 2 ranks -----------------------------------------------------------------

MODEL = os.path.join(ROOT, "models", "default")


def analyze1(*args):
    r = subprocess.run([CLI, "analyze", *map(str, args)], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def table(text):
    """{layer: [values]} and the loss of gsink-cli's table."""
    rows, loss = {}, None
    for line in text.splitlines():
        if line.startswith("input:"):
            loss = float(line.rsplit("loss", 1)[1])
        f = line.split()
        if len(f) == 8 and f[0].isdigit():
            rows[int(f[0])] = [float(x) for x in f[1:]]
    return rows, loss


def assert_tables_equal(t1, t2):
    (r1, l1), (r2, l2) = table(t1), table(t2)
    assert r1 and sorted(r1) == sorted(r2)
    assert abs(l1 - l2) <= 1.1e-4
    for k in r1:
        for a, b in zip(r1[k], r2[k]):  # printed with 3 decimals / 4 significant digits: the last may round apart
            assert a == b or abs(a - b) <= 1.1e-3 + 1e-4 * abs(a), (k, r1[k], r2[k])


@pytest.mark.parametrize("agg", ["sum", "per-seq"])
def test_analyze_table_of_two_ranks_equals_one_process(agg):
    args = ["--model", MODEL, "--tokens", os.path.join(MODEL, "sample.tokens"), "--batch", 4, "--seq", 128,
            "--threads", 1, "--agg", agg]
    one = analyze1(*args)
    two = mpirun(2, CLI, "analyze", *args)
    assert "on 2 ranks" in two.stdout
    assert_tables_equal(one.stdout, two.stdout)
    # uneven split (3 sequences: 1 + 2) and random tokens from a preset
    args = ["--preset", "tiny", "--seed", 5, "--batch", 3, "--seq", 64, "--threads", 1, "--agg", agg]
    assert_tables_equal(analyze1(*args).stdout, mpirun(2, CLI, "analyze", *args).stdout)


def test_analyze_figures_of_two_ranks(tmp_path):
    """--plots on 2 ranks: rank 0 draws the same figures from the summed state (the numbers behind them are
    checked against one process in the report test below)."""
    args = ["--model", MODEL, "--tokens", os.path.join(MODEL, "sample.tokens"), "--batch", 4, "--seq", 128,
            "--threads", 1, "-q"]
    analyze1(*args, "--plots", tmp_path / "p1")
    mpirun(2, CLI, "analyze", *args, "--plots", tmp_path / "p2")
    svgs = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert len(svgs) == 3 and svgs == sorted(p.name for p in (tmp_path / "p2").iterdir())
    for f in svgs:
        one, two = (tmp_path / "p1" / f).read_text(), (tmp_path / "p2" / f).read_text()
        assert one.count("<circle") == two.count("<circle") > 0, f


def _close_json(a, b, path="$"):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _close_json(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close_json(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_analyze_json_report_reduced_across_ranks(tmp_path):
    """Each rank runs only its rows; the summed analysis states give the report of one process over the whole
    batch, to fp32 rounding."""
    args = ["--model", MODEL, "--tokens", os.path.join(MODEL, "sample.tokens"), "--batch", 4, "--seq", 128,
            "--threads", 1, "-q"]
    analyze1(*args, "--json", tmp_path / "one.json")
    r = mpirun(2, CLI, "analyze", *args, "--json", tmp_path / "two.json")
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert one["input"]["micro_batches"] == 1 and two["input"]["micro_batches"] == 2  # one per rank
    assert one["input"]["sequences"] == two["input"]["sequences"] == 4
    two["input"]["micro_batches"] = 1
    _close_json(one, two)


def test_analyze_refuses_ranks_with_other_weights():
    base = ["--preset", "tiny", "--batch", 2, "--seq", 32, "--threads", 1]
    r = mpirun(1, CLI, "analyze", *base, "--seed", 1, check=False, mpmd=[(1, ["analyze", *base, "--seed", 2])])
    assert r.returncode != 0 and "other weights than rank 0" in r.stderr, r.stderr[-2000:]


# ---- GPU ranks ------------------------------------------------------------------------------------


def _cuda_devices():
    r = subprocess.run([CLI, "info"], capture_output=True, text=True, env=_env(), timeout=60)
    return [l for l in r.stdout.splitlines() if l.strip().startswith("cuda:") and "none" not in l]


def test_nccl_needs_cuda_ranks(data, tmp_path):
    r = mpirun(2, TRAIN, "--data", data, *COMMON, "--steps", 1, "--batch", 2, "--out", tmp_path / "o", check=False,
               env={"GSINK_DIST_NCCL": "1"})
    assert r.returncode != 0 and "needs --device cuda" in r.stderr, r.stderr[-2000:]


@pytest.mark.skipif(not _cuda_devices(), reason="no CUDA device here (NCCL ranks need a GPU build and a GPU)")
@pytest.mark.parametrize("nccl", ["0", "1"])
def test_gpu_ranks_match_one_gpu_process(data, tmp_path, nccl):
    """One rank per GPU (ranks share GPU 0 when there is one); gradients summed over MPI, or with
    GSINK_DIST_NCCL=1 over NCCL. Not yet run on a GPU: written for the first GPU session."""
    gpus = len(_cuda_devices())
    if nccl == "1" and gpus < 2:
        pytest.skip("NCCL needs one GPU per rank (2 or more GPUs)")
    ranks = max(2, gpus)
    args = ["--data", data, *COMMON, "--seed", 7, "--steps", 6, "--batch", 2 * ranks, "--device", "cuda"]
    run1(*args, "--out", tmp_path / "one")
    mpirun(ranks, TRAIN, *args, "--out", tmp_path / "dp", env={"GSINK_DIST_NCCL": nccl})
    assert_losses_close(log(tmp_path / "one")[0], log(tmp_path / "dp")[0], rtol=1e-5)
    assert_weights_close(tmp_path / "one" / "final" / "model.safetensors",
                         tmp_path / "dp" / "final" / "model.safetensors", atol=1e-4)
