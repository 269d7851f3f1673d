#!/usr/bin/env python3
"""Human summary of a bench/gpu/scale.sh run: reads OUT/results.jsonl (one line per section) and
prints, per section, its status and the numbers issues 9 and 14 ask for, with Go/PyTorch ratios.
scale.sh rewrites OUT/summary.txt with it after every section. Usage: scale_summary.py OUT"""
import json
import os
import sys


def load(out):
    runs = {}
    try:
        with open(os.path.join(out, "results.jsonl")) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except ValueError as e:
                    print("unreadable results line (%s): %s" % (e, line[:200]))
                    continue
                runs[r.get("run", "?")] = r
    except OSError as e:
        print("no results.jsonl: %s" % e)
    return runs


def num(v, fmt="%.3g"):
    return fmt % v if isinstance(v, (int, float)) else "-"


def status(r):
    if "skipped" in r:
        return "SKIPPED (%s)" % r["skipped"]
    rc = r.get("exit")
    s = "ok" if rc == 0 else ("TIMED OUT" if rc in (124, 137) else "FAILED (exit %s)" % rc)
    peak = r.get("peak_device_mib")
    return "%s in %ss of %ss, peak device %s MiB (nvidia-smi)" % (s, r.get("seconds"), r.get("limit_s"), "?" if peak is None else peak)


def go_lines(res):
    mib = 1 << 20
    out = ["step %s s = generation %s + scoring %s + actor %s + 2 critics %s + RL math %s (%s)" % (
        num(res.get("step_s")), num(res.get("gen_s")), num(res.get("score_s")), num(res.get("actor_update_s")),
        num(res.get("critic_updates_s")), num(res.get("rl_math_s")), res.get("rl_math", "?")),
        "warm-up step %s s, load %s s, per-layer programs compile %s s, gen %s tok/s = %s of the HBM bound, update MFU %s" % (
        num(res.get("warmup_step_s")), num(res.get("load_s")), num(res.get("programs_compile_s")),
        num(res.get("gen_tokens_per_s"), "%.0f"), num(res.get("gen_hbm_fraction")), num(res.get("update_mfu"))),
        "host<->device per step: scoring+RL+updates %s B (ids %s B); all incl. generation %s MiB up, %s MiB down; "
        "host peak RSS %s MiB, plan %s GiB" % (
        res.get("host_device_bytes_per_step"), res.get("host_device_id_bytes_per_step"),
        num((res.get("h2d_bytes_per_step") or 0) / mib), num((res.get("d2h_bytes_per_step") or 0) / mib),
        num(res.get("host_peak_rss_mib"), "%.0f"), num(res.get("planned_peak_gib")))]
    if "checkpoint_bytes" in res:
        out.append("checkpoint %s GiB written in %s s (host peak RSS %s MiB), restored in %s s, resumed step %s s" % (
            num(res["checkpoint_bytes"] / (1 << 30)), num(res.get("checkpoint_write_s")),
            num(res.get("checkpoint_peak_rss_mib"), "%.0f"), num(res.get("restore_s")), num(res.get("resumed_step_s"))))
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = load(out)
    print("bench/gpu/scale.sh summary (%d sections recorded)" % len(runs))
    for name, r in runs.items():
        print("\n%-14s %s" % (name, status(r)))
        res = r.get("result")
        if not isinstance(res, (dict, list)):
            continue
        if name.startswith("go_") or name == "rlmath_host":
            lines = go_lines(res)
        elif name.startswith("torch_"):
            lines = ["step %s s = generation %s + scoring %s + actor %s + 2 critics %s + RL math %s; warm-up %s s; "
                     "device peak %s MiB" % (num(res.get("step_s")), num(res.get("gen_s")), num(res.get("score_s")),
                                             num(res.get("actor_update_s")), num(res.get("critic_updates_s")),
                                             num(res.get("rl_math_s")), num(res.get("warmup_step_s")),
                                             num(res.get("device_peak_mib"), "%.0f"))]
            g = (runs.get("go_" + name[len("torch_"):]) or {}).get("result")
            if isinstance(g, dict):
                ratio = lambda k: num(g[k] / res[k], "%.2f") if g.get(k) and res.get(k) else "-"
                lines.append("Go / PyTorch: step %s, generation %s, scoring %s, actor %s, critics %s (goal: step <= 0.7)" % (
                    ratio("step_s"), ratio("gen_s"), ratio("score_s"), ratio("actor_update_s"), ratio("critic_updates_s")))
        elif name == "rlmath_device":
            gm, km = res.get("graph_ms"), res.get("kernels_ms")
            lines = ["RL math at B=16, 128+384: graph %s ms, kernels/cuda %s ms (graph/kernels %s)" % (
                num(gm), num(km), num(gm / km, "%.2f") if gm and km else "-")
                + (" (CPU self-check: a sample line, not a measurement)" if res.get("cpu_check_sample") else "")]
        elif name == "dist":
            lines = ["backend %s, NCCL %s" % (res.get("backend"), res.get("nccl_lib") or "(searched)"),
                     "sections: " + ", ".join("%s %s (%ss)" % (k, "ok" if v.get("exit") == "0" else "exit " + str(v.get("exit")),
                                                               v.get("seconds")) for k, v in res.get("sections", {}).items())]
            lines += ["what ran: " + w for w in res.get("what_ran", [])]
            lines += ["%-16s %s" % (k, json.dumps(v)) for k, v in res.get("runs", {}).items()]
            lines.append("ppo bench, 2 ranks, ZeRO-1: %s" % json.dumps(res.get("ppo_bench_2ranks_zero1")))
        elif name.startswith("numerics"):
            lines = ["%-28s rel. L2 %s, max |d| %s, top-1 %s" % (
                x.get("Label"), num(x.get("Diff", {}).get("RelL2")), num(x.get("Diff", {}).get("MaxAbs")),
                num(x.get("Diff", {}).get("Top1"))) for x in res] if isinstance(res, list) else []
        else:
            lines = [json.dumps(res)[:400]]
        for l in lines:
            print("    " + l)


if __name__ == "__main__":
    main()
