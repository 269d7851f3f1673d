#!/usr/bin/env bash
# Scale benchmark of saferlhf on one GPU: PPO-Lag steps with LoRA in bf16 at the 7B / 1B / 3B shapes
# (random weights), each followed by its PyTorch twin (bench/torch_scale.py) on the same card, so
# every ratio comes from one run; the 7B run also checkpoints and resumes through the trainer (bench
# --out: checkpoint size, write time, host peak RSS, restore time); every Go run's JSON lists its
# scoring programs with node counts and compile seconds. Then, if time is left, numerics (bf16 vs
# f32 logits of a random 1B-shape model, TF32's effect, the pure-Go backend's f32 as reference).
#
#   here:   bash bench/gpu/scale.sh --build [DEST]   cgo build of the CLI + copies of the scripts
#                                                   into DEST (default .carry/scale); no GPU needed
#   there:  bash .carry/scale/scale.sh                (device tool, carry [".carry/scale"])
#
# The GPU machine has no Go toolchain: nothing is built there. Everything goes to stdout and $OUT
# (scale.log, one JSON per run, the peak device memory of each run from nvidia-smi). Sections run
# in order of priority against a global budget (SCALE_BUDGET_S, default 460 s: the device gives 10
# minutes a command, and loading the binary and the card's start come on top) and are skipped when
# too little time is left, or when named in SCALE_SKIP (e.g. SCALE_SKIP="go_3b torch_3b numerics_1b dist").
# Exit status: the number of failed sections.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" = "--build" ]; then
  cd "$HERE/../.."
  dest=${2:-.carry/scale}
  rm -rf "$dest" && mkdir -p "$dest"
  CGO_ENABLED=1 go build -trimpath -ldflags='-s -w' -o "$dest/saferlhf" ./cmd/saferlhf
  CGO_ENABLED=1 go test -c -trimpath -ldflags='-s -w' -o "$dest/train_collectives.test" ./train/collectives
  gzip -9 "$dest/saferlhf" "$dest/train_collectives.test"
  cp bench/gpu/scale.sh bench/gpu/dist.sh bench/torch_scale.py "$dest/"
  git rev-parse HEAD >"$dest/COMMIT" 2>/dev/null || true
  git status --porcelain | grep -q . && echo "+ uncommitted changes" >>"$dest/COMMIT"
  ls -l "$dest"
  exit 0
fi

