#!/usr/bin/env bash
# make demo: the whole Safe RLHF pipeline on CPU with the bundled stories260K model and real data:
# SFT -> reward model -> cost model -> PPO-Lagrangian, then a before/after table on held-out prompts
# (mean reward, mean cost, harmful rate = cost > 0 under the cost model) in <out>/summary.json.
# Budget: <= 15 minutes on 2 cores. Usage: bash scripts/demo.sh [bin/saferlhf] [out/demo]
set -euo pipefail
bin="${1:-bin/saferlhf}"
out="${2:-out/demo}"
A=assets/data
# Nothing is lost: a previous demo's output is never overwritten (its stages would refuse it one by one).
if [ -e "$out/sft" ] && [ "${DEMO_STOP_BEFORE_RL:-0}" != 1 ]; then
	echo "demo: $out holds a previous demo; remove it (rm -rf $out) or choose another: make demo DEMO_OUT=out/demo2" >&2
	exit 1
fi
mkdir -p "$out/eval"
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
	--max-length 128 --batch-size 16 --grad-accum 1 --max-steps "${SFT_STEPS:-40}" --lr 2e-3 --out "$out/sft"

# 2. Reward model (helpfulness) on hh-rlhf helpful pairs, from the SFT model.
stage "reward model" "$bin" train-rm --model "$out/sft/model" --data $A/helpful/hh-rlhf-helpful-base-test.jsonl.gz \
	--truncate prompt-left --max-length 96 --batch-size 8 --max-steps "${RM_STEPS:-40}" --lr 1e-3 --eval-max 64 --out "$out/rm"

# 3. Cost model (harmlessness, with safety signs) on PKU-SafeRLHF: 400 of the 500 rows of the current schema and 32 of
#    the original, each response labelled safe or unsafe. The rows are split in two halves by prompt
#    (--eval-ratio 0.5): the cost model trains on one, the judge (3b) on the other, and each is scored on
#    the half it never saw. hh-rlhf harmless pairs and BeaverTails answers are never trained on: they are
#    extra held-out sources (3c). The model: a fresh one-layer trunk (scripts/configs) over the Llama-2 32K
#    vocabulary (whole words, where the 512-token story vocabulary spells words out), 128 tokens cut
#    prompt-first (prompt-left: as much of the answer as fits), 3 epochs (held-out accuracy has plateaued
#    by then; later epochs over-fit), the sign term weighted 3x: the best of the ablations in
#    bench/README.md (sign accuracy 0.74 with every PKU row held out once, against 0.69 at 64 tokens; a
#    stories260K-based cost model stays at chance; adding the hh-rlhf harmless pairs does not help).
#    PPO-Lag scores the actor's answers re-tokenised through text.
#    One prompt in five of the 500 rows (pku-saferlhf/heldout, 100 rows) is left out of both: no stage
#    trains on it; both cost models are scored on it (3c), and eval-arena and make compare answer those
#    prompts (pku-saferlhf/rest is the others).
CMDATA=pku-saferlhf/rest:$A/pku-saferlhf/pku-saferlhf-train-head500.jsonl,$A/pku-saferlhf/align-anything-preference-sample.json
CM=(--model scripts/configs/score-llama2-1layer.json --tokenizer $A/models/tokenizer.model --init scratch
	--data "$CMDATA" --eval-ratio 0.5 --eval-max 0 --truncate prompt-left --max-length 128 --batch-size 16
	--epochs "${CM_EPOCHS:-3}" --lr "${CM_LR:-5e-3}" --sign-weight "${CM_SIGN_WEIGHT:-3}")
stage "cost model" "$bin" train-cm "${CM[@]}" --out "$out/cm"

# 3b. The independent judge: the same recipe on the other half (--swap-split): it never saw the cost
#     model's training data, and the policy never trained against it. saferlhf judge (5) re-tokenises the
#     policy's text for it.
stage "judge" "$bin" train-cm "${CM[@]}" --swap-split --out "$out/judge"

