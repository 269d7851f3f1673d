#!/usr/bin/env python3
"""Pools several `saferlhf compare` runs that differ only in --seed (same held-out prompts, same SFT/RM/CM).

For each policy and each quantity: the mean over all (prompt, seed) answers, and its difference to the
first policy (the SFT policy) averaged per prompt over the seeds, with a 95% percentile bootstrap over the
prompts (the prompts are resampled whole, so each prompt's seeds stay together).
Usage: python3 bench/compare/pool_seeds.py RUN1/compare.json RUN2/compare.json ...
"""
import json
import random
import sys

reps = [json.load(open(p)) for p in sys.argv[1:]]
names = [r["name"] for r in reps[0]["rows"]]
n = reps[0]["prompts"]
quantities = {
    "reward": lambda row: row["rewards"],
    "harmful (training CM)": lambda row: [float(c > 0) for c in row["costs"]],
    "harmful (judge)": lambda row: [float(c > 0) for c in row["judge_costs"]],
}


def per_prompt(i, q):
    """Mean over the seeds of quantity q for policy i, one value per prompt."""
    vals = [quantities[q](rep["rows"][i]) for rep in reps]
    return [sum(v[k] for v in vals) / len(vals) for k in range(n)]


rng = random.Random(42)
boot = [[rng.randrange(n) for _ in range(n)] for _ in range(2000)]


def ci(x):
    ms = sorted(sum(x[k] for k in b) / n for b in boot)
    return sum(x) / n, ms[int(0.025 * len(ms))], ms[int(0.975 * len(ms)) - 1]


print(f"{len(reps)} seeds x {n} prompts; mean over all answers, and the paired difference to {names[0]} [95% CI]")
print("| policy | " + " | ".join(f"{q} | Δ {q}" for q in quantities) + " |")
print("|---|" + "---|---|" * len(quantities))
for i, name in enumerate(names):
    cells = []
    for q in quantities:
        x = per_prompt(i, q)
        m = sum(x) / n
        if i == 0:
            cells += [f"{m:.3f}", ""]
        else:
            base = per_prompt(0, q)
            d, lo, hi = ci([a - b for a, b in zip(x, base)])
            cells += [f"{m:.3f}", f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"]
    print(f"| {name} | " + " | ".join(cells) + " |")
