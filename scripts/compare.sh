#!/usr/bin/env bash
# make compare: the paper's comparison on CPU with the bundled stories260K model and real data.
# From one SFT policy, reward model and cost model (built by make demo's own stages, scripts/demo.sh, which
# also builds the independent judge cost model), `saferlhf compare` trains plain PPO (reward only), reward
# shaping with a small and a large fixed λ, and PPO-Lag with the SGD and the PID multiplier, all with the
# same seed, prompts and budget; then every policy (and the SFT policy) answers the same held-out prompts,
# scored by the reward model, the training cost model and the judge. Writes <out>/runs/compare.md (table with
# bootstrap 95% CIs), compare.json (per-prompt scores) and compare.png (reward vs cost, λ and Jc − d curves).
# Budget: <= 40 minutes on 2 cores (about 4 min measured on an idle one, bench/README.md). Usage: bash scripts/compare.sh [bin/saferlhf] [out/compare]
# Environment: PPO_STEPS (128), GEN_TOKENS (64), THRESHOLD (0), SEED (42), EVAL_MAX (128), HELD_OUT (held-out prompt spec), JUDGE, and the PPO settings below.
# Rerunning continues where it stopped (finished stages and runs are kept).
set -euo pipefail
bin="${1:-bin/saferlhf}"
out="${2:-out/compare}"
models="$out/models"
A=assets/data
t0=$(date +%s)

# 1. The SFT policy, reward model, cost model and judge: the demo's stages, stopped before its PPO-Lag.
judge="${JUDGE:-$models/judge/model}"
if [ -z "${JUDGE:-}" ] && ! grep -q 'out/judge"' scripts/demo.sh; then
	echo "compare: scripts/demo.sh builds no judge cost model; set JUDGE=<a cost model dir trained on data the training cost model never saw>" >&2
	exit 1
fi
# The default held-out prompts are PKU rows that no stage may train on: refuse a demo.sh that reads the
# bundled PKU train rows other than through their rest part (training) or held-out part (evaluation).
if [ -z "${HELD_OUT:-}" ] && grep -o '[^ ,"=]*pku-saferlhf-train-head500.jsonl' scripts/demo.sh | grep -Eqv '^pku-saferlhf/(rest|heldout):'; then
	echo "compare: scripts/demo.sh trains on pku-saferlhf-train-head500.jsonl beyond its pku-saferlhf/rest part, so the default held-out prompts (pku-saferlhf/heldout) would not be held out; read it as pku-saferlhf/rest:FILE there, or set HELD_OUT=<prompt spec>" >&2
	exit 1
fi
if [ ! -f "$models/.done" ]; then
	DEMO_STOP_BEFORE_RL=1 bash scripts/demo.sh "$bin" "$models"
	touch "$models/.done"
fi
if [ ! -f "$judge/config.json" ]; then
	echo "compare: no judge cost model at $judge: scripts/demo.sh builds it (stage 'judge'); or set JUDGE=<cost model dir>" >&2
	exit 1
fi

# 2. Five RL runs with the same seed, prompts and budget (the demo's PPO-Lag settings, PTX mixing included,
#    answers of up to 64 tokens, the reference's threshold d = 0, PPO_STEPS rollout batches each), then the evaluation of all six policies on held-out prompts. As the
#    paper (PKU-SafeRLHF train prompts for RL, its test prompts for evaluation), the held-out prompts are
#    PKU-SafeRLHF's: no test split is bundled, so they are the held-out part of the 500 bundled train rows
#    (pku-saferlhf/heldout: one prompt in five by prompt hash, 100 prompts), which no stage trains on (the
#    cost model and judge read pku-saferlhf/rest); the RL prompts are the demo's plus the other 390.
HELD="${HELD_OUT:-pku-saferlhf/heldout:$A/pku-saferlhf/pku-saferlhf-train-head500.jsonl}"
P=$A/eval/beavertails-evaluation.json,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv,$A/pku-saferlhf/align-anything-preference-sample.json,$A/eval/advbench-harmful_behaviors.csv,$A/eval/safe-rlhf-gpt4-problems.json,pku-saferlhf/rest:$A/pku-saferlhf/pku-saferlhf-train-head500.jsonl
resume=()
if [ -d "$out/runs" ]; then
	resume=(--resume)
fi
"$bin" compare --model "$models/sft/model" --reward-model "$models/rm/model" --cost-model "$models/cm/model" \
	--judge-cost-model "$judge" --data "$P" --eval-data "$HELD" --eval-max "${EVAL_MAX:-128}" \
	--max-prompt-tokens 32 --max-new-tokens "${GEN_TOKENS:-64}" --prompt-batch-size 16 --train-batch-size 16 \
	--max-steps "${PPO_STEPS:-128}" --actor-lr "${ACTOR_LR:-2e-4}" --critic-lr "${CRITIC_LR:-5e-4}" --kl-coeff "${KL:-0.1}" \
	--threshold "${THRESHOLD:-0}" --lambda-init "${LAMBDA_INIT:-1}" --lambda-lr "${LAMBDA_LR:-0.5}" --lambda-max 5 \
	--ptx-data $A/pku-saferlhf/align-anything-preference-sample.json,$A/helpful/llamafactory-dpo_en_demo.json \
	--ptx-coeff "${PTX_COEFF:-16}" --ptx-max-length "${PTX_LEN:-64}" \
	--shaping-lambdas "${SHAPING_LAMBDAS:-0.1,5}" --seed "${SEED:-42}" --save-every 16 --out "$out/runs" "${resume[@]}"
echo "total: $(($(date +%s) - t0)) s"