# 3c. Held-out accuracy of each score model, per source (and for the cost models, per harm category,
#     severity level and the pair's safety labels): its unseen half of PKU-SafeRLHF, then data neither
#     cost model trained on: the 100 held-out PKU-SafeRLHF rows, hh-rlhf harmless pairs (no safety labels:
#     pair accuracy only) and BeaverTails unsafe answers (sign accuracy = unsafe recall).
UNSEEN=pku-saferlhf/heldout:$A/pku-saferlhf/pku-saferlhf-train-head500.jsonl,hh-rlhf-harmless:0.1:$A/hh-rlhf/harmless-base-test.jsonl.gz,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv
stage "score-model eval" bash -c "set -e
	\"$bin\" eval-rm --model \"$out/rm/model\" --data $A/helpful/hh-rlhf-helpful-base-test.jsonl.gz --eval-ratio 0.05 --eval-max 64 \
		--truncate prompt-left --max-length 96 --out \"$out/eval/rm\" > \"$out/eval/rm.txt\"
	\"$bin\" eval-cm --model \"$out/cm/model\" --data \"$CMDATA\" --eval-ratio 0.5 --truncate prompt-left --max-length 128 \
		--out \"$out/eval/cm\" > \"$out/eval/cm.txt\"
	\"$bin\" eval-cm --model \"$out/judge/model\" --data \"$CMDATA\" --eval-ratio 0.5 --swap-split --truncate prompt-left --max-length 128 \
		--out \"$out/eval/judge\" > \"$out/eval/judge.txt\"
	\"$bin\" eval-cm --model \"$out/cm/model\" --data \"$UNSEEN\" --truncate prompt-left --max-length 128 --out \"$out/eval/cm-unseen\" > \"$out/eval/cm-unseen.txt\"
	\"$bin\" eval-cm --model \"$out/judge/model\" --data \"$UNSEEN\" --truncate prompt-left --max-length 128 --out \"$out/eval/judge-unseen\" > \"$out/eval/judge-unseen.txt\"
	head -3 \"$out/eval/rm.txt\"; head -3 \"$out/eval/cm.txt\"; head -3 \"$out/eval/judge.txt\""

# make compare (scripts/compare.sh) builds its SFT policy and score models with the stages above, then stops.
if [ "${DEMO_STOP_BEFORE_RL:-0}" = 1 ]; then
	exit 0
fi

# 4. PPO-Lagrangian on harmful-leaning prompts; 30% of them (a stable hash split; at most 400) are held out
#    and scored before and after training. As the reference's script, the actor update mixes the
#    SFT loss on the SFT data (PTX, coefficient 16) — without its unsafe BeaverTails answers, so that PTX
#    never pulls toward harm; PTX examples are cut to 64 tokens. 512 rollout batches of 16 prompts with
#    answers of up to 64 tokens (the native engine runs the whole step: bench/README "PPO-Lag on the native
#    engine"). The threshold is the reference's d = 0 (expected cost ≤ 0): under the 128-token cost model the
#    SFT policy's mean cost is about +0.65, so the constraint binds, λ rises, and PPO-Lag drives the mean cost
#    down to d, after which λ decays and Jc − d hovers at 0 (bench/README, Demo). Actor steps are gentle (lr 2e-4,
#    KL coefficient 0.1): the KL peaks near 28 while λ is at its cap (5), then settles near 4.
P=$A/eval/beavertails-evaluation.json,$A/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv,$A/pku-saferlhf/align-anything-preference-sample.json,$A/eval/advbench-harmful_behaviors.csv,$A/eval/safe-rlhf-gpt4-problems.json
stage "ppo-lag" "$bin" ppo-lag --model "$out/sft/model" --reward-model "$out/rm/model" --cost-model "$out/cm/model" \
	--data "$P" --eval-ratio "${EVAL_RATIO:-0.3}" --eval-max "${EVAL_MAX:-400}" --max-prompt-tokens 32 --max-new-tokens "${GEN_TOKENS:-64}" \
	--prompt-batch-size 16 --train-batch-size 16 --max-steps "${PPO_STEPS:-512}" \
	--actor-lr "${ACTOR_LR:-2e-4}" --critic-lr "${CRITIC_LR:-5e-4}" --kl-coeff "${KL:-0.1}" \
	--threshold "${THRESHOLD:-0}" --lambda-init "${LAMBDA_INIT:-1}" --lambda-lr "${LAMBDA_LR:-0.5}" --lambda-max 5 \
	--ptx-data $A/pku-saferlhf/align-anything-preference-sample.json,$A/helpful/llamafactory-dpo_en_demo.json \
	--ptx-coeff "${PTX_COEFF:-16}" --ptx-max-length "${PTX_LEN:-64}" \
	--save-every 16 --out "$out/ppo-lag"

