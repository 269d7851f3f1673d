#!/usr/bin/env bash
# The one GPU check of saferlhf, run on the GPU machine from the repository root:
#
#   here:   bash bench/gpu/build.sh            (cgo builds into .carry/gpu)
#   there:  bash bench/gpu/check.sh            (device tool: carry [".carry"])
#
# The GPU machine has no Go toolchain and no network (if `go` is there, the
# binaries are built from source instead). Sections: machine, CUDA driver and
# NVRTC (native tests), kernel parity and PJRT interop (kernels/cuda tests),
# kernel benchmarks, PyTorch baselines and the comparison table, then the
# lead's sections (HOOK below). Everything goes to stdout and $OUT/gpu.log;
# the benchmark outputs also to $OUT/go_bench.txt and $OUT/torch_bench.txt.
# Budget: about 6 minutes; every section has its own timeout. Exit status:
# the number of failed sections (0 = all passed).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/saferlhf-gpu-out}
mkdir -p "$OUT"
LOG=$OUT/gpu.log
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
FAILED=()

section() { echo; echo "=== $* [t=$(($(date +%s) - T0))s]"; }
# step NAME TIMEOUT_S CMD...: runs CMD with a timeout, records a failure.
step() {
  local name=$1 limit=$2
  shift 2
  section "$name"
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "!!! $name: FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    FAILED+=("$name")
  fi
  return $rc
}

section "machine"
nvidia-smi || echo "nvidia-smi failed"
uname -a
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
echo "python: $PY ($($PY --version 2>&1))"
echo "commit of the carried binaries: $(cat .carry/gpu/COMMIT 2>/dev/null || echo unknown)"

section "environment: PJRT CUDA plugin, CUDA data dir, NVRTC"
PLUGIN_DIR=$($PY -c 'import jax_plugins.xla_cuda13, os; print(os.path.dirname(jax_plugins.xla_cuda13.__file__))' 2>/dev/null || true)
if [ -n "$PLUGIN_DIR" ] && [ -f "$PLUGIN_DIR/xla_cuda_plugin.so" ]; then
  export SAFERLHF_PJRT_CUDA=$PLUGIN_DIR/xla_cuda_plugin.so
else
  echo "no jax_plugins.xla_cuda13 found: XLA sections will fail"
fi
SITE=$($PY -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
CUDA_DIR=/usr/local/cuda
[ -n "$SITE" ] && [ -d "$SITE/nvidia/cu13" ] && CUDA_DIR=$SITE/nvidia/cu13
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_cuda_data_dir=$CUDA_DIR"
if [ -z "${SAFERLHF_NVRTC:-}" ]; then
  NVRTC=$(ls "$SITE"/nvidia/cu13/lib/libnvrtc.so.13* "$SITE"/nvidia/cuda_nvrtc/lib/libnvrtc.so.1[23]* /usr/local/cuda/lib64/libnvrtc.so.1[23]* 2>/dev/null | grep -v builtins | head -1)
  [ -n "$NVRTC" ] && export SAFERLHF_NVRTC=$NVRTC
fi
export SAFERLHF_REQUIRE_GPU=1 # GPU tests fail instead of skipping
echo "SAFERLHF_PJRT_CUDA=${SAFERLHF_PJRT_CUDA:-}"
echo "XLA_FLAGS=$XLA_FLAGS"
echo "SAFERLHF_NVRTC=${SAFERLHF_NVRTC:-}"
[ -n "${SAFERLHF_NVRTC:-}" ] && ls "$(dirname "$SAFERLHF_NVRTC")" | head -20

section "binaries"
BIN=/tmp/saferlhf-bin
rm -rf "$BIN"
mkdir -p "$BIN"
if command -v go >/dev/null; then
  echo "go found ($(go version)): building from source"
  for pkg in ./native ./kernels/cuda ${EXTRA_TEST_PKGS:-}; do
    CGO_ENABLED=1 go test -c -o "$BIN/$(echo "${pkg#./}" | tr / _).test" "$pkg" || FAILED+=("build $pkg")
  done
  CGO_ENABLED=1 go build -o "$BIN/saferlhf" ./cmd/saferlhf || FAILED+=("build cmd/saferlhf")
else
  for f in .carry/gpu/*.gz; do
    [ -e "$f" ] || { echo "no .carry/gpu/*.gz: run bench/gpu/build.sh here and carry .carry"; break; }
    gunzip -c "$f" >"$BIN/$(basename "${f%.gz}")" && chmod +x "$BIN/$(basename "${f%.gz}")"
  done
fi
ls -l "$BIN"

# gotest PKGDIR ARGS...: runs PKGDIR's test binary from PKGDIR, as `go test` does (testdata paths).
gotest() {
  local dir=$1
  shift
  (cd "$ROOT/$dir" && "$BIN/$(echo "$dir" | tr / _).test" "$@")
}
export -f gotest
export BIN ROOT

step "native: CUDA driver, NVRTC, launch, copies, events" 60 gotest native -test.v -test.count=1
step "kernels/cuda: parity vs package kernels, PJRT interop" 180 gotest kernels/cuda -test.v -test.count=1 -test.run .
section "kernels/cuda: benchmarks"
timeout 120 bash -c "cd '$ROOT/kernels/cuda' && '$BIN/kernels_cuda.test' -test.run '^\$' -test.bench . -test.benchtime 20x -test.benchmem=false" | tee "$OUT/go_bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED+=("kernels/cuda benchmarks")
section "PyTorch baselines (same shapes)"
PYTHONUNBUFFERED=1 timeout 150 "$PY" bench/gpu/torch_bench.py 10 | tee "$OUT/torch_bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || FAILED+=("torch baselines")
section "comparison: ours vs PyTorch"
"$PY" bench/gpu/compare.py "$OUT/go_bench.txt" "$OUT/torch_bench.txt" | tee "$OUT/compare.txt"

# ---------------------------------------------------------------------------
# HOOK: the lead's sections go here (model forward / generation / PPO step on
# xla:cuda). The environment above (SAFERLHF_PJRT_CUDA, XLA_FLAGS,
# SAFERLHF_NVRTC) is set; the CLI is $BIN/saferlhf; test binaries built with
# EXTRA_TEST_PKGS are run with `gotest <pkgdir> -test.run ...`. Use `step NAME
# TIMEOUT_S CMD...` so failures are counted. Examples:
#   step "model forward on xla:cuda" 120 "$BIN/saferlhf" bench --backend xla:cuda ...
#   step "PPO-Lag step on xla:cuda" 120 gotest train/ppo -test.run 'GPU' -test.v
# A file bench/gpu/extra.sh, if present, is sourced here too (same helpers).
[ -f bench/gpu/extra.sh ] && source bench/gpu/extra.sh
# END HOOK
# ---------------------------------------------------------------------------

section "summary"
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "gpu check: all sections passed in $(($(date +%s) - T0))s"
else
  echo "gpu check: ${#FAILED[@]} section(s) failed: ${FAILED[*]} ($(($(date +%s) - T0))s)"
fi
exit ${#FAILED[@]}
