"""gsink-train end to end: resume bit for bit, crash during save, bad data, learning."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import _build_dir, prepare, read_log, run_tool

COMMON = ["--preset", "test", "--threads", "1", "--seed", "7", "--eval-every", "4", "--eval-batches", "2",
          "--diag-every", "8", "--no-progress"]


def test_resume_is_bit_for_bit(tool, small_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_tool(tool, "--data", small_data, "--out", a, "--steps", 16, "--ckpt-every", 8, *COMMON)
    r = run_tool(tool, "--data", small_data, "--out", b, "--steps", 16, "--ckpt-every", 8, "--stop-at", 8, *COMMON)
    assert "stopped at step 8" in r.stderr
    assert (b / "latest").read_text().strip() == "ckpt-00000008"
    run_tool(tool, "--data", small_data, "--out", b, "--steps", 16, "--ckpt-every", 8, "--resume", *COMMON)
    la, va = read_log(a / "log.jsonl")
    lb, vb = read_log(b / "log.jsonl")
    assert sorted(la) == list(range(1, 17))
    assert la == lb  # losses printed with 9 significant digits: exact float32 round trip
    assert va == vb
    # the final checkpoints are identical byte for byte (weights, moments, step, data position, RNG)
    for f in ("state.bin", "optimizer.bin"):
        assert (a / "ckpt-00000016" / f).read_bytes() == (b / "ckpt-00000016" / f).read_bytes(), f


def test_crash_during_save_keeps_previous_checkpoint(tool, small_data, tmp_path):
    out = tmp_path / "run"
    run_tool(tool, "--data", small_data, "--out", out, "--steps", 16, "--ckpt-every", 8, "--stop-at", 8, *COMMON)
    good = (out / "ckpt-00000008" / "state.bin").read_bytes()
    r = run_tool(tool, "--data", small_data, "--out", out, "--steps", 16, "--ckpt-every", 8, "--resume", *COMMON,
                 env={"GSINK_TRAIN_CRASH_IN_SAVE": "1"}, check=False)
    assert r.returncode == 86, r.stderr
    assert (out / "latest").read_text().strip() == "ckpt-00000008"
    assert (out / "ckpt-00000008" / "state.bin").read_bytes() == good
    # the run continues from the intact checkpoint and matches an uninterrupted run
    run_tool(tool, "--data", small_data, "--out", out, "--steps", 16, "--ckpt-every", 8, "--resume", *COMMON)
    ref = tmp_path / "ref"
    run_tool(tool, "--data", small_data, "--out", ref, "--steps", 16, "--ckpt-every", 8, *COMMON)
    assert read_log(out / "log.jsonl") == read_log(ref / "log.jsonl")


def test_mismatched_checkpoint_rejected(tool, small_data, tmp_path):
    out = tmp_path / "run"
    run_tool(tool, "--data", small_data, "--out", out, "--steps", 8, "--ckpt-every", 8, *COMMON)
    r = run_tool(tool, "--data", small_data, "--out", out, "--steps", 16, "--resume", "--d-model", 96, *COMMON,
                 check=False)
    assert r.returncode != 0 and "does not match" in r.stderr
    state = out / "ckpt-00000008" / "state.bin"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 1
    state.write_bytes(bytes(raw))
    r = run_tool(tool, "--data", small_data, "--out", out, "--steps", 16, "--resume", *COMMON, check=False)
    assert r.returncode != 0 and "corrupt" in r.stderr


def test_corrupt_token_file_rejected(tool, small_data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_data, bad)
    raw = bytearray((bad / "val.bin").read_bytes())
    raw[1000] ^= 0x01
    (bad / "val.bin").write_bytes(bytes(raw))
    r = run_tool(tool, "--data", bad, "--out", tmp_path / "o", "--steps", 2, *COMMON, check=False)
    assert r.returncode == 1 and "CRC-32" in r.stderr
    (bad / "val.bin").write_bytes(bytes(raw[:-7]))
    r = run_tool(tool, "--data", bad, "--out", tmp_path / "o", "--steps", 2, *COMMON, check=False)
    assert r.returncode == 1 and "corrupt token file" in r.stderr
    (bad / "val.bin").write_bytes(b"not a token file at all, clearly not one")
    r = run_tool(tool, "--data", bad, "--out", tmp_path / "o", "--steps", 2, *COMMON, check=False)
    assert r.returncode == 1 and "bad magic" in r.stderr
    # a token id outside the vocabulary (with a valid checksum) is caught too
    prepare.write_tokens(str(bad / "val.bin"), np.full(5000, 4095, np.int64), 4000, 0)
    r = run_tool(tool, "--data", bad, "--out", tmp_path / "o", "--steps", 2, *COMMON, check=False)
    assert r.returncode == 1 and "outside vocab" in r.stderr


def test_data_too_small_for_one_batch(tool, small_data, tmp_path):
    d = tmp_path / "tiny"
    shutil.copytree(small_data, d)
    tr, vocab, eot = prepare.read_tokens(str(d / "train.bin"))
    prepare.write_tokens(str(d / "train.bin"), tr[:300], vocab, eot)
    r = run_tool(tool, "--data", d, "--out", tmp_path / "o", "--steps", 2, "--batch", 8, "--seq", 64, *COMMON[2:],
                 check=False)
    assert r.returncode == 1
    assert "has 300 tokens; one batch of 8 x 64 needs 513" in r.stderr


@pytest.mark.skipif(os.environ.get("GSINK_SLOW_TESTS") != "1",
                    reason="trains ~0.5 M tokens (2-5 min on 2 shared cores); set GSINK_SLOW_TESTS=1")
def test_short_run_beats_unigram_entropy(tool, corpus, tmp_path):
    meta = json.load(open(os.path.join(corpus, "meta.json")))
    h_unigram = meta["unigram_entropy_nats"]["val"]
    out = tmp_path / "run"
    run_tool(tool, "--data", corpus, "--out", out, "--preset", "test", "--d-model", 128, "--heads", 4,
             "--kv-heads", 4, "--d-ff", 344, "--steps", 500, "--batch", 16, "--seq", 64, "--lr", "5e-3",
             "--min-lr", "5e-4", "--warmup", 25, "--eval-every", 500, "--eval-batches", 8, "--diag-every", 1000,
             "--ckpt-every", 1000, "--threads", 2, "--no-progress")
    _, vals = read_log(out / "log.jsonl")
    assert vals[0] > h_unigram  # an untrained model is worse than unigram statistics
    assert vals[500] < h_unigram - 0.3, (vals, h_unigram)
    lines = [json.loads(x) for x in open(out / "diag.jsonl")]
    assert lines[0]["step"] == 0 and len(lines[0]["layers"]) == 2
    assert {"sink_rate", "resid_out_t0_early", "mlp_out_t0_early", "r_gs"} <= set(lines[-1]["layers"][0])


def test_diagnostics_lines(tool, small_data, tmp_path):
    out = tmp_path / "run"
    run_tool(tool, "--data", small_data, "--out", out, "--steps", 8, "--ckpt-every", 8, *COMMON)
    lines = [json.loads(x) for x in open(out / "diag.jsonl")]
    assert [x["step"] for x in lines] == [0, 8]
    layer = lines[-1]["layers"][0]
    assert {"sink_rate", "resid_out_t0_early", "mlp_out_t0_early", "r_gs"} <= set(layer)
    final = json.load(open(out / "final_diag.json"))
    assert len(final["layers"][0]["grad_norm_attn_norm_out"]) == 64


def _windows(dump, T):
    return np.fromfile(dump, dtype=np.int32).reshape(-1, T)


def _config(out):
    return json.loads(open(out / "log.jsonl").readline())["config"]


def _epoch_data(small_data, tmp_path, n, lo=0):
    """train.bin: tokens [lo, n) of small_data's (a few windows per epoch); val.bin as is."""
    tr, vocab, eot = prepare.read_tokens(str(small_data / "train.bin"))
    d = tmp_path / "epoch_data"
    d.mkdir()
    prepare.write_tokens(str(d / "train.bin"), tr[lo:n], vocab, eot)
    shutil.copy(small_data / "val.bin", d / "val.bin")
    return d, np.array(tr[lo:n]), eot


