#!/usr/bin/env bash
# Data-parallel checks on one GPU (issue 14): gradient averaging through NCCL on XLA's device
# buffers (--collectives nccl). First NCCL with one rank through the real library (the Go test
# binaries: TestNCCLOneRank of native, the communicator on device buffers; TestNCCLReducerGPU of
# train/collectives, the Reducer on XLA's buffers; a skip counts as a failure). Then, at the same
# time, three short reward-model runs from stories260K on xla:cuda in f32: one process averaging
# nothing, two processes sharing the GPU with --collectives nccl, and two with --collectives nccl
# --zero-stage 1 (ZeRO-1: each rank holds half of the AdamW moments); both 2-rank runs must
# follow the one-process trajectory. Then, if time is left, two ranks through the host
# (--collectives tcp) for the time it takes.
#
#   here:   bash bench/gpu/dist.sh --build [DEST]   cgo CLI + the native and train/collectives test
#                                                  binaries + this script into DEST (default .carry/dist)
#   there:  bash .carry/dist/dist.sh                (device tool, carry [".carry/dist"]); scale.sh
#                                                  runs it as its "dist" section (BIN set there)
#   CPU:    DIST_CPU_TEST=1 bash bench/gpu/dist.sh  the script's own check here: --backend go and
#                                                  --collectives tcp in place of nccl, no test binaries
#
# Two ranks on one GPU: NCCL refuses two ranks of one communicator on the same device of one host,
# so each rank gets its own NCCL_HOSTID (NCCL then treats them as two hosts and talks over its
# socket transport on loopback), both see the GPU as CUDA_VISIBLE_DEVICES=0, and each of the seven
# XLA clients takes --gpu-memory-fraction 0.1. What ran (NCCL version and path, the transport each
# run reported) is printed and written to $OUT/dist.json. Sections run against DIST_BUDGET_S
# (default 170 s). Exit status: the number of failed sections.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" = "--build" ]; then
  cd "$HERE/../.."
  dest=${2:-.carry/dist}
  rm -rf "$dest" && mkdir -p "$dest"
  CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$dest/saferlhf" ./cmd/saferlhf
  CGO_ENABLED=1 go test -c -trimpath -ldflags='-s -w' -o "$dest/train_collectives.test" ./train/collectives
  CGO_ENABLED=1 go test -c -trimpath -ldflags='-s -w' -o "$dest/native.test" ./native
  gzip -9 "$dest/saferlhf" "$dest/train_collectives.test" "$dest/native.test"
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
# Binaries and run directories in a fresh directory (several checks may share a machine's /tmp).
TMPD=$(mktemp -d /tmp/saferlhf-dist.XXXXXX)
trap 'rm -rf "$TMPD"' EXIT
D=$TMPD/runs # the runs' directories, sections.txt (name, exit status, seconds) and what_ran.txt
mkdir -p "$D"
T0=$(date +%s)
BUDGET=${DIST_BUDGET_S:-170}
FAILED=()
elapsed() { echo $(($(date +%s) - T0)); }
section() { echo; echo "=== dist: $* [t=$(elapsed)s]"; }

# Binaries: the CLI ($BIN from scale.sh, else ours) and the collectives test binary.
if [ -z "${BIN:-}" ] || [ ! -x "$BIN" ]; then
  BIN=$TMPD/saferlhf
  gunzip -c "$HERE/saferlhf.gz" >"$BIN" 2>/dev/null && chmod +x "$BIN" || BIN=
fi
TEST=$TMPD/train_collectives.test NTEST=$TMPD/native.test
gunzip -c "$HERE/train_collectives.test.gz" >"$TEST" 2>/dev/null && chmod +x "$TEST" || TEST=
gunzip -c "$HERE/native.test.gz" >"$NTEST" 2>/dev/null && chmod +x "$NTEST" || NTEST=
if [ "${DIST_CPU_TEST:-}" = 1 ] && [ -z "$BIN" ]; then
  BIN=$TMPD/saferlhf-cpu
  (cd "$A/../.." && CGO_ENABLED=0 go build -o "$BIN" ./cmd/saferlhf) || exit 1
fi
[ -n "$BIN" ] || { echo "dist: no CLI (run bench/gpu/dist.sh --build here, or scale.sh --build)"; exit 1; }

