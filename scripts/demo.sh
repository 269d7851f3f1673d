#!/usr/bin/env bash
# make demo: the whole Safe RLHF pipeline on CPU with the bundled stories260K model and real data.
set -euo pipefail
bin="${1:-bin/saferlhf}"
out="${2:-out/demo}"
mkdir -p "$out"
echo "== verify-reference: kernels against the reference implementation's vectors"
"$bin" verify-reference --golden assets/golden
echo "The SFT -> RM -> CM -> PPO-Lag stages have not landed yet."
