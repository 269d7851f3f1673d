#!/usr/bin/env python3
"""PyTorch twin of train/model's benchmarks (BenchmarkModel, BenchmarkGenerate).

Same LLaMA graph (RMSNorm, RoPE rotate-half, GQA, SwiGLU, tied head), same
configs, batches and loss (mean NLL of real next tokens, left padding), AdamW
(betas 0.9/0.95, wd 0.01, clip 1.0), KV-cache sampling (temperature 1,
top-p 0.9, 16-token prompts, 128 new tokens). Prints one JSON line per case.

    python3 bench/torch_model.py [--threads 2] [--only stories260K|15M] [--reps 3]
"""
import argparse, ctypes, json, math, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "stories260K": dict(d=64, f=172, layers=5, heads=8, kv=4, vocab=512, b=16, t=256),
    "15M": dict(d=288, f=768, layers=6, heads=6, kv=6, vocab=32000, b=4, t=256),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h, self.kv = c["d"], c["heads"], c["kv"]
        self.dh = d // self.h
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, self.h * self.dh, bias=False)
        self.k = nn.Linear(d, self.kv * self.dh, bias=False)
        self.v = nn.Linear(d, self.kv * self.dh, bias=False)
        self.o = nn.Linear(self.h * self.dh, d, bias=False)
        self.gate = nn.Linear(d, c["f"], bias=False)
        self.up = nn.Linear(d, c["f"], bias=False)
        self.down = nn.Linear(c["f"], d, bias=False)

    def forward(self, x, cos, sin, bias, cache=None):
        b, t, _ = x.shape
        xn = self.n1(x)
        q = self.q(xn).view(b, t, self.h, self.dh).transpose(1, 2)
        k = self.k(xn).view(b, t, self.kv, self.dh).transpose(1, 2)
        v = self.v(xn).view(b, t, self.kv, self.dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        rep = self.h // self.kv
        if rep > 1:
            k = k.repeat_interleave(rep, 1)
            v = v.repeat_interleave(rep, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh) + bias
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(o)
        xn = self.n2(x)
        return x + self.down(F.silu(self.gate(xn)) * self.up(xn))


class LLaMA(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["d"])
        self.blocks = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["d"])
        dh = c["d"] // c["heads"]
        self.register_buffer("inv", 1.0 / (10000 ** (torch.arange(0, dh, 2).float() / dh)), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def rope(self, pos):
        a = pos[..., None].float() * self.inv
        a = torch.cat([a, a], -1)[:, None]  # [B,1,T,dh]
        return a.cos(), a.sin()

    def forward(self, ids, mask, caches=None, pos=None, key_mask=None):
        b, t = ids.shape
        if pos is None:
            pos = (mask.cumsum(1) - 1).clamp(min=0)
        cos, sin = self.rope(pos)
        if key_mask is None:
            causal = torch.full((t, t), -1e9).triu(1)
            bias = causal[None, None] + ((1 - mask) * -1e9)[:, None, None, :]
        else:
            bias = ((1 - key_mask) * -1e9)[:, None, None, :]
        x = self.emb(ids)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, bias, None if caches is None else caches[i])
        return self.norm(x) @ self.emb.weight.t()


def loss_fn(m, ids, mask):
    logits = m(ids, mask)[:, :-1]
    lp = logits.gather(-1, ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)
    mk = mask[:, 1:]
    return -(lp * mk).sum() / mk.sum()


def batch(c):
    b, t, v = c["b"], c["t"], c["vocab"]
    ids = (torch.arange(b * t) * 7919 + 13) % v
    ids = ids.view(b, t)
    mask = torch.ones(b, t)
    for r in range(b):
        mask[r, : r % 4] = 0
    return ids, mask


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timeit(fn, reps):
    """Wall and CPU seconds per call (CPU time is steadier on a shared machine)."""
    fn()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps, (cpu_seconds() - c0) / reps


def sample(logits, gen):
    p = (logits / 1.0).softmax(-1)
    sp, si = p.sort(-1, descending=True)
    keep = sp.cumsum(-1) - sp < 0.9
    sp = sp * keep
    ch = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=gen)
    return si.gather(-1, ch)


@torch.no_grad()
def generate(m, prompts, new):
    b, p = prompts.shape
    caches = [dict() for _ in m.blocks]
    mask = torch.ones(b, p)
    logits = m(prompts, mask, caches)[:, -1]
    gen = torch.Generator().manual_seed(0)
    key_mask = mask
    for i in range(new):
        tok = sample(logits, gen)
        if i == new - 1:
            break
        key_mask = torch.cat([key_mask, torch.ones(b, 1)], 1)
        pos = torch.full((b, 1), p + i)
        logits = m(tok, None, caches, pos=pos, key_mask=key_mask)[:, -1]


def blas_info():
    """The BLAS library this process mapped (after a matmul) and, for OpenBLAS, its core type."""
    torch.ones(64, 64) @ torch.ones(64, 64)
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "blas" in l.lower() and "/" in l})
    info = dict(torch=torch.__version__, blas_libs=libs)
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
            h.openblas_get_corename.restype = ctypes.c_char_p
            h.openblas_get_config.restype = ctypes.c_char_p
            info.update(openblas_core=h.openblas_get_corename().decode(), openblas_config=h.openblas_get_config().decode())
            break
        except (OSError, AttributeError):
            continue
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(json.dumps(dict(blas_info(), threads=a.threads)), flush=True)
    for name, c in CONFIGS.items():
        if a.only and a.only != name:
            continue
        m = LLaMA(c)
        ids, mask = batch(c)
        tokens = c["b"] * c["t"]
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)

        def fwd():
            with torch.no_grad():
                loss_fn(m, ids, mask)

        def fwdbwd():
            m.zero_grad(set_to_none=True)
            loss_fn(m, ids, mask).backward()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(m, ids, mask).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()

        for mode, fn in (("fwd", fwd), ("fwdbwd", fwdbwd), ("adamw", step)):
            s, cpu = timeit(fn, a.reps)
            print(json.dumps(dict(config=name, mode=mode, batch=c["b"], seq=c["t"], ms_per_step=round(s * 1000, 1),
                                  cpu_ms_per_step=round(cpu * 1000, 1),
                                  tokens_per_s=round(tokens / s, 1),
                                  max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))), flush=True)
        for b in (1, 32):
            prompts = (torch.arange(b)[:, None] * 31 + torch.arange(16)[None] * 7 + 1) % c["vocab"]
            s, cpu = timeit(lambda: generate(m, prompts, 128), max(1, a.reps - 2))
            print(json.dumps(dict(config=name, mode="generate", batch=b, new_tokens=128,
                                  tokens_per_s=round(b * 128 / s, 1), tokens_per_cpu_s=round(b * 128 / cpu, 1),
                                  max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))), flush=True)


if __name__ == "__main__":
    main()