BE=xla:cuda COLL=nccl SHARE="--gpu-memory-fraction 0.1" # seven XLA clients share the GPU
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
  if [ -z "${SAFERLHF_NVRTC:-}" ]; then # the kernels/cuda and native tests compile CUDA with NVRTC (as check.sh)
    NVRTC=$(ls "$SITE"/nvidia/cu13/lib/libnvrtc.so.13* "$SITE"/nvidia/cuda_nvrtc/lib/libnvrtc.so.1[23]* /usr/local/cuda/lib64/libnvrtc.so.1[23]* 2>/dev/null | grep -v builtins | head -1)
    [ -n "$NVRTC" ] && export SAFERLHF_NVRTC=$NVRTC
  fi
  export SAFERLHF_REQUIRE_GPU=1 GOPJRT_CUDA_CHECKS=0 TF_CPP_MIN_LOG_LEVEL=2
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
fi
echo "dist: CLI $BIN, test binaries ${NTEST:-none} ${TEST:-none}, backend $BE, collectives $COLL"
echo "dist: SAFERLHF_PJRT_CUDA=${SAFERLHF_PJRT_CUDA:-} SAFERLHF_NCCL=${SAFERLHF_NCCL:-(search)} NCCL_DEBUG=${NCCL_DEBUG:-}"

# run NAME MIN_S MAX_S CMD...: CMD with timeout min(MAX_S, budget left) if MIN_S are left.
run() {
  local name=$1 min=$2 max=$3
  shift 3
  local left=$((BUDGET - $(elapsed)))
  section "$name"
  if [ "$left" -lt "$min" ]; then
    echo "--- $name: SKIPPED ($left s left of ${BUDGET} s, needs $min)"
    echo "$name skipped 0" >>"$D/sections.txt"
    SKIPPED+=("$name")
    return 0
  fi
  local lim=$((left < max ? left : max)) t=$(date +%s)
  timeout --kill-after=10 "$lim" bash -c '"$@"' _ "$@" # bash: CMD may be a function of this script
  local rc=$?
  echo "--- $name: exit $rc in $(($(date +%s) - t))s (limit ${lim}s)"
  echo "$name $rc $(($(date +%s) - t))" >>"$D/sections.txt"
  [ $rc -ne 0 ] && FAILED+=("$name")
  return 0
}
SKIPPED=()

# gotest BINARY PATTERN: the named tests, verbose; a skip or no test run counts as a failure.
gotest() {
  local log rc
  log=$(mktemp)
  "$1" -test.v -test.count=1 -test.run "$2" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  grep -hE "NCCL [0-9]+ from|reducer: " "$log" | sed 's/^ *//' >>"$D/what_ran.txt"
  if [ "$rc" = 0 ] && { grep -q -- '--- SKIP' "$log" || ! grep -q -- '--- PASS' "$log"; }; then
    echo "gotest: $2 skipped or did not run: the evidence is missing"
    rc=1
  fi
  rm -f "$log"
  return $rc
}
export -f gotest
export D