OUT=${OUT:-/tmp/saferlhf-scale-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/scale.log") 2>&1
T0=$(date +%s)
BUDGET=${SCALE_BUDGET_S:-460}
FAILED=()
elapsed() { echo $(($(date +%s) - T0)); }
section() { echo; echo "=== $* [t=$(elapsed)s]"; }

# run NAME MIN_S MAX_S CMD...: runs CMD with timeout min(MAX_S, budget left) if at least MIN_S are
# left, polling nvidia-smi for the run's peak device memory.
run() {
  local name=$1 min=$2 max=$3
  shift 3
  local left=$((BUDGET - $(elapsed)))
  section "$name"
  if [[ " ${SCALE_SKIP:-} " == *" $name "* ]]; then
    echo "--- $name: SKIPPED (SCALE_SKIP)"
    return 0
  fi
  if [ "$left" -lt "$min" ]; then
    echo "--- $name: SKIPPED ($left s left of the ${BUDGET} s budget, needs $min)"
    return 0
  fi
  local lim=$((left < max ? left : max))
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$OUT/mem_$name.csv" 2>/dev/null &
  local poll=$!
  local t=$(date +%s)
  timeout --kill-after=10 "$lim" "$@"
  local rc=$?
  kill "$poll" 2>/dev/null
  wait "$poll" 2>/dev/null
  local peak
  peak=$(sort -n "$OUT/mem_$name.csv" 2>/dev/null | tail -1)
  rm -f "$OUT/mem_$name.csv"
  echo "--- $name: exit $rc in $(($(date +%s) - t))s (limit ${lim}s), peak device memory ${peak:-?} MiB (nvidia-smi)"
  echo "{\"run\": \"$name\", \"exit\": $rc, \"seconds\": $(($(date +%s) - t)), \"peak_device_mib\": ${peak:-null}}" >>"$OUT/runs.jsonl"
  [ $rc -ne 0 ] && FAILED+=("$name")
  return 0
}

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi failed"
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
[ "${SCALE_CPU_TEST:-}" = 1 ] && [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1
echo "commit of the carried binary: $(cat "$HERE/COMMIT" 2>/dev/null || echo unknown)"
nproc; free -g | head -2

# Environment: the JAX CUDA 13 PJRT plugin and its CUDA data dir (as bench/gpu/check.sh).
PLUGIN_DIR=$($PY -c 'import jax_plugins.xla_cuda13, os; print(os.path.dirname(jax_plugins.xla_cuda13.__file__))' 2>/dev/null || true)
[ -n "$PLUGIN_DIR" ] && export SAFERLHF_PJRT_CUDA=$PLUGIN_DIR/xla_cuda_plugin.so
SITE=$($PY -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
CUDA_DIR=/usr/local/cuda
[ -n "$SITE" ] && [ -d "$SITE/nvidia/cu13" ] && CUDA_DIR=$SITE/nvidia/cu13
# Autotuning off by default: on the first H200 run (2026-11-29) compiling the 1B step's graphs took
# over 140 s with XLA's default autotuning (SCALE_XLA_FLAGS= to restore it).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_cuda_data_dir=$CUDA_DIR ${SCALE_XLA_FLAGS---xla_gpu_autotune_level=0}"
export GOPJRT_CUDA_CHECKS=0 TF_CPP_MIN_LOG_LEVEL=2
echo "SAFERLHF_PJRT_CUDA=${SAFERLHF_PJRT_CUDA:-none} XLA_FLAGS=$XLA_FLAGS"

BIN=/tmp/saferlhf-scale
gunzip -c "$HERE/saferlhf.gz" >"$BIN" && chmod +x "$BIN" || { echo "no $HERE/saferlhf.gz: run bench/gpu/scale.sh --build here"; exit 1; }
TWIN=$HERE/torch_scale.py
[ -f "$TWIN" ] || TWIN=$HERE/../torch_scale.py

COMMON=(--backend xla:cuda --dtype bf16 --gpu-memory-fraction 0.92 --peak-tflops "${PEAK_TFLOPS:-989}" --steps 1 --top-k 50)
SHAPE=(--batch 16 --prompt-len 128 --gen-len 384)
TSHAPE=(--batch 16 --prompt-len 128 --gen-len 384 --steps 1 --top-k 50 --dtype bf16)
P1B=llama-1b P3B=llama-3b P7B=llama2-7b NUMBE=xla:cuda
if [ "${SCALE_CPU_TEST:-}" = 1 ]; then
  # The script's own check on a machine without a GPU: stories260K on the pure-Go backend.
  COMMON=(--backend go --dtype f32 --steps 1 --top-k 50 --updates layerwise) # the GPU path's programs
  SHAPE=(--batch 4 --prompt-len 16 --gen-len 16)
  TSHAPE=(--batch 4 --prompt-len 16 --gen-len 16 --steps 1 --top-k 50 --dtype f32 --device cpu)
  P1B=stories260K P3B=stories260K P7B=stories260K NUMBE=go
fi

CKDIR=/tmp/saferlhf-scale-ckpt # not under $OUT: a 7B checkpoint is ~13 GB (the merged bf16 actor)
rm -rf "$CKDIR"
# 1. 7B (LLaMA-2 shape), the issue's target: B=16, 128 + 384 tokens; warm-up step (compiles), one
# timed step, the trainer's checkpoint into $CKDIR, and one resumed step from it. Then the twin.
run go_7b 120 330 "$BIN" bench --preset $P7B --lora-rank 16 --micro-batch-size 4 "${COMMON[@]}" "${SHAPE[@]}" \
  --out "$CKDIR/7b" --json "$OUT/go_7b.json"
du -sh "$CKDIR"/7b/checkpoints/* 2>/dev/null; rm -rf "$CKDIR"
run torch_7b 40 120 env PYTHONUNBUFFERED=1 $PY "$TWIN" --preset $P7B --lora-rank 16 --micro-batch-size 4 "${TSHAPE[@]}" --json "$OUT/torch_7b.json"
# 2. 1B: Go, then the twin.
run go_1b 60 120 "$BIN" bench --preset $P1B --lora-rank 16 --micro-batch-size 8 "${COMMON[@]}" "${SHAPE[@]}" --json "$OUT/go_1b.json"
run torch_1b 30 90 env PYTHONUNBUFFERED=1 $PY "$TWIN" --preset $P1B --lora-rank 16 --micro-batch-size 8 "${TSHAPE[@]}" --json "$OUT/torch_1b.json"
# 2b. Data parallelism on the one GPU (bench/gpu/dist.sh, issue 14): NCCL through the real library
# with one rank, then two processes sharing the GPU, each a short train-rm compared with one process.
# Alone: bash .carry/scale/dist.sh (the same carry).
run dist 90 200 env BIN="$BIN" DIST_BUDGET_S=190 OUT="$OUT" DIST_CPU_TEST="${SCALE_CPU_TEST:-}" bash "$HERE/dist.sh"
# 3. 3B if time is left.
run go_3b 90 150 "$BIN" bench --preset $P3B --lora-rank 16 --micro-batch-size 8 "${COMMON[@]}" "${SHAPE[@]}" --json "$OUT/go_3b.json"
run torch_3b 40 90 env PYTHONUNBUFFERED=1 $PY "$TWIN" --preset $P3B --lora-rank 16 --micro-batch-size 8 "${TSHAPE[@]}" --json "$OUT/torch_3b.json"
# 4. RL math (KL shaping, GAE of both streams, logged means) at the 7B run's B=16 and 128 + 384
# tokens, on the host (float64 kernels) and as a graph on the device (--rl-math): its cost depends
# only on B and T, so the tiny model keeps these runs to seconds; JSON rl_math_s and rl_math_*_bytes,
# and host_device_bytes_per_step (graph: the rollout's per-token tensors stay on the device).
for m in host graph; do
  run rlmath_$m 20 60 "$BIN" bench --preset stories260K --rl-math $m "${COMMON[@]}" "${SHAPE[@]}" \
    --json "$OUT/go_rlmath_$m.json"
done
# 5. Numerics at the 1B shape (measured on 2026-11-29; rerun when time is left): f32 on the pure-Go
# backend (exact reference), f32, bf16 and forced TF32 on XLA; 1 row of 16 tokens.
run numerics_1b 40 75 "$BIN" bench --numerics --numerics-cpu --preset $P1B --batch 1 --prompt-len 16 \
  --backend $NUMBE --json "$OUT/numerics_1b.json"
# PyTorch's TF32 switch on the same kind of check, for the record (f32 vs f32+TF32 matmul).
[ "${SCALE_CPU_TEST:-}" = 1 ] || run torch_tf32 10 30 env PYTHONUNBUFFERED=1 $PY -c '
import torch
torch.manual_seed(0)
a = torch.randn(2048, 8192, device="cuda") * 0.02; b = torch.randn(8192, 2048, device="cuda")
ref = (a.double() @ b.double())
for tf in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf
    e = ((a @ b).double() - ref).norm() / ref.norm()
    print(f"torch f32 matmul 2048x8192x2048 allow_tf32={tf}: rel. L2 error vs f64 {e:.3g}")
bf = (a.bfloat16() @ b.bfloat16()).double()
print(f"torch bf16 matmul: rel. L2 error vs f64 {((bf-ref).norm()/ref.norm()):.3g}")'

section "summary"
# One results file (the device tool returns at most 8 files): {"name": ..., "result": ...} per line.
for f in "$OUT"/numerics_*.json "$OUT"/go_*.json "$OUT"/torch_*.json "$OUT"/dist.json; do
  [ -f "$f" ] || continue
  echo "{\"name\": \"$(basename "$f" .json)\", \"result\": $(tr -d '\n' <"$f")}" >>"$OUT/results.jsonl"
  echo "$(basename "$f"): $(tr -d '\n ' <"$f" | head -c 1500)"
  rm -f "$f"
done
[ -f "$OUT/runs.jsonl" ] && cat "$OUT/runs.jsonl" >>"$OUT/results.jsonl" && rm -f "$OUT/runs.jsonl"
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "scale: all sections passed or were skipped in $(elapsed)s"
else
  echo "scale: ${#FAILED[@]} section(s) failed: ${FAILED[*]} ($(elapsed)s)"
fi
exit ${#FAILED[@]}