def _find_all(stream, rows, skip=0):
    """Stream positions p with stream[p:p+w] == row[skip:], w = T - skip, for every row (all matches)."""
    w = rows.shape[1] - skip
    index = {}
    for p in range(len(stream) - w + 1):
        index.setdefault(stream[p:p + w].tobytes(), []).append(p)
    return [index.get(np.ascontiguousarray(r[skip:], dtype=stream.dtype).tobytes(), []) for r in rows]


def _multiset(rows):
    from collections import Counter
    return Counter(r.tobytes() for r in rows)


def test_packed_epoch_reads_every_token_once(tool, small_data, tmp_path):
    # 2,590 tokens = 40 windows of 64 + 29 left: a 41st window, the last 64 inputs
    # (ending before the final token, which is only a target), overlaps the 40th by 35
    T, N = 64, 2590
    d, tr, _ = _epoch_data(small_data, tmp_path, N)
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        dump = tmp_path / f"{name}.bin"
        out = tmp_path / name
        run_tool(tool, "--data", d, "--out", out, "--steps", 11, "--dump-batches", dump,
                 *COMMON[:4], "--seed", seed, *COMMON[6:])
        runs[name] = _windows(dump, T)
    cfg = _config(tmp_path / "a")
    assert (cfg["windows"], cfg["epoch_windows"], cfg["tail_overlap"]) == ("packed", 41, 35)
    W = 41
    rows = runs["a"]
    assert rows.shape == (11 * 8, T)  # two epochs and 6 windows of the third
    # every row is a slice of the stream; over one epoch each token position is read
    # exactly once, except the 35 positions the tail window shares with window 39
    for e in range(2):
        epoch = rows[e * W:(e + 1) * W]
        count = np.zeros(N, int)
        for hits in _find_all(tr, epoch):
            assert len(hits) == 1  # real text: 64-token slices are unique
            count[hits[0]:hits[0] + T] += 1
        twice = np.arange(N - 1 - T, 40 * T)
        assert (count[:N - 1] >= 1).all() and count[N - 1] == 0  # the last token is only a target
        assert (count[twice] == 2).all() and count.sum() == (N - 1) + 35
    # an epoch is a shuffle without replacement: same windows, another order each epoch
    assert _multiset(rows[:W]) == _multiset(rows[W:2 * W])
    assert not np.array_equal(rows[:W], rows[W:2 * W])
    assert not np.array_equal(rows[:W - 1], tr[:(W - 1) * T].reshape(W - 1, T))  # not the stream order
    # reproducible for a seed, different for another seed (same windows per epoch)
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])
    assert _multiset(runs["c"][:W]) == _multiset(rows[:W])
    steps = [json.loads(x) for x in open(tmp_path / "a" / "log.jsonl") if '"loss"' in x]
    assert [s["epoch"] for s in steps] == [0] * 5 + [1] * 5 + [2]  # 8 rows per step, 41 per epoch