# 1. NCCL through the real library with one rank: the communicator on device buffers, then the
# Reducer on XLA's buffers.
if [ "${DIST_CPU_TEST:-}" = 1 ]; then # no GPU: the binaries must hold the tests by these names
  for bt in "$NTEST:TestNCCLOneRank" "$TEST:TestNCCLReducerGPU"; do
    b=${bt%:*} tn=${bt##*:}
    [ -z "$b" ] && continue
    "$b" -test.list "^$tn\$" | grep -qx "$tn" && echo "dist: $tn is in $b" || { echo "dist: $tn missing from $b"; FAILED+=("list_$tn"); }
  done
else
  [ -n "$NTEST" ] && run nccl_native_test 10 40 gotest "$NTEST" '^TestNCCLOneRank$'
  [ -n "$TEST" ] && run nccl_reducer_test 20 60 gotest "$TEST" '^TestNCCLReducerGPU$'
fi

# rm OUTDIR COLLECTIVES [EXTRA...]: 6 steps of a reward model from stories260K (global batch 4
# pairs, f32); its per-pair mean loss makes 2 ranks the trajectory of 1 (TestDataParallelProcesses).
rm6() {
  local out=$1 coll=$2
  shift 2
  "$BIN" train-rm --model "$A/models/stories260K.bin" --data "$A/helpful/hh-rlhf-helpful-base-test.jsonl.gz" \
    --max-steps 6 --batch-size 4 --max-length 48 --truncate prompt-left --eval-max 8 --eval-every 2 --lr 3e-4 \
    --backend "$BE" --dtype f32 --collectives "$coll" --out "$out" "$@"
}
# ranks2 LABEL OUTDIR COLLECTIVES PORT [EXTRA...]: the same run as two processes with torchrun's
# variables on one GPU, each line of output prefixed with the label and rank.
ranks2() {
  local label=$1 out=$2 coll=$3 port=$4 pids=() rc=0
  shift 4
  for r in 0 1; do
    env RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      CUDA_VISIBLE_DEVICES=0 NCCL_HOSTID="saferlhf-$label-rank$r" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 \
      bash -o pipefail -c 'rm6 "$@" 2>&1 | sed "s/^/['"$label"' rank '$r'] /"' _ "$out" "$coll" $SHARE "$@" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
# bench2 PORT: a PPO-Lag bench step (stories260K, LoRA r=16, f32) as two ranks with --zero-stage 1:
# per-rank and aggregate tokens/s and the time in collectives (bench's data-parallel report).
bench2() {
  local port=$1 pids=() rc=0
  for r in 0 1; do
    env RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      CUDA_VISIBLE_DEVICES=0 NCCL_HOSTID="saferlhf-bench-rank$r" NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 \
      bash -o pipefail -c '"$BIN" bench --preset stories260K --backend "$BE" --dtype f32 --collectives "$COLL" --zero-stage 1 \
        --lora-rank 16 --batch 8 --prompt-len 16 --gen-len 32 --steps 2 $SHARE \
        --json "$D/bench2_r'$r'.json" 2>&1 | sed "s/^/[bench rank '$r'] /"' &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
# together: the one-process run, the two 2-rank runs on NCCL (plain and ZeRO-1) and the 2-rank
# PPO-Lag bench at once (seven processes on the GPU, each XLA client taking 10% of its memory).
together() {
  local port=$((29000 + RANDOM % 2000)) pids=() names=(one "two_$COLL" "two_${COLL}_zero1" bench2) rc=0 i
  bash -o pipefail -c 'rm6 "$@" 2>&1 | sed "s/^/[one] /"' _ "$D/one" tcp $SHARE &
  pids+=($!)
  ranks2 "$COLL" "$D/two_$COLL" "$COLL" "$port" &
  pids+=($!)
  ranks2 "${COLL}_zero1" "$D/two_${COLL}_zero1" "$COLL" $((port + 7)) --zero-stage 1 &
  pids+=($!)
  bench2 $((port + 14)) &
  pids+=($!)
  for i in 0 1 2 3; do
    wait "${pids[$i]}" || { echo "dist: ${names[$i]} failed"; rc=1; }
  done
  return $rc
}
export -f rm6 ranks2 bench2 together
export BIN A BE COLL D SHARE

run rm_together 40 110 together
[ "$COLL" = tcp ] || run rm_2ranks_tcp 40 90 ranks2 tcp "$D/two_tcp" tcp $((31100 + RANDOM % 500)) # the host path on the GPU, for its time

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
for run in ["one", "two_" + coll, "two_%s_zero1" % coll] + (["two_tcp"] if coll != "tcp" else []):
    recs, res = records(run), result(run)
    if recs is None and run == "two_tcp":
        continue  # skipped for time
    entry = {"collectives": res.get("collectives", ""), "world_size": res.get("world_size", 1),
             "collective_seconds": res.get("collective_seconds", 0), "final_train_loss": res.get("final_train_loss"),
             "optimizer_state_bytes_rank0": res.get("optimizer_state_bytes"), "seconds": res.get("seconds")}
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
        full, held = result("one").get("optimizer_state_bytes"), res.get("optimizer_state_bytes")
        if run.endswith("_zero1") and not (full and held and held < 0.75 * full):
            entry["error"] = "ZeRO-1 rank 0 holds %s bytes of AdamW moments, one process %s" % (held, full)
        worst_all = max(worst_all, worst)
    out["runs"][run] = entry
    print("dist: %-12s %s" % (run, json.dumps(entry)))
def lines(name):
    p = os.path.join(d, name)
    return [l.split() if name == "sections.txt" else l.strip() for l in open(p)] if os.path.exists(p) else []
out["sections"] = {x[0]: {"exit": x[1], "seconds": int(x[2])} for x in lines("sections.txt") if len(x) == 3}
out["what_ran"] = lines("what_ran.txt")
print("dist: what ran: %s" % out["what_ran"])
b2 = os.path.join(d, "bench2_r0.json")
if os.path.exists(b2):
    b = json.load(open(b2))
    out["ppo_bench_2ranks_zero1"] = {k: b.get(k) for k in ("backend", "collectives", "world_size", "step_s", "gen_tokens_per_s",
                                                           "train_tokens_per_s", "collective_s_per_step", "optimizer_state_bytes", "ranks")}
else:
    out["ppo_bench_2ranks_zero1"] = {"error": "no bench2_r0.json"}
print("dist: ppo_bench_2ranks_zero1 %s" % json.dumps(out["ppo_bench_2ranks_zero1"]))
json.dump(out, open(dst, "w"), indent=1)
bad = [r for r, e in out["runs"].items() if "error" in e] + (["ppo_bench"] if "error" in out["ppo_bench_2ranks_zero1"] else [])
bad = bad or (["diff"] if worst_all > 1e-3 else [])
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
