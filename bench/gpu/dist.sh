#!/usr/bin/env bash
# Data-parallel checks on one GPU (issue 14): gradient averaging through NCCL on XLA's device
# buffers (--collectives nccl), first with one rank through the real library, then with two ranks
# (two processes) sharing the one GPU, each a short reward-model run from stories260K on xla:cuda in
# f32 compared with one process averaging nothing (one rank: the fused single-process step); then,
# if time is left, the two ranks through the host (--collectives tcp) for the time it takes.
#
#   here:   bash bench/gpu/dist.sh --build [DEST]   cgo CLI + the train/collectives test binary +
#                                                  this script into DEST (default .carry/dist)
#   there:  bash .carry/dist/dist.sh                (device tool, carry [".carry/dist"]); scale.sh
#                                                  runs it as its "dist" section (BIN set there)
#   CPU:    DIST_CPU_TEST=1 bash bench/gpu/dist.sh  the script's own check here: --backend go and
#                                                  --collectives tcp in place of nccl
#
# Two ranks on one GPU: NCCL refuses two ranks of one communicator on the same device of one host,
# so each rank gets its own NCCL_HOSTID (NCCL then treats them as two hosts and talks over its
# socket transport on loopback), both see the GPU as CUDA_VISIBLE_DEVICES=0, and each XLA client
# takes --gpu-memory-fraction 0.3. What ran (NCCL version and path, the transport each run
# reported) is printed and written to $OUT/dist.json. Sections run against DIST_BUDGET_S (default
# 170 s). Exit status: the number of failed sections.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" = "--build" ]; then
  cd "$HERE/../.."
  dest=${2:-.carry/dist}
  rm -rf "$dest" && mkdir -p "$dest"
  CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$dest/saferlhf" ./cmd/saferlhf
  CGO_ENABLED=1 go test -c -trimpath -ldflags='-s -w' -o "$dest/train_collectives.test" ./train/collectives
  gzip -9 "$dest/saferlhf" "$dest/train_collectives.test"
  cp bench/gpu/dist.sh "$dest/"
  git rev-parse HEAD >"$dest/COMMIT" 2>/dev/null || true
  ls -l "$dest"
  exit 0
fi

A= # the repository's assets: beside .carry/<dir>/, else under the working directory
for r in "$HERE/../.." "$PWD"; do
  [ -f "$r/assets/data/models/stories260K.bin" ] && A=$(cd "$r" && pwd)/assets/data && break
done
[ -n "$A" ] || { echo "dist: assets/data not found (run from the repository root)"; exit 1; }
OUT=${OUT:-/tmp/saferlhf-dist-out}
mkdir -p "$OUT"
T0=$(date +%s)
BUDGET=${DIST_BUDGET_S:-170}
FAILED=()
elapsed() { echo $(($(date +%s) - T0)); }
section() { echo; echo "=== dist: $* [t=$(elapsed)s]"; }

# Binaries: the CLI ($BIN from scale.sh, else ours) and the collectives test binary.
if [ -z "${BIN:-}" ] || [ ! -x "$BIN" ]; then
  BIN=/tmp/saferlhf-dist
  gunzip -c "$HERE/saferlhf.gz" >"$BIN" 2>/dev/null && chmod +x "$BIN" || BIN=
fi
TEST=/tmp/saferlhf-dist-collectives.test
gunzip -c "$HERE/train_collectives.test.gz" >"$TEST" 2>/dev/null && chmod +x "$TEST" || TEST=
if [ "${DIST_CPU_TEST:-}" = 1 ] && [ -z "$BIN" ]; then
  BIN=/tmp/saferlhf-dist-cpu
  (cd "$A/../.." && CGO_ENABLED=0 go build -o "$BIN" ./cmd/saferlhf) || exit 1
fi
[ -n "$BIN" ] || { echo "dist: no CLI (run bench/gpu/dist.sh --build here, or scale.sh --build)"; exit 1; }