def test_doc_start_epoch_covers_every_document_token(tool, small_data, tmp_path):
    T = 64
    full, _, eot = prepare.read_tokens(str(small_data / "train.bin"))
    seps = np.flatnonzero(full == eot)
    lo, hi = int(seps[seps > 10000][0]) + 1, int(seps[seps > 19500][0]) + 1  # a slice of whole documents
    d, tr, eot = _epoch_data(small_data, tmp_path, hi, lo)
    N = len(tr)
    ends = np.flatnonzero(tr == eot)
    starts = [0] + [int(s) + 1 for s in ends[:-1]]
    # each document (its tokens before its separator) is read in chunks of T - 1
    W = sum(-(-(int(e) - a) // (T - 1)) for a, e in zip(starts, ends))
    steps = -(-2 * W // 8) + 1
    dump = tmp_path / "batches.bin"
    run_tool(tool, "--data", d, "--out", tmp_path / "o", "--steps", steps, "--windows", "doc-start",
             "--dump-batches", dump, *COMMON)
    cfg = _config(tmp_path / "o")
    assert cfg["epoch_windows"] == W
    rows = _windows(dump, T)
    assert (rows[:, 0] == eot).all()  # every window begins with the separator
    doc_start = np.zeros(N, int)  # start of the document each position belongs to
    assert cfg["documents"] == len(starts) and len(starts) > 5
    for a, b in zip(starts, starts[1:] + [N]):
        doc_start[a:b] = a
    epoch = rows[:W]
    count = np.zeros(N, int)
    for hits in _find_all(tr, epoch, skip=1):
        assert len(hits) == 1
        q = hits[0]  # the window reads [eot] + tr[q:q+63]: consecutive chunks of one document
        assert (q - doc_start[q]) % (T - 1) == 0 or q == N - T  # (the stream's last T tokens at its end)
        count[q:q + T - 1] += 1
    assert (count[tr != eot] >= 1).all()  # every document token is read in the epoch
    # the first window of every document is the stream slice at its separator
    found = _multiset(epoch)
    for s in np.flatnonzero(tr == eot):
        if s + T <= N:
            assert tr[s:s + T].astype(np.int32).tobytes() in found
    assert _multiset(rows[W:2 * W]) == _multiset(epoch) and not np.array_equal(rows[W:2 * W], epoch)


def test_resume_mid_epoch_is_bit_for_bit(tool, small_data, tmp_path):
    d, _, _ = _epoch_data(small_data, tmp_path, 2590)  # 41 windows: 5.1 steps per epoch
    for mode in ("packed", "doc-start"):
        a, b = tmp_path / f"a-{mode}", tmp_path / f"b-{mode}"
        args = ["--data", d, "--steps", 12, "--ckpt-every", 4, "--windows", mode, *COMMON]
        run_tool(tool, "--out", a, "--dump-batches", tmp_path / f"a-{mode}.bin", *args)
        run_tool(tool, "--out", b, "--dump-batches", tmp_path / f"b-{mode}.bin", "--stop-at", 7, *args)
        run_tool(tool, "--out", b, "--dump-batches", tmp_path / f"b-{mode}.bin", "--resume", *args)
        assert read_log(a / "log.jsonl") == read_log(b / "log.jsonl")
        for f in ("state.bin", "optimizer.bin"):
            assert (a / "ckpt-00000012" / f).read_bytes() == (b / "ckpt-00000012" / f).read_bytes(), (mode, f)
        # the resumed run reads the windows the uninterrupted one reads, across epoch boundaries
        assert (tmp_path / f"a-{mode}.bin").read_bytes() == (tmp_path / f"b-{mode}.bin").read_bytes()
    # a checkpoint state of the earlier format (version 1: stream position, no epoch order) is refused
    state = b / "ckpt-00000012" / "state.bin"
    raw = bytearray(state.read_bytes())
    raw[7] = 1
    state.write_bytes(bytes(raw))
    r = run_tool(tool, "--out", b, "--resume", "--data", d, "--steps", 16, "--windows", "doc-start", *COMMON,
                 check=False)
    assert r.returncode == 1 and "checkpoint state version 1" in r.stderr, r.stderr


def test_doc_start_resume_and_mode_mismatch(tool, small_data, tmp_path):
    args = ["--steps", 12, "--ckpt-every", 6, "--windows", "doc-start", *COMMON]
    a, b = tmp_path / "a", tmp_path / "b"
    run_tool(tool, "--data", small_data, "--out", a, *args)
    run_tool(tool, "--data", small_data, "--out", b, *args, "--stop-at", 6)
    run_tool(tool, "--data", small_data, "--out", b, *args, "--resume")
    assert read_log(a / "log.jsonl") == read_log(b / "log.jsonl")
    assert (a / "ckpt-00000012" / "state.bin").read_bytes() == (b / "ckpt-00000012" / "state.bin").read_bytes()
    # a checkpoint of a doc-start run cannot be resumed with packed windows
    r = run_tool(tool, "--data", small_data, "--out", a, "--steps", 18, "--ckpt-every", 6, "--resume", *COMMON,
                 check=False)
    assert r.returncode != 0 and "does not match" in r.stderr


def test_doc_start_needs_separators(tool, small_data, tmp_path):
    d = tmp_path / "nosep"
    shutil.copytree(small_data, d)
    tr, vocab, eot = prepare.read_tokens(str(d / "train.bin"))
    tr = tr.copy()
    tr[tr == eot] = (eot + 1) % vocab
    prepare.write_tokens(str(d / "train.bin"), tr, vocab, eot)
    r = run_tool(tool, "--data", d, "--out", tmp_path / "o", "--steps", 2, "--windows", "doc-start", *COMMON,
                 check=False)
    assert r.returncode == 1 and "no end-of-text separator" in r.stderr
    r = run_tool(tool, "--data", d, "--out", tmp_path / "o", "--steps", 2, "--windows", "bogus", *COMMON,
                 check=False)
    assert r.returncode != 0 and "--windows must be packed or doc-start" in r.stderr


def test_device_and_precision_options(tool, small_data, tmp_path):
    r = run_tool(tool, "--data", small_data, "--out", tmp_path / "a", "--steps", 1, "--precision", "bf16", *COMMON,
                 check=False)
    assert r.returncode == 1 and "BF16 precision needs a CUDA device" in r.stderr, r.stderr
    r = run_tool(tool, "--data", small_data, "--out", tmp_path / "b", "--precision", "fp16", *COMMON, check=False)
    assert r.returncode == 1 and "--precision must be fp32, tf32 or bf16" in r.stderr
    r = run_tool(tool, "--data", small_data, "--out", tmp_path / "c", "--device", "gpu", *COMMON, check=False)
    assert r.returncode == 1 and "--device must be cpu or cuda" in r.stderr


def test_cuda_training_matches_cpu(tool, small_data, tmp_path):
    # --device cuda through the host emulation of the CUDA module: the same
    # run as on the CPU within fp32 reduction-order noise, a BF16 run within
    # bf16 rounding, and a CUDA checkpoint resumes on the CPU
    emu = os.environ.get("GSINK_CUDA_EMU") or os.path.join(_build_dir(), "tests", "cuda", "libgsink-cuda-emu.so")
    if not os.path.exists(emu):
        pytest.skip(f"{emu} not built (it is left out of sanitizer builds)")
    env = {"GSINK_CUDA_MODULE": emu}
    args = ["--data", small_data, "--steps", 4, "--batch", 2, "--seq", 32, "--ckpt-every", 2, *COMMON]
    run_tool(tool, "--out", tmp_path / "cpu", *args)
    run_tool(tool, "--out", tmp_path / "cuda", "--device", "cuda", *args, env=env)
    run_tool(tool, "--out", tmp_path / "bf16", "--device", "cuda", "--precision", "bf16", *args, env=env)
    cpu, _ = read_log(tmp_path / "cpu" / "log.jsonl")
    cuda, _ = read_log(tmp_path / "cuda" / "log.jsonl")
    bf16, _ = read_log(tmp_path / "bf16" / "log.jsonl")
    assert sorted(cpu) == sorted(cuda) == sorted(bf16) == [1, 2, 3, 4]
    for k in cpu:
        assert abs(cuda[k] - cpu[k]) <= 1e-5 * abs(cpu[k]), (k, cpu[k], cuda[k])
        assert abs(bf16[k] - cpu[k]) <= 2 ** -8 * abs(cpu[k]), (k, cpu[k], bf16[k])
    assert bf16 != cuda  # bf16 really rounds
    cfg = json.loads(open(tmp_path / "bf16" / "log.jsonl").readline())["config"]
    assert (cfg["device"], cfg["precision"]) == ("cuda", "bf16")
    # stop a CUDA run at step 2, resume it on the CPU: steps 3-4 follow the CPU run
    mix = tmp_path / "mix"
    run_tool(tool, "--out", mix, "--device", "cuda", "--stop-at", 2, *args, env=env)
    run_tool(tool, "--out", mix, "--resume", *args)
    m, _ = read_log(mix / "log.jsonl")
    for k in (3, 4):
        assert abs(m[k] - cpu[k]) <= 1e-5 * abs(cpu[k]), (k, cpu[k], m[k])


def test_fetch_script_lists_every_source_package():
    # tools/corpus/fetch.sh cannot import prepare.py (no numpy in the default
    # python3), so its default package list is kept by hand: it must name
    # exactly the source packages prepare.py reads.
    from conftest import ROOT
    text = open(os.path.join(ROOT, "tools", "corpus", "fetch.sh")).read()
    block = text.split("set -- ", 1)[1].split("\nfi", 1)[0]
    listed = block.replace("\\\n", " ").split()
    assert sorted(listed) == sorted(prepare.SOURCES)
    assert len(listed) == len(set(listed))


def test_kill9_loop_resumes_bit_for_bit(tool, small_data, tmp_path):
    """SIGKILL at random moments (mid-step, mid-checkpoint-write, mid-rename), resume, repeat:
    the run always resumes from its latest complete checkpoint and ends bit for bit where an
    uninterrupted run ends. GSINK_KILL9_ROUNDS (default 8) and GSINK_KILL9_STEPS (default 12)
    set the number of kill rounds and the run's length; the robustness campaign runs 50 rounds
    over 100 steps (docs/robustness.md)."""
    import random
    import signal
    import subprocess
    import time

    steps = int(os.environ.get("GSINK_KILL9_STEPS", "12"))
    args = ["--data", small_data, "--steps", steps, "--ckpt-every", 1, *COMMON]
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    run_tool(tool, "--out", ref, *args)
    full = time.monotonic() - t0
    out = tmp_path / "run"
    rng = random.Random(int(os.environ.get("GSINK_KILL9_SEED", "1")))
    rounds = int(os.environ.get("GSINK_KILL9_ROUNDS", "8"))
    killed = 0
    for i in range(rounds):
        cmd = [tool, "--out", str(out), *map(str, args)]
        if (out / "latest").exists():
            cmd.append("--resume")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.0, 1.6 / rounds) * full)  # about all rounds before the run ends
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        if p.returncode == 0:
            break
        # whatever the moment of the kill, `latest` (when present) names a complete checkpoint
        if (out / "latest").exists():
            ck = out / (out / "latest").read_text().strip()
            assert (ck / "state.bin").is_file() and (ck / "optimizer.bin").is_file(), ck
    print(f"kill -9 loop: {killed} kills in {i + 1} rounds over {steps} steps")
    assert killed >= 1
    r = run_tool(tool, "--out", out, *args, *(["--resume"] if (out / "latest").exists() else []))
    assert r.returncode == 0
    assert read_log(out / "log.jsonl") == read_log(ref / "log.jsonl")
    for f in ("state.bin", "optimizer.bin"):
        last = f"ckpt-{steps:08d}"
        assert (out / last / f).read_bytes() == (ref / last / f).read_bytes(), f
    assert (out / "final" / "model.safetensors").read_bytes() == (ref / "final" / "model.safetensors").read_bytes()


# ---- hostile token files (no corpus needed) ---------------------------------------


def _tiny_data(d, vocab=4096, n=5000, meta=None):
    d.mkdir()
    ids = np.arange(n) % 97
    prepare.write_tokens(str(d / "train.bin"), ids, vocab, 0)
    prepare.write_tokens(str(d / "val.bin"), ids, vocab, 0)
    if meta is not None:
        (d / "meta.json").write_text(json.dumps({"vocab_size": meta, "eot_id": 0}))
    return d


def _run_fast(tool, d, out, timeout=60):
    import subprocess
    return subprocess.run([tool, "--data", str(d), "--out", str(out), "--steps", "2", *COMMON], capture_output=True,
                          text=True, timeout=timeout)


def test_token_header_checked_before_the_model_is_allocated(tool, tmp_path):
    # uint16 ids whose header claims a 2^22 vocabulary: the model would be sized by it
    d = _tiny_data(tmp_path / "a")
    for f in ("train.bin", "val.bin"):
        raw = bytearray((d / f).read_bytes())
        raw[24:28] = (1 << 22).to_bytes(4, "little")
        (d / f).write_bytes(bytes(raw))
    r = _run_fast(tool, d, tmp_path / "o1")
    assert r.returncode == 1 and "vocab 4194304 does not fit its 2-byte token ids" in r.stderr, r.stderr
    # int32 ids with a 2^22 vocabulary, but meta.json (prepare.py) says 4096
    d = _tiny_data(tmp_path / "b", vocab=1 << 22, meta=4096)
    r = _run_fast(tool, d, tmp_path / "o2")
    assert r.returncode == 1 and "vocab_size 4096" in r.stderr and "4194304" in r.stderr, r.stderr


def test_token_count_overflow_reports_true_sizes(tool, tmp_path):
    d = _tiny_data(tmp_path / "a", vocab=1 << 17, n=20000)  # int32 ids: 80000 payload bytes
    raw = bytearray((d / "val.bin").read_bytes())
    raw[16:24] = ((1 << 62) + 20000).to_bytes(8, "little")  # count * 4 wraps to 80000
    (d / "val.bin").write_bytes(bytes(raw))
    r = _run_fast(tool, d, tmp_path / "o")
    assert r.returncode == 1, r.stderr
    assert "header says 4611686018427407904 tokens (18446744073709631616 bytes) but the file has 80000 " \
           "payload bytes" in r.stderr, r.stderr


def test_fifo_token_file_is_refused_without_blocking(tool, tmp_path):
    d = _tiny_data(tmp_path / "a")
    (d / "val.bin").unlink()
    os.mkfifo(d / "val.bin")
    r = _run_fast(tool, d, tmp_path / "o", timeout=30)
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr


# ---- input formats: llm.c token shards, directories of text --------------------------


def write_llmc_shard(path, tokens, magic=20240520, version=1):
    """An llm.c token shard: 256 int32 (magic, version, token count), then the ids."""
    header = np.zeros(256, np.int32)
    header[:3] = magic, version, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, np.uint16 if version == 1 else np.uint32).tobytes())


