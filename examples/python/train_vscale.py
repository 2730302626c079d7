#!/usr/bin/env python3
"""Train a small pure-PyTorch Llama with gsink.torch.VScale on the values and
log R_GS and the sink rate every N steps through gsink.hf.

    PYTHONPATH=bindings/python python examples/python/train_vscale.py
    ... --steps 300 --log-every 50 --mode full            # V-scale mode: off, full, backward_only
    ... --compare --out docs/results/vscale-torch-loss.txt # gsink V-scale vs pure-PyTorch V-scale

The model names its modules as HuggingFace's Llama does (model.layers[l].
input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp) and
its attention returns the probabilities, so gsink.hf.Recorder measures it as
it measures a HF model. The data is a synthetic first-order Markov chain over
a small vocabulary after a BOS token (deterministic by seed), so the loss has
room to fall.
"""

import argparse
import math
import sys
import time
import types

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the examples suite skips (77) where PyTorch is missing
    print("train_vscale.py needs PyTorch")
    sys.exit(77)

import gsink.hf
import gsink.torch as gt


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope(x, theta=10000.0):
    """x (batch, heads, seq, d_head), rotate-half RoPE as HF Llama."""
    t, d = x.shape[2], x.shape[3]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(torch.nn.Module):
    def __init__(self, cfg, vscale):
        super().__init__()
        d, self.h, self.kv, self.dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = torch.nn.Linear(d, self.h * self.dh, bias=False)
        self.k_proj = torch.nn.Linear(d, self.kv * self.dh, bias=False)
        self.v_proj = torch.nn.Linear(d, self.kv * self.dh, bias=False)
        self.o_proj = torch.nn.Linear(self.h * self.dh, d, bias=False)
        self.vscale = vscale

    def forward(self, x):
        b, t, _ = x.shape
        q = rope(self.q_proj(x).view(b, t, self.h, self.dh).transpose(1, 2))
        k = rope(self.k_proj(x).view(b, t, self.kv, self.dh).transpose(1, 2))
        v = self.vscale(self.v_proj(x).view(b, t, self.kv, self.dh)).transpose(1, 2)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        a = torch.softmax(s, -1)
        y = (a @ v).transpose(1, 2).reshape(b, t, self.h * self.dh)
        return self.o_proj(y), a


class MLP(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = torch.nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = torch.nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = torch.nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(torch.nn.Module):
    def __init__(self, cfg, vscale):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size)
        self.self_attn = Attention(cfg, vscale)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size)
        self.mlp = MLP(cfg)

    def forward(self, h):
        h = h + self.self_attn(self.input_layernorm(h))[0]
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(torch.nn.Module):
    def __init__(self, cfg, mode, backend):
        super().__init__()
        self.config = cfg
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = torch.nn.ModuleList(
            Block(cfg, gt.VScale(cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size, sigma=0.02, mode=mode,
                                 backend=backend))
            for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size)
        self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        for p in self.parameters():   # HF Llama initialisation
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, input_ids, **unused):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h)
        return types.SimpleNamespace(logits=self.lm_head(self.model.norm(h)))


def config(args):
    return types.SimpleNamespace(vocab_size=args.vocab, hidden_size=64, num_hidden_layers=args.layers,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 intermediate_size=172, max_position_embeddings=args.seq, rms_norm_eps=1e-5,
                                 rope_theta=10000.0, tie_word_embeddings=False, model_type="llama")


def markov_batches(args):
    """Batches of (batch, seq+1) tokens from a fixed random sparse Markov chain."""
    rng = np.random.default_rng(args.seed)
    nxt = rng.integers(1, args.vocab, (args.vocab, 4))
    while True:
        tok = np.empty((args.batch, args.seq + 1), dtype=np.int64)
        tok[:, 0] = 0                                   # a BOS token opens every sequence
        tok[:, 1] = rng.integers(1, args.vocab, args.batch)
        for t in range(2, args.seq + 1):
            tok[:, t] = nxt[tok[:, t - 1], rng.integers(0, 4, args.batch)]
        yield tok


def train(args, backend, log=print):
    torch.manual_seed(args.seed)
    model = Llama(config(args), args.mode, backend)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    data = markov_batches(args)
    probe = next(markov_batches(argparse.Namespace(**{**vars(args), "seed": args.seed + 1})))
    losses = []
    for step in range(1, args.steps + 1):
        tok = torch.from_numpy(next(data))
        logits = model(tok[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), tok[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            rep = gsink.hf.analyze(model, probe[:, :-1], probe[:, 1:], sink_window=args.sink_window)
            s = rep["summary"]
            theta = torch.cat([layer.self_attn.vscale.theta.detach() for layer in model.model.layers])
            log("%s step %4d  loss %.4f  R_GS median %.3f  sink rate mean %.3f  theta mean %+.4f"
                % (backend, step, loss.item(), s["gradient_sink_ratio"]["median"], s["sink_rate"]["mean"],
                   theta.mean().item()))
            model.zero_grad(set_to_none=True)
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--mode", default="full", choices=["off", "full", "backward_only"])
    ap.add_argument("--backend", default="gsink", choices=["gsink", "torch"])
    ap.add_argument("--compare", action="store_true",
                    help="train with the gsink V-scale and the pure-PyTorch V-scale, compare the losses")
    ap.add_argument("--out", help="write the loss curves here (with --compare)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sink-window", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if not args.compare:
        train(args, args.backend)
        return 0
    t0 = time.time()
    lines = []

    def log(msg):
        print(msg)
        lines.append("# " + msg)

    a = train(args, "gsink", log)
    b = train(args, "torch", log)
    diff = max(abs(x - y) for x, y in zip(a, b))
    log("largest |loss(gsink) - loss(torch)| over %d steps: %.3g (%.1f s)" % (args.steps, diff, time.time() - t0))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# examples/python/train_vscale.py --compare %s\n"
                    % " ".join(a_ for a_ in sys.argv[1:] if a_ != "--compare"))
            f.write("# torch %s, V-scale mode %s: step, loss with gsink.torch.VScale, loss with the "
                    "pure-PyTorch V-scale\n" % (torch.__version__, args.mode))
            f.write("\n".join(lines) + "\n")
            for i, (x, y) in enumerate(zip(a, b), 1):
                f.write("%d %.6f %.6f\n" % (i, x, y))
    return 0 if diff < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