BE=xla:cuda COLL=nccl SHARE="--gpu-memory-fraction 0.3" # two ranks' XLA clients share the GPU
if [ "${DIST_CPU_TEST:-}" = 1 ]; then
  BE=go COLL=tcp SHARE= # the pure-Go backend has no GPU pool (and refuses the flag)
else
  PY=python3
  [ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
  if [ -z "${SAFERLHF_PJRT_CUDA:-}" ]; then
    PLUGIN_DIR=$($PY -c 'import jax_plugins.xla_cuda13, os; print(os.path.dirname(jax_plugins.xla_cuda13.__file__))' 2>/dev/null || true)
    [ -n "$PLUGIN_DIR" ] && export SAFERLHF_PJRT_CUDA=$PLUGIN_DIR/xla_cuda_plugin.so
  fi
  SITE=$($PY -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
  CUDA_DIR=/usr/local/cuda
  [ -n "$SITE" ] && [ -d "$SITE/nvidia/cu13" ] && CUDA_DIR=$SITE/nvidia/cu13
  case "${XLA_FLAGS:-}" in *xla_gpu_cuda_data_dir*) ;; *) export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_cuda_data_dir=$CUDA_DIR --xla_gpu_autotune_level=0" ;; esac
  if [ -z "${SAFERLHF_NCCL:-}" ]; then
    for f in "$SITE"/nvidia/nccl/lib/libnccl.so.2 "$SITE"/nvidia/cu13/lib/libnccl.so.2 "$SITE"/nvidia/cu12/lib/libnccl.so.2; do
      [ -f "$f" ] && export SAFERLHF_NCCL=$f && break
    done
  fi
  export SAFERLHF_REQUIRE_GPU=1 GOPJRT_CUDA_CHECKS=0 TF_CPP_MIN_LOG_LEVEL=2
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
fi
echo "dist: CLI $BIN, test binary ${TEST:-none}, backend $BE, collectives $COLL"
echo "dist: SAFERLHF_PJRT_CUDA=${SAFERLHF_PJRT_CUDA:-} SAFERLHF_NCCL=${SAFERLHF_NCCL:-(search)} NCCL_DEBUG=${NCCL_DEBUG:-}"

# run NAME MIN_S MAX_S CMD...: CMD with timeout min(MAX_S, budget left) if MIN_S are left.
run() {
  local name=$1 min=$2 max=$3
  shift 3
  local left=$((BUDGET - $(elapsed)))
  section "$name"
  if [ "$left" -lt "$min" ]; then
    echo "--- $name: SKIPPED ($left s left of ${BUDGET} s, needs $min)"
    SKIPPED+=("$name")
    return 0
  fi
  local lim=$((left < max ? left : max)) t=$(date +%s)
  timeout --kill-after=10 "$lim" bash -c '"$@"' _ "$@" # bash: CMD may be a function of this script
  local rc=$?
  echo "--- $name: exit $rc in $(($(date +%s) - t))s (limit ${lim}s)"
  [ $rc -ne 0 ] && FAILED+=("$name")
  return 0
}
SKIPPED=()

# 1. The Reducer through the real NCCL with one rank on XLA's buffers (and the selection).
if [ -n "$TEST" ] && [ "${DIST_CPU_TEST:-}" != 1 ]; then
  run nccl_reducer_test 20 60 "$TEST" -test.v -test.count=1 -test.run 'TestNCCLReducerGPU|TestSelectHere'
fi

