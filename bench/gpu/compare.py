"""Joins `go test -bench` output of kernels/cuda with torch_bench.py output:
one row per benchmark with our ms/op, GB/s and fraction of copy bandwidth,
PyTorch's ms and the speed-up. Usage: compare.py go_bench.txt torch_bench.txt"""
import re
import sys

go = {}
for line in open(sys.argv[1]):
    m = re.match(r"^(Benchmark\S+?)(-\d+)?\s+\d+\s+.*?([\d.]+) ms/op", line)
    if not m:
        continue
    gbps = re.search(r"([\d.]+) GB/s", line)
    frac = re.search(r"([\d.]+) of-copy", line)
    go[m.group(1)] = (float(m.group(3)), float(gbps.group(1)) if gbps else 0.0, float(frac.group(1)) if frac else 0.0)
torch = {}
for line in open(sys.argv[2]):
    m = re.match(r"^torch (Benchmark\S+) ms=([\d.]+)", line)
    if m:
        torch[m.group(1)] = float(m.group(2))
print(f"{'benchmark':45s} {'ours ms':>10s} {'GB/s':>8s} {'of copy':>8s} {'torch ms':>10s} {'speed-up':>9s}")
for name, (ms, gbps, frac) in go.items():
    t = torch.get(name)
    ts = f"{t:10.4f}" if t is not None else f"{'-':>10s}"
    su = f"{t / ms:8.1f}x" if t is not None and ms > 0 else f"{'-':>9s}"
    print(f"{name:45s} {ms:10.4f} {gbps:8.1f} {frac:8.2f} {ts} {su}")
