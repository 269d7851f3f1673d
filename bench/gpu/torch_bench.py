"""PyTorch baselines for the kernels/cuda benchmarks, on the same shapes and
under the same names (bench/gpu/check.sh runs it on the GPU machine).

Each line: `torch <BenchmarkName/shape> ms=<wall ms per call>`, timed like the
Go side: warm-up, then a loop, then a device synchronisation. The formulas are
the reference's (safe-rlhf, spec §1.2-1.6): GAE is its per-timestep Python loop
(the only form plain PyTorch has), end indices are gathered vectorised (the
reference loops over rows with nonzero(), which would be far slower), the
losses run forward + backward (autograd) and read the loss back, as our
kernels return their scalars.
"""
import sys
import time

import torch

dev = torch.device("cuda")
torch.manual_seed(0)
ITERS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
SHAPES = [(64, 512), (64, 2048), (512, 512), (512, 2048)]
LP_SHAPES = [(4096, 32000), (32768, 32000)]


def timeit(name, fn, iters=ITERS):
    fn()
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / iters * 1e3
    print(f"torch {name} ms={ms:.4f}", flush=True)


def bench_mask(B, L):
    start = L // 4
    g = torch.Generator().manual_seed(7)
    m = torch.zeros(B, L)
    for i in range(B):
        p = int(torch.randint(0, start + 1, (1,), generator=g))
        e = start + int(torch.randint(0, L - start, (1,), generator=g))
        m[i, p : e + 1] = 1
    return m.to(dev)


def end_index(mask):
    # last index with mask = 1 (vectorised; the reference uses nonzero() per row)
    L = mask.shape[-1]
    idx = torch.arange(L, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, -1).max(dim=-1).values


def kl_shape(logp, ref, mask, reward, cost, beta=0.01, clip=50.0):
    end = end_index(mask).unsqueeze(-1)
    kl = logp - ref
    pen = -beta * kl
    r = torch.scatter_add(pen, -1, end, reward.unsqueeze(-1))
    c = torch.scatter_add(-pen, -1, end, cost.unsqueeze(-1))
    return r.clamp(-clip, clip), c.clamp(-clip, clip)


def gae_ref(values, rewards, mask, start, gamma=1.0, lam=0.95):
    last = 0.0
    rev = []
    values = values * mask
    rewards = rewards * mask
    L = rewards.size(-1)
    for t in reversed(range(start, L)):
        nv = values[:, t + 1] if t < L - 1 else 0.0
        delta = rewards[:, t] + gamma * nv - values[:, t]
        last = delta + gamma * lam * last
        rev.append(last)
    adv = torch.stack(rev[::-1], dim=1)
    return adv, adv + values[:, start:]


def masked_mean(x, m):
    return ((x * m).sum(dim=-1) / m.sum(dim=-1)).mean()


def actor_loss(logp, old, ar, ac, mask, lam=1.0, eps=0.2):
    adv = (ar - lam * ac) / (1 + lam)
    lr = logp - old
    ratio = torch.exp(lr)
    s1 = adv * ratio
    s2 = adv * torch.clamp(ratio, 1 - eps, 1 + eps)
    loss = -masked_mean(torch.minimum(s1, s2), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > eps).float(), mask)
        approx_kl = masked_mean((ratio - 1) - lr, mask)
    return loss, clipfrac, approx_kl


def critic_loss(v, old, ret, mask, c=5.0):
    vc = torch.clamp(v, old - c, old + c)
    return 0.5 * masked_mean(torch.maximum((v - ret) ** 2, (vc - ret) ** 2), mask)


def main():
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    for B, T in SHAPES:
        L = T - 1
        start = L // 4
        N = L - start
        shape = f"B={B},T={T}"
        mask = bench_mask(B, L)
        lp, ref = torch.rand(B, L, device=dev), torch.rand(B, L, device=dev)
        rw, cs = torch.rand(B, device=dev), torch.rand(B, device=dev)
        timeit(f"BenchmarkKLShaped/{shape}", lambda: kl_shape(lp, ref, mask, rw, cs))
        vr, r, vc, c = (torch.rand(B, L, device=dev) for _ in range(4))

        def gae2():
            gae_ref(vr, r, mask, start)
            gae_ref(vc, c, mask, start)

        timeit(f"BenchmarkGAE/{shape}", gae2, iters=max(2, ITERS // 5) if T >= 2048 else ITERS)
        m2 = bench_mask(B, N)
        logp = (torch.rand(B, N, device=dev) * 0.2).requires_grad_()
        old, ar, ac = torch.rand(B, N, device=dev) * 0.2, torch.rand(B, N, device=dev), torch.rand(B, N, device=dev)

        def actor():
            logp.grad = None
            loss, cf, kl = actor_loss(logp, old, ar, ac, m2)
            loss.backward()
            return loss.item(), cf.item(), kl.item()

        timeit(f"BenchmarkActorLoss/{shape}", actor)
        v = torch.rand(B, N, device=dev).requires_grad_()
        vo, ret = torch.rand(B, N, device=dev), torch.rand(B, N, device=dev)

        def critic():
            v.grad = None
            loss = critic_loss(v, vo, ret, m2)
            loss.backward()
            return loss.item()

        timeit(f"BenchmarkCriticLoss/{shape}", critic)
        mT = bench_mask(B, T)
        s1, s2 = torch.rand(B, T, device=dev), torch.rand(B, T, device=dev)

        def ends():
            e = end_index(mT).unsqueeze(-1)
            return s1.gather(-1, e), s2.gather(-1, e)

        timeit(f"BenchmarkEndScores/{shape}", ends)
        del mask, lp, ref, vr, r, vc, c, logp, old, ar, ac, v, vo, ret, mT, s1, s2
    for N, V in LP_SHAPES:
        shape = f"N={N},V={V}"
        logits = (torch.rand(N, V, device=dev) - 0.5) * 16
        tg = torch.randint(0, V, (N, 1), device=dev)
        timeit(f"BenchmarkTokenLogProbs/{shape}", lambda: torch.log_softmax(logits, dim=-1).gather(-1, tg))
        x = logits.clone().requires_grad_()

        def lp_grad():
            x.grad = None
            torch.log_softmax(x, dim=-1).gather(-1, tg).sum().backward()

        # forward + backward in torch; our Grad benchmark times the backward only
        timeit(f"BenchmarkTokenLogProbsGrad/{shape}", lp_grad)
        del logits, x, tg
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
