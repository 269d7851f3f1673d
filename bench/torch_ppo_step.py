#!/usr/bin/env python3
"""One PPO-Lag step in PyTorch, shaped like `saferlhf bench`, for the Go/PyTorch ratio.

Same model (the llama2.c checkpoint, default stories260K), same batch and lengths, same work:
  generation: KV-cache sampling of --gen-len tokens for --batch prompts of --prompt-len tokens
  scoring:    6 forward passes over [B, T]: actor and reference log-probs, reward and cost end
              scores, reward- and cost-critic values (score heads: Linear(d, 1) on the trunk)
  update:     actor (PPO-Lag clipped surrogate), reward critic and cost critic (clipped value
              loss), each forward + backward + AdamW (betas 0.9/0.95, grad clip 1.0)
Usage: python3 bench/torch_ppo_step.py [--threads 2] [--go-bin bin/saferlhf]
With --go-bin it also runs `saferlhf bench` with the same settings and prints the ratios.
Needs PyTorch (Debian: apt-get install -y python3-torch; run with /usr/bin/python3).
"""
import argparse
import copy
import math
import os
import re
import resource
import struct
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cfg:
    pass


def load_llama2c(path):
    with open(path, "rb") as f:
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", f.read(28))
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
    c = Cfg()
    c.dim, c.hidden, c.n_layers, c.n_heads, c.n_kv, c.vocab, c.seq_len = dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len
    shared = vocab > 0
    hd = dim // n_heads
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        t = data[off:off + n].view(*shape).clone()
        off += n
        return t

    w = {"emb": take(c.vocab, dim), "att_norm": take(n_layers, dim), "wq": take(n_layers, dim, dim),
         "wk": take(n_layers, n_kv * hd, dim), "wv": take(n_layers, n_kv * hd, dim), "wo": take(n_layers, dim, dim),
         "ffn_norm": take(n_layers, dim), "w1": take(n_layers, hidden, dim), "w2": take(n_layers, dim, hidden),
         "w3": take(n_layers, hidden, dim), "norm": take(dim)}
    take(seq_len, hd // 2)
    take(seq_len, hd // 2)
    w["cls"] = w["emb"] if shared else take(c.vocab, dim)
    return c, w


class RMSNorm(nn.Module):
    def __init__(self, w, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(w.clone())
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, pos, base=10000.0):
    # x [B, T, H, hd] (llama2.c interleaved pairs), pos [B, T]
    hd = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd))
    ang = pos[..., None].float() * inv  # [B, T, hd/2]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    return torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, c, w, i):
        super().__init__()
        self.c = c
        self.n1, self.n2 = RMSNorm(w["att_norm"][i]), RMSNorm(w["ffn_norm"][i])
        lin = lambda t: nn.Parameter(t[i].clone())
        self.wq, self.wk, self.wv, self.wo = lin(w["wq"]), lin(w["wk"]), lin(w["wv"]), lin(w["wo"])
        self.w1, self.w2, self.w3 = lin(w["w1"]), lin(w["w2"]), lin(w["w3"])

    def forward(self, x, pos, bias, cache=None):
        c = self.c
        B, T, _ = x.shape
        hd = c.dim // c.n_heads
        h = self.n1(x)
        q = (h @ self.wq.T).view(B, T, c.n_heads, hd)
        k = (h @ self.wk.T).view(B, T, c.n_kv, hd)
        v = (h @ self.wv.T).view(B, T, c.n_kv, hd)
        q, k = rope(q, pos), rope(k, pos)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 1)
                v = torch.cat([cache["v"], v], 1)
            cache["k"], cache["v"] = k, v
        rep = c.n_heads // c.n_kv
        k = k.repeat_interleave(rep, 2)
        v = v.repeat_interleave(rep, 2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + bias
        o = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(B, T, c.dim)
        x = x + o @ self.wo.T
        h = self.n2(x)
        return x + (F.silu(h @ self.w1.T) * (h @ self.w3.T)) @ self.w2.T


class LLaMA(nn.Module):
    """Causal LM (head="lm") or score model (head="score": Linear(d, 1), as Safe-RLHF's ScoreModel)."""

    def __init__(self, c, w, head="lm", seed=0):
        super().__init__()
        self.c = c
        self.emb = nn.Parameter(w["emb"].clone())
        self.blocks = nn.ModuleList([Block(c, w, i) for i in range(c.n_layers)])
        self.norm = RMSNorm(w["norm"])
        if head == "lm":
            self.head = nn.Parameter(w["cls"].clone())
        else:
            g = torch.Generator().manual_seed(seed)
            self.head = nn.Parameter((torch.rand(1, c.dim, generator=g) * 2 - 1) / math.sqrt(c.dim))
            self.bias = nn.Parameter(torch.zeros(1))
        self.kind = head

    def forward(self, ids, mask, caches=None, pos=None, keymask=None):
        if pos is None:
            pos = (mask.cumsum(1) - 1).clamp(min=0)
        if keymask is None:
            keymask = mask
        B, T = ids.shape
        S = keymask.shape[1]
        causal = torch.ones(T, S, dtype=torch.bool, device=ids.device).tril(S - T)
        allowed = causal[None, None] & keymask[:, None, None, :].bool()
        bias = torch.where(allowed, torch.zeros((), device=ids.device), torch.full((), -1e9, device=ids.device))
        x = self.emb[ids]
        for i, b in enumerate(self.blocks):
            x = b(x, pos, bias, None if caches is None else caches[i])
        x = self.norm(x)
        out = x @ self.head.T
        return out if self.kind == "lm" else out[..., 0] + self.bias


def token_logprobs(model, ids, mask):
    logits = model(ids, mask)[:, :-1]
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]


