#!/usr/bin/env bash
# make demo: the whole Safe RLHF pipeline on CPU with the bundled stories260K model and real data:
# SFT -> reward model -> cost model -> PPO-Lagrangian, then a before/after table on held-out prompts
# (mean reward, mean cost, harmful rate = cost > 0 under the cost model) in <out>/summary.json.
# Budget: <= 15 minutes on 2 cores. Usage: bash scripts/demo.sh [bin/saferlhf] [out/demo]
set -euo pipefail
bin="${1:-bin/saferlhf}"
out="${2:-out/demo}"
A=assets/data
mkdir -p "$out"
timings="$out/timings.tsv"
: > "$timings"
t_all=$(date +%s)

stage() { # stage NAME CMD...: run a stage, record its wall time
	local name=$1
	shift
	echo
	echo "== $name"
	local t0
	t0=$(date +%s)
	"$@"
	printf '%s\t%d\n' "$name" $(($(date +%s) - t0)) >> "$timings"
}

# Data: pack the demo datasets into zstd token shards and verify them (data/shards); the stages below
# read the same bundled files directly.
if "$bin" data demo -h > /dev/null 2>&1; then
	stage "data pack" bash -c "\"$bin\" data demo --out \"$out/data\" --max-length 128 --force --quiet > \"$out/data-pack.log\" && tail -1 \"$out/data-pack.log\" && \"$bin\" data verify \"$out/data/prompts\" || echo \"(data pack failed: the stages read the raw files anyway)\""
else
	echo "== data pack: 'saferlhf data demo' has not landed; the stages read the raw files directly"
fi

# 1. SFT of stories260K on prompt/answer pairs (PKU-SafeRLHF answers, BeaverTails QA, LLaMA-Factory demo).
stage "sft" "$bin" sft --model $A/models/stories260K.bin --tokenizer $A/models/tok512.bin \
	--data $A/pku-saferlhf/align-anything-preference-sample.json,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv,$A/helpful/llamafactory-dpo_en_demo.json \
	--max-length 128 --batch-size 16 --grad-accum 1 --steps "${SFT_STEPS:-40}" --lr 2e-3 --out "$out/sft"

# 2. Reward model (helpfulness) on hh-rlhf helpful pairs, from the SFT model.
stage "reward model" "$bin" train-rm --model "$out/sft/model" --data $A/helpful/hh-rlhf-helpful-base-test.jsonl.gz \
	--truncate prompt-left --max-length 96 --batch-size 8 --steps "${RM_STEPS:-40}" --lr 1e-3 --eval-max 64 --out "$out/rm"

# 3. Cost model (harmlessness, with safety signs) on PKU-SafeRLHF and hh-rlhf harmless pairs.
#    The PKU-SafeRLHF pairs carry the safety labels that place cost 0 between safe and unsafe answers:
#    they are up-sampled 8x against a 15% sample of the (unlabelled) hh-rlhf harmless pairs.
stage "cost model" "$bin" train-cm --model "$out/sft/model" \
	--data pku-saferlhf:8:$A/pku-saferlhf/align-anything-preference-sample.json,hh-rlhf-harmless:0.15:$A/hh-rlhf/harmless-base-test.jsonl.gz \
	--truncate prompt-left --max-length 128 --batch-size 8 --steps "${CM_STEPS:-40}" --lr 1e-3 --eval-max 64 --out "$out/cm"

# make compare (scripts/compare.sh) builds its SFT policy and score models with the stages above, then stops.
if [ "${DEMO_STOP_BEFORE_RL:-0}" = 1 ]; then
	exit 0
fi

# 4. PPO-Lagrangian on harmful-leaning prompts; 10% of them (a stable hash split) are held out
#    and scored before and after training. As the reference's script, the actor update mixes the
#    SFT loss on the SFT data (PTX, coefficient 16); PTX examples are cut to 64 tokens to keep the demo
#    in budget (4 ppo-lag steps under load: +12% update time at 64 tokens, +106% at 128; bench/README).
P=$A/eval/beavertails-evaluation.json,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv,$A/pku-saferlhf/align-anything-preference-sample.json,$A/eval/advbench-harmful_behaviors.csv,$A/eval/safe-rlhf-gpt4-problems.json
stage "ppo-lag" "$bin" ppo-lag --actor "$out/sft/model" --reward-model "$out/rm/model" --cost-model "$out/cm/model" \
	--train-data "$P" --eval-split 0.1 --eval-size 128 --max-prompt-tokens 32 --max-new-tokens "${GEN_TOKENS:-32}" \
	--prompt-batch-size 16 --train-batch-size 16 --max-steps "${PPO_STEPS:-96}" \
	--actor-lr "${ACTOR_LR:-5e-4}" --critic-lr "${CRITIC_LR:-5e-4}" --kl-coeff "${KL:-0.05}" \
	--threshold "${THRESHOLD:-0}" --lambda-init "${LAMBDA_INIT:-1}" --lambda-lr "${LAMBDA_LR:-0.5}" --lambda-max 5 \
	--ptx-data $A/pku-saferlhf/align-anything-preference-sample.json,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv,$A/helpful/llamafactory-dpo_en_demo.json \
	--ptx-coeff "${PTX_COEFF:-16}" --ptx-max-length "${PTX_LEN:-64}" \
	--checkpoint-every 16 --output "$out/ppo-lag"

cp "$out/ppo-lag/summary.json" "$out/summary.json"
total=$(($(date +%s) - t_all))
printf 'total\t%d\n' "$total" >> "$timings"
echo
echo "== time per stage (s)"
column -t -s $'\t' "$timings" 2> /dev/null || cat "$timings"
echo
echo "summary (held-out prompts, SFT policy vs PPO-Lag policy): $out/summary.json"
cat "$out/summary.json"
echo "training curves: $out/ppo-lag/plots/ (reward_cost.png, harmful_rate.png, lambda.png, kl.png, ...)"
echo "stage curves:    $out/sft, $out/rm, $out/cm (metrics.jsonl and plots)"
echo "samples:         $out/ppo-lag/samples_before.txt, $out/ppo-lag/samples_after.txt"
