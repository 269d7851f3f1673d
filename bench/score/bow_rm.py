#!/usr/bin/env python3
# Bag-of-words logistic-regression ceiling for hh-rlhf helpful pairs: features = word counts of the
# chosen minus the rejected final answer (+ log length ratio), split by prompt (hash), 10% held out.
import gzip, json, re, math, hashlib, random, sys, torch
files = sys.argv[1:]
rows = []
for f in files:
    op = gzip.open if f.endswith('.gz') else open
    for l in op(f, 'rt'):
        r = json.loads(l); rows.append(r)
def split(t):
    i = t.rfind('\n\nAssistant:'); return t[:i], t[i+len('\n\nAssistant:'):]
W = re.compile(r"[a-z']+")
data = []
for r in rows:
    pc, ac = split(r['chosen']); pr, ar = split(r['rejected'])
    if ac == ar: continue
    data.append((pc, W.findall(ac.lower()), W.findall(ar.lower())))
held = lambda p: int(hashlib.sha1(p.encode()).hexdigest(), 16) % 10 == 0
tr = [d for d in data if not held(d[0])]; te = [d for d in data if held(d[0])]
from collections import Counter
cnt = Counter(w for d in tr for s in (d[1], d[2]) for w in set(s))
vocab = {w: i for i, (w, c) in enumerate(cnt.most_common()) if c >= 3}
V = len(vocab) + 1
def feats(ds):
    X = torch.zeros(len(ds), V)
    for i, (_, a, b) in enumerate(ds):
        for w in a:
            if w in vocab: X[i, vocab[w]] += 1
        for w in b:
            if w in vocab: X[i, vocab[w]] -= 1
        X[i, -1] = math.log((len(a) + 1) / (len(b) + 1))
    return X
Xtr, Xte = feats(tr), feats(te)
def acc(w, X): return ((X @ w) > 0).float().mean().item()
lenonly = lambda X: (X[:, -1] > 0).float().mean().item()
print("pairs train %d held-out %d; length prior (longer chosen) %.3f" % (len(tr), len(te), lenonly(Xte)))
for l2 in [1e-2, 1e-3, 1e-4]:
    w = torch.zeros(V, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)
    def clo():
        opt.zero_grad(); loss = torch.nn.functional.softplus(-(Xtr @ w)).mean() + l2 * (w * w).sum(); loss.backward(); return loss
    opt.step(clo)
    k = acc(w.detach(), Xte); n = len(te)
    print("l2 %g: train %.3f held-out %.3f (n=%d)" % (l2, acc(w.detach(), Xtr), k, n))