@torch.no_grad()
def generate(model, prompts, gen_len, gen):
    B, P = prompts.shape
    caches = [dict() for _ in model.blocks]
    dev = prompts.device
    mask = torch.ones(B, P, dtype=torch.long, device=dev)
    logits = model(prompts, mask, caches)[:, -1]
    seq, keymask = [prompts], mask
    for i in range(gen_len):
        tok = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        seq.append(tok)
        keymask = torch.cat([keymask, torch.ones(B, 1, dtype=torch.long, device=dev)], 1)
        if i == gen_len - 1:
            break
        pos = torch.full((B, 1), P + i, dtype=torch.long, device=dev)
        logits = model(tok, torch.ones(B, 1, dtype=torch.long, device=dev), caches, pos=pos, keymask=keymask)[:, -1]
    return torch.cat(seq, 1)


def masked_mean(x, m):
    return ((x * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, w = load_llama2c(args.model)
    dev = torch.device(args.device)
    actor, ref = LLaMA(c, w).to(dev), LLaMA(c, w).to(dev)
    rm, cm = LLaMA(c, w, "score", 1).to(dev), LLaMA(c, w, "score", 2).to(dev)
    rcrit, ccrit = copy.deepcopy(rm), copy.deepcopy(cm)
    for m in (ref, rm, cm):
        m.requires_grad_(False)
    opts = [adamw(actor.parameters(), 1e-5), adamw(rcrit.parameters(), 5e-6), adamw(ccrit.parameters(), 5e-6)]
    g = torch.Generator(device=dev).manual_seed(7)
    prompts = torch.randint(3, c.vocab, (args.batch, args.prompt_len), generator=g, device=dev)
    prompts[:, 0] = 1
    times = []
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for step in range(1 + args.steps):
        sync()
        t0 = time.perf_counter()
        seq = generate(actor, prompts, args.gen_len, g)
        sync()
        t1 = time.perf_counter()
        mask = torch.ones_like(seq)
        start = args.prompt_len - 1
        with torch.no_grad():
            old_logp = token_logprobs(actor, seq, mask)
            ref_logp = token_logprobs(ref, seq, mask)
            reward = rm(seq, mask)[:, -1]
            cost = cm(seq, mask)[:, -1]
            rv = rcrit(seq, mask)[:, :-1]
            cv = ccrit(seq, mask)[:, :-1]
        sync()
        t2 = time.perf_counter()
        # KL shaping + GAE (host math, as in the Go loop) then the three updates.
        L = seq.shape[1] - 1
        smask = mask[:, 1:].float()
        rmask = smask.clone()
        rmask[:, :start] = 0
        kl = old_logp - ref_logp
        rewards = (-0.01 * kl).clone()
        costs = (0.01 * kl).clone()
        rewards[:, -1] += reward
        costs[:, -1] += cost
        rewards, costs = rewards.clamp(-50, 50), costs.clamp(-50, 50)

        def gae(values, r):
            adv = torch.zeros_like(values)
            last = torch.zeros(values.shape[0], device=values.device)
            for t in reversed(range(start, L)):
                nv = values[:, t + 1] if t + 1 < L else 0.0
                last = r[:, t] + nv - values[:, t] + 0.95 * last
                adv[:, t] = last
            return adv, adv + values

        ra, rr = gae(rv, rewards)
        ca, cr = gae(cv, costs)
        lam = 1.0
        adv = (ra - lam * ca) / (1 + lam)
        logp = token_logprobs(actor, seq, mask)
        ratio = (logp - old_logp).exp()
        loss = -masked_mean(torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.2)), rmask)
        opts[0].zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        opts[0].step()
        for crit, old, ret, opt in ((rcrit, rv, rr, opts[1]), (ccrit, cv, cr, opts[2])):
            v = crit(seq, mask)[:, :-1]
            vc = torch.max(torch.min(v, old + 5), old - 5)
            vl = 0.5 * masked_mean(torch.max((v - ret) ** 2, (vc - ret) ** 2), rmask)
            opt.zero_grad()
            vl.backward()
            torch.nn.utils.clip_grad_norm_(crit.parameters(), 1.0)
            opt.step()
        sync()
        t3 = time.perf_counter()
        if step > 0:
            times.append((t1 - t0, t2 - t1, t3 - t2))
    n = len(times)
    gen_s, score_s, upd_s = (sum(t[i] for t in times) / n for i in range(3))
    B, T = args.batch, args.prompt_len + args.gen_len
    res = {"rollout tokens/s (generation)": B * args.gen_len / gen_s,
           "train tokens/s (actor+2 critics)": B * T / upd_s,
           "step: generation (s)": gen_s, "step: scoring, 6 models (s)": score_s,
           "step: update, 3 models (s)": upd_s, "step: total (s)": gen_s + score_s + upd_s,
           "peak RSS (MiB, VmHWM)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return res


def go_bench(args):
    out = subprocess.run([args.go_bin, "bench", "--model", args.model, "--batch", str(args.batch),
                          "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--steps", str(args.steps),
                          "--top-k", "0", "--dtype", "f32"]
                         + (["--backend", args.go_backend] if args.go_backend else []),
                         check=True, capture_output=True, text=True).stdout
    vals = {}
    for line in out.splitlines():
        m = re.match(r"\|\s*(.+?)\s*\|\s*([0-9.]+)\s*\|", line)
        if m:
            vals[m.group(1)] = float(m.group(2))
    return out, vals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/data/models/stories260K.bin")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--go-backend", default="", help="--backend for `saferlhf bench` (e.g. xla:cuda)")
    ap.add_argument("--go-bin", default="", help="saferlhf binary: also run `saferlhf bench` and print Go/PyTorch ratios")
    args = ap.parse_args()
    res = run(args)
    print(f"torch {torch.__version__} on {args.device}, {args.threads} threads, batch {args.batch}, prompt {args.prompt_len} + {args.gen_len} generated")
    go = {}
    if args.go_bin:
        out, go = go_bench(args)
        print(out)
    print(f"| {'quantity':34} | {'PyTorch':>10} | {'Go':>10} | {'Go/PyTorch time':>15} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 17}|")
    for k, v in res.items():
        g = go.get(k)
        ratio = ""
        if g:
            # Time ratio: > 1 means Go is slower (for tokens/s the inverse of the rate ratio).
            ratio = f"{(v / g) if 'tokens/s' in k else (g / v):.2f}" if "MiB" not in k else f"{g / v:.2f} (mem)"
        print(f"| {k:34} | {v:10.3f} | {'' if g is None else f'{g:10.3f}':>10} | {ratio:>15} |")


if __name__ == "__main__":
    main()