# rm OUTDIR COLLECTIVES [EXTRA...]: 6 steps of a reward model from stories260K (global batch 4
# pairs, f32); its per-pair mean loss makes 2 ranks the trajectory of 1 (TestDataParallelProcesses).
D=/tmp/saferlhf-dist-runs
rm -rf "$D" && mkdir -p "$D"
rm6() {
  local out=$1 coll=$2
  shift 2
  "$BIN" train-rm --model "$A/models/stories260K.bin" --data "$A/helpful/hh-rlhf-helpful-base-test.jsonl.gz" \
    --max-steps 6 --batch-size 4 --max-length 48 --truncate prompt-left --eval-max 8 --eval-every 2 --lr 3e-4 \
    --backend "$BE" --dtype f32 --collectives "$coll" --out "$out" "$@"
}
# ranks2 OUTDIR COLLECTIVES: the same run as two processes with torchrun's variables on one GPU.
ranks2() {
  local out=$1 coll=$2 port=$((29000 + RANDOM % 2000)) pids=() rc=0
  for r in 0 1; do
    env RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      CUDA_VISIBLE_DEVICES=0 NCCL_HOSTID="saferlhf-dist-rank$r" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 \
      bash -o pipefail -c 'rm6 "$@" 2>&1 | sed "s/^/[rank '$r'] /"' _ "$out" "$coll" $SHARE &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
export -f rm6 ranks2
export BIN A BE SHARE

run rm_1rank_none 30 90 rm6 "$D/one" tcp
run rm_1rank_$COLL 30 90 rm6 "$D/one_$COLL" "$COLL"
run rm_2ranks_$COLL 40 120 ranks2 "$D/two_$COLL" "$COLL"
[ "$COLL" = tcp ] || run rm_2ranks_tcp 40 120 ranks2 "$D/two_tcp" tcp # the host path on the GPU, for its time

# Compare the runs' metrics with the one-process run, record what ran.
section "compare"
PYC=python3
[ -x /opt/torch/.venv/bin/python3 ] && PYC=/opt/torch/.venv/bin/python3
$PYC - "$D" "$COLL" "$OUT/dist.json" <<'EOF'
import json, os, sys
d, coll, dst = sys.argv[1], sys.argv[2], sys.argv[3]
def records(run):
    p = os.path.join(d, run, "metrics.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else None
def result(run):
    p = os.path.join(d, run, "result.json")
    return json.load(open(p)) if os.path.exists(p) else {}
base = records("one")
out = {"backend": os.environ.get("BE"), "nccl_lib": os.environ.get("SAFERLHF_NCCL", ""), "runs": {}}
worst_all = 0.0
for run in ["one", "one_" + coll, "two_" + coll] + (["two_tcp"] if coll != "tcp" else []):
    recs, res = records(run), result(run)
    if recs is None and run == "two_tcp":
        continue  # skipped for time
    entry = {"collectives": res.get("collectives", ""), "world_size": res.get("world_size", 1),
             "collective_seconds": res.get("collective_seconds", 0), "final_train_loss": res.get("final_train_loss")}
    if recs is None or base is None:
        entry["error"] = "no metrics.jsonl"
    elif run != "one":
        worst, n, flips = 0.0, 0, 0
        if len(recs) != len(base):
            entry["error"] = "%d records vs %d" % (len(recs), len(base))
        for a, b in zip(base, recs):
            for k, v in a.items():
                w = b.get(k)
                if not isinstance(v, (int, float)) or not isinstance(w, (int, float)) or k == "step":
                    continue
                if k == "accuracy":  # 1[margin > 0]: a margin near 0 may flip with rounding
                    flips += v != w
                    continue
                worst, n = max(worst, abs(v - w) / max(1.0, abs(v))), n + 1
        entry["max_rel_diff_vs_one_process"], entry["values_compared"], entry["accuracy_differences"] = worst, n, flips
        worst_all = max(worst_all, worst)
    out["runs"][run] = entry
    print("dist: %-12s %s" % (run, json.dumps(entry)))
json.dump(out, open(dst, "w"), indent=1)
bad = [r for r, e in out["runs"].items() if "error" in e] or (["diff"] if worst_all > 1e-3 else [])
print("dist: largest relative difference vs one process %.3g (limit 1e-3)%s" % (worst_all, "; FAILED: %s" % bad if bad else ""))
sys.exit(1 if bad else 0)
EOF
[ $? -ne 0 ] && FAILED+=("compare")

if [ ${#FAILED[@]} -eq 0 ]; then
  echo "dist: all sections passed in $(elapsed)s$([ ${#SKIPPED[@]} -gt 0 ] && echo " (skipped: ${SKIPPED[*]})")"
else
  echo "dist: ${#FAILED[@]} section(s) failed: ${FAILED[*]} ($(elapsed)s)"
fi
exit ${#FAILED[@]}
