#!/usr/bin/python3
"""Times the Safe RLHF kernel formulas in PyTorch (CPU, float32) on the shapes
of the Go benchmarks (kernels/bench_test.go) and, given the output of
`go test -bench`, prints the speed ratio PyTorch time / Go time per kernel.

The PyTorch code follows the reference implementation (PKU-Alignment/safe-rlhf,
spec ../../shared/reference/safe-rlhf-spec.md): GAE is its Python loop over t,
run once per stream; end indices come from `nonzero()` per row; the token-wise
losses loop over rows. Losses that the Go kernels differentiate are timed as
forward + backward (autograd) so that both sides produce the gradient.

Usage:
  CGO_ENABLED=0 go test -tags noxla -run '^$' -bench . -cpu 1 ./kernels/ > /tmp/go.txt
  /usr/bin/python3 bench/torch_kernels.py --threads 1 --go /tmp/go.txt

Without --go it prints the PyTorch timings only. With --cpu-time both sides
are compared on process CPU time (Go's cpu-ns/op metric, Python's
time.process_time), which is robust on a shared machine.
"""
import argparse
import re
import sys
import time

import torch

SHAPES = [(64, 512), (64, 2048), (512, 512), (512, 2048)]


def masked_mean(x, mask):
    return ((x * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()


def end_index(mask):
    return torch.cat([m.nonzero()[-1] for m in mask])


def kl_shape(reward, cost, log_probs, ref_log_probs, seq_mask, kl_coeff=0.01, clip=50.0):
    end = end_index(seq_mask)
    kl = log_probs - ref_log_probs
    pen = -kl_coeff * kl
    rewards = torch.scatter_add(pen, -1, end.unsqueeze(-1), reward.unsqueeze(-1))
    out = [torch.clamp(rewards, -clip, clip)]
    if cost is not None:
        costs = torch.scatter_add(-pen, -1, end.unsqueeze(-1), cost.unsqueeze(-1))
        out.append(torch.clamp(costs, -clip, clip))
    return out


def gae(values, rewards, seq_mask, start, gamma=1.0, lam=0.95):
    last = 0.0
    rev = []
    values = values * seq_mask
    rewards = rewards * seq_mask
    L = rewards.size(-1)
    for t in reversed(range(start, L)):
        nv = values[:, t + 1] if t < L - 1 else 0.0
        delta = rewards[:, t] + gamma * nv - values[:, t]
        last = delta + gamma * lam * last
        rev.append(last)
    adv = torch.stack(rev[::-1], dim=1)
    return adv, adv + values[:, start:]


def actor_loss(log_probs, old, adv_r, adv_c, mask, lam=1.0, eps=0.2):
    adv = adv_r if adv_c is None else (adv_r - lam * adv_c) / (1.0 + lam)
    ratio = torch.exp(log_probs - old)
    s = torch.minimum(adv * ratio, adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps))
    loss = -masked_mean(s, mask)
    with torch.no_grad():  # the Go kernel also returns these two
        clipfrac = masked_mean(((ratio - 1).abs() > eps).float(), mask)
        approx_kl = masked_mean(ratio - 1 - (log_probs - old), mask)
    return loss, clipfrac, approx_kl


def critic_loss(values, old, returns, mask, c=5.0):
    vc = torch.clamp(values, old - c, old + c)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (vc - returns) ** 2), mask)


def pair_token_wise(hi_ids, lo_ids, hi_mask, lo_mask, hi, lo, reg, hi_sign=None, lo_sign=None):
    losses = []
    F = torch.nn.functional
    for i in range(hi.size(0)):
        e = max(hi_mask[i].nonzero()[-1].item(), lo_mask[i].nonzero()[-1].item())
        d = (hi_ids[i] != lo_ids[i]).nonzero()[0].item()
        h, l = hi[i, d:e + 1], lo[i, d:e + 1]
        x = -F.logsigmoid(h - l).mean()
        if hi_sign is not None:
            x = x - F.logsigmoid(-lo_sign[i] * l).mean() - F.logsigmoid(-hi_sign[i] * h).mean()
        if reg > 0:
            x = x + reg * torch.stack([l, h]).square().mean()
        losses.append(x)
    return torch.stack(losses).mean()


def whiten(x, mask, shift_mean=True):
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / n
    w = (x - mean) * torch.rsqrt(var + 1e-8)
    return w if shift_mean else w + mean


def normalizer_update(state, batch):
    mean, var, count = state
    bm, bv, bc = batch.mean(), batch.var(), batch.numel()
    delta = bm - mean
    tot = count + bc
    new_mean = mean + delta * bc / tot
    m2 = var * count + bv * bc + delta.square() * count * bc / tot
    return new_mean, m2 / tot, tot