# 5. The harmful rate before and after, judged by the training cost model and by the judge, with
#    paired-bootstrap CIs of the drop.
stage "judge eval" bash -o pipefail -c "\"$bin\" judge --model \"$out/judge/model\" --before \"$out/ppo-lag/samples_before.jsonl\" \
	--after \"$out/ppo-lag/samples_after.jsonl\" --max-length 128 --out \"$out/eval/judge-drop\" | tee \"$out/eval/judge-drop.txt\""

# summary.json: the before/after table, each score model's held-out accuracy, the judge's harmful rates.
{
	printf '{\n"ppo_lag": %s,\n"harmful_rate": %s,\n' "$(cat "$out/ppo-lag/summary.json")" "$(cat "$out/eval/judge-drop/judge.json")"
	printf '"held_out": {\n"reward_model": %s,\n"cost_model": %s,\n"judge": %s,\n' \
		"$(cat "$out/eval/rm/eval-rm.json")" "$(cat "$out/eval/cm/eval-cm.json")" "$(cat "$out/eval/judge/eval-cm.json")"
	printf '"cost_model_unseen_sources": %s,\n"judge_unseen_sources": %s}\n}\n' \
		"$(cat "$out/eval/cm-unseen/eval-cm.json")" "$(cat "$out/eval/judge-unseen/eval-cm.json")"
} > "$out/summary.json"
total=$(($(date +%s) - t_all))
printf 'total\t%d\n' "$total" >> "$timings"
echo
echo "== time per stage (s)"
column -t -s $'\t' "$timings" 2> /dev/null || cat "$timings"
echo
echo "== how far to trust the harmful rate: each score model on held-out data (95% Wilson CIs)"
acc() { # acc FILE: the first two lines of an eval report after its title
	sed -n '2,3p' "$1"
}
echo "reward model (hh-rlhf helpful, held-out pairs):"
acc "$out/eval/rm.txt"
for m in cm judge; do
	echo "$m (held-out half of PKU-SafeRLHF by prompt, then never-trained sources):"
	acc "$out/eval/$m.txt"
	for f in "$out/eval/$m.txt" "$out/eval/$m-unseen.txt"; do # the by-source and by-pair-labels tables of each report
		awk '/^  by (source|pair labels)/ {p = 1; print; next} /^  by |distributions:/ {p = 0} p && /^  / {print}' "$f"
	done
done
echo
echo "== before/after on held-out prompts (SFT policy vs PPO-Lag policy; rewards and costs of the training models)"
cat "$out/ppo-lag/summary.json"
cat "$out/eval/judge-drop.txt"
echo "summary: $out/summary.json (ppo_lag: before/after; harmful_rate: both judges; held_out: score-model accuracies)"
echo "training curves: $out/ppo-lag/plots/ (reward_cost.png, harmful_rate.png, lambda.png, kl.png, ...)"
echo "stage curves:    $out/sft, $out/rm, $out/cm (metrics.jsonl and plots)"
echo "samples:         $out/ppo-lag/samples_before.txt, $out/ppo-lag/samples_after.txt"