def test_llmc_shards_train_like_token_files(tool, small_data, tmp_path):
    tr, vocab, eot = prepare.read_tokens(str(small_data / "train.bin"))
    va, _, _ = prepare.read_tokens(str(small_data / "val.bin"))
    tr, va = tr[:3000], va[:3000]
    ref = tmp_path / "ref"
    ref.mkdir()
    prepare.write_tokens(str(ref / "train.bin"), tr, vocab, eot)
    prepare.write_tokens(str(ref / "val.bin"), va, vocab, eot)
    sh = tmp_path / "shards"
    sh.mkdir()
    for i, (a, b) in enumerate(((0, 1000), (1000, 1001), (1001, 3000))):  # read in name order, concatenated
        write_llmc_shard(sh / f"docs_train_{i:06d}.bin", tr[a:b])
    write_llmc_shard(sh / "docs_val_000000.bin", va)
    (sh / "meta.json").write_text(json.dumps({"vocab_size": vocab, "eot_id": int(eot)}))
    args = ["--steps", 6, "--windows", "doc-start", *COMMON]
    run_tool(tool, "--data", ref, "--out", tmp_path / "a", "--dump-batches", tmp_path / "a.bin", *args)
    run_tool(tool, "--data", sh, "--out", tmp_path / "b", "--dump-batches", tmp_path / "b.bin", *args)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert read_log(tmp_path / "a" / "log.jsonl") == read_log(tmp_path / "b" / "log.jsonl")
    assert _config(tmp_path / "b")["data"] == "llm.c shards"
    # without meta.json: GPT-2's vocabulary (50257) and <|endoftext|> (50256)
    (sh / "meta.json").unlink()
    run_tool(tool, "--data", sh, "--out", tmp_path / "c", "--steps", 1, *COMMON)
    assert _config(tmp_path / "c")["vocab"] == 50257
    # a foreign or truncated shard is refused with its name
    raw = (sh / "docs_train_000001.bin").read_bytes()
    (sh / "docs_train_000001.bin").write_bytes(raw[:-2])
    r = run_tool(tool, "--data", sh, "--out", tmp_path / "d", "--steps", 1, *COMMON, check=False)
    assert r.returncode == 1 and "docs_train_000001.bin: corrupt llm.c shard: header says 1 tokens" in r.stderr
    (sh / "docs_train_000001.bin").write_bytes(b"\x01" * 1030)
    r = run_tool(tool, "--data", sh, "--out", tmp_path / "d", "--steps", 1, *COMMON, check=False)
    assert r.returncode == 1 and "not an llm.c token shard" in r.stderr