def data(B, T):
    g = torch.Generator().manual_seed(1)
    L = T - 1
    S = L // 4
    N = L - S
    f = lambda *s: torch.randn(*s, generator=g)
    m = torch.zeros(B, L)
    for i in range(B):
        end = S + int(torch.randint(N, (1,), generator=g))
        m[i, int(torch.randint(S + 1, (1,), generator=g)):end + 1] = 1
    ids1 = torch.arange(L).repeat(B, 1)
    ids2 = ids1.clone()
    ids2[:, S:] += 1
    return dict(B=B, L=L, S=S, N=N, m=m, mS=m[:, S:].contiguous(), lp=f(B, L), ref=f(B, L), v=f(B, L), c=f(B, L),
                lpS=f(B, N), oldS=f(B, N), advS=f(B, N), advC=f(B, N), reward=f(B), cost=f(B), ids1=ids1, ids2=ids2)


def kernels(d):
    """name -> zero-argument callable doing the work of the Go benchmark of that name."""
    def actor(lag):
        def run():
            lp = d['lpS'].clone().requires_grad_(True)
            loss, _, _ = actor_loss(lp, d['oldS'], d['advS'], d['advC'] if lag else None, d['mS'])
            loss.backward()
        return run

    def critic():
        v = d['lpS'].clone().requires_grad_(True)
        critic_loss(v, d['oldS'], d['advS'], d['mS']).backward()

    def ends():
        e = end_index(d['m'])
        return d['lp'].gather(1, e.unsqueeze(1)), d['ref'].gather(1, e.unsqueeze(1))

    return {
        'MaskedMean': lambda: masked_mean(d['lp'], d['m']),
        'Whiten': lambda: whiten(d['lp'], d['m']),
        'KLShapedRewardsCosts': lambda: kl_shape(d['reward'], d['cost'], d['lp'], d['ref'], d['m']),
        'KLShapedRewards': lambda: kl_shape(d['reward'], None, d['lp'], d['ref'], d['m']),
        'GAE': lambda: (gae(d['v'], d['lp'], d['m'], d['S']), gae(d['c'], d['ref'], d['m'], d['S'])),
        'GAE1': lambda: gae(d['v'], d['lp'], d['m'], d['S']),
        'ActorLossPPOLag': actor(True),
        'ActorLossPPO': actor(False),
        'CriticLoss': critic,
        'EndScores': ends,
        'RewardLossTokenWise': lambda: pair_token_wise(d['ids1'], d['ids2'], d['m'], d['m'], d['lp'], d['ref'], 0.001),
        'CostLossTokenWise': lambda: pair_token_wise(d['ids1'], d['ids2'], d['m'], d['m'], d['lp'], d['ref'], 0.001,
                                                     d['cost'].sign(), d['reward'].sign()),
        'NormalizerUpdate': lambda: normalizer_update((torch.tensor(0.0), torch.tensor(1.0), 0), d['lp'].flatten()),
    }


def timeit(fn, min_time):
    fn()
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        n += 1
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if w >= min_time and n >= 2:
            return w / n, c / n


def parse_go(path):
    """(kernel, B, T) -> (wall ns/op, cpu ns/op or None) from `go test -bench` output."""
    out = {}
    pat = re.compile(r'^Benchmark(\w+)/B=(\d+)/T=(\d+)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op(.*)$')
    for line in open(path):
        m = pat.match(line.strip())
        if m:
            cpu = re.search(r'([\d.]+) cpu-ns/op', m.group(5))
            out[(m.group(1), int(m.group(2)), int(m.group(3)))] = (float(m.group(4)), float(cpu.group(1)) if cpu else None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    ap.add_argument('--go', help='output of go test -bench for the kernels package')
    ap.add_argument('--cpu-time', action='store_true', help='compare process CPU time instead of wall time')
    ap.add_argument('--min-time', type=float, default=0.3, help='seconds per measurement')
    ap.add_argument('--only', help='regexp of kernel names to run')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(True)
    gob = parse_go(a.go) if a.go else {}
    print(f'# torch {torch.__version__}, {a.threads} thread(s), float32, times per call; ratio = torch / Go '
          f'({"CPU" if a.cpu_time else "wall"} time)')
    print(f'{"kernel":24s} {"B":>4s} {"T":>5s} {"torch ms":>10s} {"Go ms":>9s} {"ratio":>8s}')
    ratios = []
    for B, T in SHAPES:
        d = data(B, T)
        for name, fn in kernels(d).items():
            if a.only and not re.search(a.only, name):
                continue
            w, c = timeit(fn, a.min_time)
            t = c if a.cpu_time else w
            g = gob.get((name, B, T))
            gs, r = '', ''
            if g:
                gt = g[1] if a.cpu_time and g[1] is not None else g[0]
                gs = f'{gt / 1e6:9.3f}'
                ratio = t * 1e9 / gt
                ratios.append(ratio)
                r = f'{ratio:7.1f}x'
            print(f'{name:24s} {B:4d} {T:5d} {t * 1e3:10.3f} {gs:>9s} {r:>8s}', flush=True)
    if ratios:
        ratios.sort()
        print(f'# ratio over {len(ratios)} kernel/shape pairs: min {ratios[0]:.1f}x, median {ratios[len(ratios) // 2]:.1f}x, max {ratios[-1]:.1f}x')


if __name__ == '__main__':
    sys.exit(main())
