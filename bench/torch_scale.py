#!/usr/bin/env python3
"""PyTorch twin of `saferlhf bench --preset P --init random --lora-rank R --dtype bf16` on one GPU.

The same PPO-Lag step on the same shapes: three frozen bf16 bases with random weights (the SFT
base shared by actor and reference, the reward model's base shared with the reward critic, the
cost model's with the cost critic), LoRA adapters (float32 masters, A uniform ±1/sqrt(in), B zero,
scale alpha/r) on the same target projections of actor and critics, float32 score heads, AdamW
(betas 0.9/0.95) on the float32 parameters, gradient clipping 1.0.
  generation: KV cache (preallocated, HF-style bf16 residual stream), SDPA attention, sampling
              with temperature, top-k (torch.topk), top-p, EOS disabled (every row gen-len tokens)
  scoring:    6 forward passes over [B, T] (actor, reference log-probs; reward, cost end scores;
              reward, cost critic values)
  RL math:    KL-shaped rewards/costs, GAE for both streams, (A^r − λA^c)/(1+λ), on the GPU
  updates:    actor (PPO-Lag clipped surrogate), two critics (clipped value loss), each in
              micro-batches of --micro-batch-size rows with gradient accumulation
Prints a table and writes --json with the keys of `saferlhf bench --json`.
Usage: python3 bench/torch_scale.py --preset llama-1b --lora-rank 16 --batch 16 --prompt-len 128 --gen-len 384
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "llama2-7b": dict(d=4096, ffn=11008, layers=32, heads=32, kv=32, vocab=32000, theta=10000.0, tied=False),
    "llama-3b": dict(d=3072, ffn=8192, layers=28, heads=24, kv=8, vocab=128256, theta=500000.0, tied=True),
    "llama-1b": dict(d=2048, ffn=8192, layers=16, heads=32, kv=8, vocab=128256, theta=500000.0, tied=True),
    "stories260K": dict(d=64, ffn=172, layers=5, heads=8, kv=4, vocab=512, theta=10000.0, tied=True),
}
TARGETS = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo", "gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def base_weights(c, dev, dt, seed, lm_head):
    g = torch.Generator(device=dev).manual_seed(seed)
    a = 0.02 * math.sqrt(3)

    def u(*shape):
        return ((torch.rand(*shape, generator=g, device=dev, dtype=torch.float32) * 2 - 1) * a).to(dt)

    d, hd = c["d"], c["d"] // c["heads"]
    w = {"emb": u(c["vocab"], d), "norm": torch.ones(d, device=dev, dtype=dt), "layers": []}
    for _ in range(c["layers"]):
        w["layers"].append(dict(n1=torch.ones(d, device=dev, dtype=dt), n2=torch.ones(d, device=dev, dtype=dt),
                                wq=u(c["heads"] * hd, d), wk=u(c["kv"] * hd, d), wv=u(c["kv"] * hd, d), wo=u(d, c["heads"] * hd),
                                w1=u(c["ffn"], d), w3=u(c["ffn"], d), w2=u(d, c["ffn"])))
    if lm_head:
        w["head"] = w["emb"] if c["tied"] else u(c["vocab"], d)
    return w


def lora_params(c, base, rank, targets, seed, dev):
    g = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for lw in base["layers"]:
        ad = {}
        for t in targets:
            W = lw[TARGETS[t]]
            o, i = W.shape
            A = ((torch.rand(rank, i, generator=g, device=dev) * 2 - 1) / math.sqrt(i)).requires_grad_()
            B = torch.zeros(o, rank, device=dev, requires_grad=True)
            ad[TARGETS[t]] = (A, B)
        out.append(ad)
    return out


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope_tables(c, n, dev, dt):
    hd = c["d"] // c["heads"]
    inv = 1.0 / (c["theta"] ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd))
    ang = torch.arange(n, device=dev, dtype=torch.float32)[:, None] * inv
    emb = torch.cat([ang, ang], -1)
    return emb.cos().to(dt), emb.sin().to(dt)


def rot(x, cos, sin):  # x [B, H, T, hd]; HF rotate_half
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


def sdpa(q, k, v, causal):
    """SDPA with GQA (PyTorch >= 2.5); older versions (the CPU check here) repeat K/V heads."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
    except (TypeError, AttributeError):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if hasattr(F, "scaled_dot_product_attention"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if causal:
            T = q.shape[2]
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return s.float().softmax(-1).to(q.dtype) @ v


def lin(x, W, ad, key, scale):
    y = x @ W.T
    if ad is not None and key in ad:
        A, B = ad[key]
        y = y + ((x @ A.to(x.dtype).T) @ B.to(x.dtype).T) * scale
    return y


def trunk(c, w, ids, lora, scale, tabs, start=0, cache=None):
    B, T = ids.shape
    H, KV, hd = c["heads"], c["kv"], c["d"] // c["heads"]
    cos, sin = tabs[0][start:start + T], tabs[1][start:start + T]
    x = w["emb"][ids]
    for li, lw in enumerate(w["layers"]):
        ad = None if lora is None else lora[li]
        h = rms(x, lw["n1"])
        q = lin(h, lw["wq"], ad, "wq", scale).view(B, T, H, hd).transpose(1, 2)
        k = lin(h, lw["wk"], ad, "wk", scale).view(B, T, KV, hd).transpose(1, 2)
        v = lin(h, lw["wv"], ad, "wv", scale).view(B, T, KV, hd).transpose(1, 2)
        q, k = rot(q, cos, sin), rot(k, cos, sin)
        if cache is not None:
            kc, vc = cache[li]
            kc[:, :, start:start + T] = k
            vc[:, :, start:start + T] = v
            k, v = kc[:, :, :start + T], vc[:, :, :start + T]
        o = sdpa(q, k, v, T > 1)
        x = x + lin(o.transpose(1, 2).reshape(B, T, H * hd), lw["wo"], ad, "wo", scale)
        h = rms(x, lw["n2"])
        x = x + lin(F.silu(lin(h, lw["w1"], ad, "w1", scale)) * lin(h, lw["w3"], ad, "w3", scale), lw["w2"], ad, "w2", scale)
    return rms(x, w["norm"])


def logprobs(c, w, ids, lora, scale, tabs):
    logits = (trunk(c, w, ids, lora, scale, tabs) @ w["head"].T)[:, :-1].float()
    return logits.gather(-1, ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)


def scores(c, w, ids, lora, scale, tabs, head):
    hw, hb = head
    return (trunk(c, w, ids, lora, scale, tabs).float() @ hw.T)[..., 0] + hb


@torch.no_grad()
def generate(c, w, lora, scale, tabs, prompts, gen_len, temp, top_k, top_p, gen):
    B, P = prompts.shape
    KV, hd = c["kv"], c["d"] // c["heads"]
    S = P + gen_len
    cache = [(torch.empty(B, KV, S, hd, device=prompts.device, dtype=w["emb"].dtype),
              torch.empty(B, KV, S, hd, device=prompts.device, dtype=w["emb"].dtype)) for _ in w["layers"]]
    x = trunk(c, w, prompts, lora, scale, tabs, 0, cache)[:, -1:]
    out = [prompts]
    for i in range(gen_len):
        logits = (x[:, -1] @ w["head"].T).float() / temp
        if top_k > 0:
            kth = torch.topk(logits, top_k, -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if 0 < top_p < 1:
            sl, si = logits.sort(-1, descending=True)
            cum = sl.softmax(-1).cumsum(-1)
            sl = sl.masked_fill(cum - sl.softmax(-1) >= top_p, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, si, sl)
        tok = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        out.append(tok)
        if i == gen_len - 1:
            break
        x = trunk(c, w, tok, lora, scale, tabs, P + i, cache)
    return torch.cat(out, 1)


def masked_mean(x, m):
    return (x * m).sum() / m.sum().clamp(min=1)


def run(a):
    dev = torch.device(a.device)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    c = PRESETS[a.preset]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    sft = base_weights(c, dev, dt, 1, True)
    rmb, cmb = base_weights(c, dev, dt, 2, False), base_weights(c, dev, dt, 3, False)
    targets = a.lora_targets.split(",")
    scale = a.lora_alpha / a.lora_rank
    la, lr_, lc = (lora_params(c, b, a.lora_rank, targets, s, dev) for b, s in ((sft, 4), (rmb, 5), (cmb, 6)))
    g = torch.Generator(device=dev).manual_seed(8)

    def head():
        return ((torch.rand(1, c["d"], generator=g, device=dev) * 2 - 1) / math.sqrt(c["d"])), torch.zeros(1, device=dev)
    rmh, cmh = head(), head()
    rch = tuple(t.clone().requires_grad_() for t in rmh)
    cch = tuple(t.clone().requires_grad_() for t in cmh)

    def params(lora, extra=()):
        return [p for ad in lora for ab in ad.values() for p in ab] + list(extra)
    opts = [torch.optim.AdamW(params(la), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01),
            torch.optim.AdamW(params(lr_, rch), lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0),
            torch.optim.AdamW(params(lc, cch), lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)]
    tabs = rope_tables(c, a.prompt_len + a.gen_len, dev, dt)
    sync()
    load = time.perf_counter() - t0
    prompts = torch.randint(3, c["vocab"], (a.batch, a.prompt_len), generator=g, device=dev)
    prompts[:, 0] = 1
    B, T, start = a.batch, a.prompt_len + a.gen_len, a.prompt_len - 1
    mb = min(a.micro_batch_size or B, B)
    times = []
    for step in range(1 + a.steps):
        sync()
        t = [time.perf_counter()]
        seq = generate(c, sft, la, scale, tabs, prompts, a.gen_len, a.temperature, a.top_k, a.top_p, g)
        sync()
        t.append(time.perf_counter())
        with torch.no_grad():
            old = logprobs(c, sft, seq, la, scale, tabs)
            ref = logprobs(c, sft, seq, None, scale, tabs)
            reward = scores(c, rmb, seq, None, scale, tabs, rmh)[:, -1]
            cost = scores(c, cmb, seq, None, scale, tabs, cmh)[:, -1]
            rv = scores(c, rmb, seq, lr_, scale, tabs, rch)[:, :-1]
            cv = scores(c, cmb, seq, lc, scale, tabs, cch)[:, :-1]
        sync()
        t.append(time.perf_counter())
        with torch.no_grad():
            L = T - 1
            m = torch.zeros(B, L, device=dev)
            m[:, start:] = 1
            kl = old - ref
            rw, cs = -0.01 * kl, 0.01 * kl
            rw[:, -1] += reward
            cs[:, -1] += cost
            rw, cs = rw.clamp(-50, 50), cs.clamp(-50, 50)

            def gae(values, r):
                adv = torch.zeros_like(values)
                last = torch.zeros(B, device=dev)
                for i in reversed(range(start, L)):
                    nv = values[:, i + 1] if i + 1 < L else 0.0
                    last = r[:, i] + nv - values[:, i] + 0.95 * last
                    adv[:, i] = last
                return adv, adv + values
            ra, rr = gae(rv, rw)
            ca, cr = gae(cv, cs)
            lam = 1.0
            adv = (ra - lam * ca) / (1 + lam)
        sync()
        t.append(time.perf_counter())
        opts[0].zero_grad()
        for lo in range(0, B, mb):
            sl = slice(lo, lo + mb)
            lp = logprobs(c, sft, seq[sl], la, scale, tabs)
            ratio = (lp - old[sl]).exp()
            loss = -masked_mean(torch.min(adv[sl] * ratio, adv[sl] * ratio.clamp(0.8, 1.2)), m[sl]) / (B // mb)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params(la), 1.0)
        opts[0].step()
        sync()
        t.append(time.perf_counter())
        for base, lora, hd_, oldv, ret, opt in ((rmb, lr_, rch, rv, rr, opts[1]), (cmb, lc, cch, cv, cr, opts[2])):
            opt.zero_grad()
            for lo in range(0, B, mb):
                sl = slice(lo, lo + mb)
                v = scores(c, base, seq[sl], lora, scale, tabs, hd_)[:, :-1]
                vc = torch.max(torch.min(v, oldv[sl] + 5), oldv[sl] - 5)
                vl = 0.5 * masked_mean(torch.max((v - ret[sl]) ** 2, (vc - ret[sl]) ** 2), m[sl]) / (B // mb)
                vl.backward()
            torch.nn.utils.clip_grad_norm_(params(lora, hd_), 1.0)
            opt.step()
        sync()
        t.append(time.perf_counter())
        times.append([t[i + 1] - t[i] for i in range(5)])
    steady = times[1:]
    n = len(steady)
    gen_s, score_s, rl_s, actor_s, crit_s = (sum(x[i] for x in steady) / n for i in range(5))
    step_s = gen_s + score_s + rl_s + actor_s + crit_s
    res = {"model": f"torch random {a.preset}", "backend": f"torch {torch.__version__} {a.device}", "dtype": a.dtype,
           "lora_rank": a.lora_rank, "batch": B, "prompt_len": a.prompt_len, "gen_len": a.gen_len,
           "micro_batch": a.micro_batch_size, "top_k": a.top_k, "steps": a.steps, "load_s": load,
           "warmup_step_s": sum(times[0]), "gen_s": gen_s, "score_s": score_s, "actor_update_s": actor_s,
           "critic_updates_s": crit_s, "rl_math_s": rl_s, "step_s": step_s,
           "gen_tokens_per_s": B * a.gen_len / gen_s, "score_tokens_per_s": 6 * B * T / score_s,
           "train_tokens_per_s": 3 * B * T / (actor_s + crit_s),
           "host_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if dev.type == "cuda":
        res["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="stories260K", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--micro-batch-size", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the f32 path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    res = run(a)
    print(f"torch twin: {res['model']}, {a.dtype}, batch {a.batch}, prompt {a.prompt_len} + {a.gen_len}, LoRA rank {a.lora_rank}, {res['backend']}")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"| {k:28} | {v:14.4f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