def _tokenizer_json_to_gguf(src, dst):
    """A GGUF file holding a byte-level BPE tokenizer.json's vocabulary, merges and special tokens."""
    import struct

    def gstr(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    def kv(key, vtype, value, arr_type=None):  # GGUF types: 4 uint32, 5 int32, 8 string, 9 array
        out = gstr(key) + struct.pack("<I", vtype)
        if vtype == 8:
            return out + gstr(value)
        if vtype == 4:
            return out + struct.pack("<I", value)
        body = b"".join(gstr(v) if arr_type == 8 else struct.pack("<i", v) for v in value)
        return out + struct.pack("<IQ", arr_type, len(value)) + body

    j = json.load(open(src))
    tokens = [None] * len(j["model"]["vocab"])
    for t, i in j["model"]["vocab"].items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    special = {a["id"] for a in j.get("added_tokens", []) if a.get("special")}
    kvs = [kv("general.architecture", 8, "llama"), kv("tokenizer.ggml.model", 8, "gpt2"),
           kv("tokenizer.ggml.tokens", 9, tokens, 8), kv("tokenizer.ggml.merges", 9, merges, 8),
           kv("tokenizer.ggml.token_type", 9, [3 if i in special else 1 for i in range(len(tokens))], 5),
           kv("tokenizer.ggml.eos_token_id", 4, min(special))]
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    open(dst, "wb").write(data + b"\0" * ((-len(data)) % 32))


def test_text_directory_is_tokenised_cached_and_trainable(tool, corpus, tmp_path):
    import subprocess
    import sys

    from tokenizers import Tokenizer
    from conftest import ROOT
    tok = Tokenizer.from_file(os.path.join(corpus, "tokenizer.json"))
    tr, _, eot = prepare.read_tokens(os.path.join(corpus, "train.bin"))
    text = tmp_path / "text"
    (text / "sub").mkdir(parents=True)
    seps = np.flatnonzero(tr[:200_000] == eot)
    docs = {}
    for i, (a, b) in enumerate(zip(seps[:12], seps[1:13])):  # twelve real documents as text files
        name = f"sub/doc{i:02d}.md" if i % 3 == 0 else f"doc{i:02d}.txt"
        docs[name] = tok.decode(tr[a + 1:b].tolist())
        (text / name).write_text(docs[name])
    (text / "empty.txt").write_text(" \n")
    (text / "image.png").write_bytes(b"\x89PNG not text")
    (text / ".hidden.txt").write_text("not read")
    out = tmp_path / "data"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "corpus", "textdir.py"), "--text", str(text),
           "--tokenizer", os.path.join(corpus, "tokenizer.json"), "--out", str(out), "--val-fraction", "0.2"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "13 files (0 cached, 13 encoded)" in r.stdout, r.stdout
    meta = json.load(open(out / "meta.json"))
    assert meta["documents"] == {"train": 10, "val": 2} and meta["files"]["empty"] == 1
    for split in ("train", "val"):  # each document's ids, then the separator, in the shuffled order
        ids, vocab, sep = prepare.read_tokens(str(out / f"{split}.bin"))
        want = [t for name in meta[f"{split}_documents"] for t in tok.encode(docs[name]).ids + [eot]]
        assert sep == eot and vocab == tok.get_vocab_size()
        np.testing.assert_array_equal(ids, want)
    before = {f: (out / f).read_bytes() for f in ("train.bin", "val.bin")}
    # a second run reads every file from the cache; a changed file alone is encoded again
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "13 files (13 cached, 0 encoded)" in r.stdout, r.stdout
    assert before == {f: (out / f).read_bytes() for f in ("train.bin", "val.bin")}
    (text / "doc01.txt").write_text(docs["doc01.txt"] + " One more sentence.")
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "13 files (12 cached, 1 encoded)" in r.stdout, r.stdout
    assert len(list((out / ".token-cache").iterdir())) == 13  # the stale entry is gone
    # the same BPE as a GGUF tokenizer, encoded by libgsink (a thread per core): the same token files
    lib = os.environ.get("GSINK_LIB") or os.path.join(_build_dir(), "lib", "libgsink.so")
    if os.path.exists(lib):
        _tokenizer_json_to_gguf(os.path.join(corpus, "tokenizer.json"), tmp_path / "tok.gguf")
        out2 = tmp_path / "data-gguf"
        cmd2 = cmd[:5] + [str(tmp_path / "tok.gguf"), "--out", str(out2), "--val-fraction", "0.2", "--lib", lib]
        r = subprocess.run(cmd2, capture_output=True, text=True)
        assert r.returncode == 0 and "13 files (0 cached, 13 encoded)" in r.stdout, r.stdout + r.stderr
        for f in ("train.bin", "val.bin"):
            assert (out2 / f).read_bytes() == (out / f).read_bytes(), f
    # gsink-train reads the result (doc-start windows over its documents)
    run_tool(tool, "--data", out, "--out", tmp_path / "run", "--steps", 2, "--batch", 2, "--seq", 32,
             "--windows", "doc-start", *COMMON[2:])
    assert _config(tmp_path / "run")["documents"] == 10
