#!/bin/sh
# ZeRO-1 on CPU: `saferlhf bench` (one PPO-Lag step: actor and both critics updated) as one
# process and as two processes (launcher variables set by hand) with --zero-stage 0 and 1.
# Prints each run's step time and every rank's AdamW moment bytes and collective seconds.
# Usage: bench/zero1.sh [saferlhf binary] [extra bench flags...]
set -eu
BIN=${1:-bin/saferlhf}
[ $# -gt 0 ] && shift
ARGS="--preset stories260K --batch 8 --prompt-len 16 --gen-len 16 --steps 3 $*"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
PORT=$((29600 + $$ % 300))
echo "== 1 process"
$BIN bench $ARGS --json "$OUT/ws1.json" | grep -E "step: (update|total)|AdamW moments"
for z in 0 1; do
	echo "== 2 processes, --zero-stage $z"
	for r in 0 1; do
		RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
			$BIN bench $ARGS --zero-stage $z --json "$OUT/ws2-z$z-r$r.json" >"$OUT/log-$z-$r" 2>&1 &
	done
	wait
	grep -E "step: (update|total)|AdamW moments|rank [01]:" "$OUT/log-$z-0"
	PORT=$((PORT + 2))
done
