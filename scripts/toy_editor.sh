#!/usr/bin/env bash
# One command for a toy editor on this CPU: train it from the bundled toy base on a synthesized toy dataset
# (scripts/toy_dataset.sh's) for a fixed number of steps, then have the oracle judge it on 300 held-out rendered edits.
# Rerun the same command to resume: training from its last checkpoint, unless its model is written; then the
# evaluation.
#
#   scripts/toy_editor.sh                                # runs/toy-dataset/pairs/data -> runs/toy-editor-cpu
#   DATA=data/toy/pairs/data OUT=runs/editor MINUTES=60 scripts/toy_editor.sh
#
# The recipe: the toy preset at batch 32 (no random crops: the latents are cached once), posterior-mean targets, bf16
# autocast, lr 1e-3 after 200 warm-up steps with a cosine decay to 0 at STEPS (10,000: about 75 minutes here), the
# noisiest 30% of the timesteps drawn 3 times as often (where an edit's colours, kinds and removals are decided), EMA
# 0.999, and diffusers' classic attention processor, 1.23 times as fast a step as torch's SDPA on this CPU for the
# toy UNet's 4-dim heads (benchmarks/bench_attention.py), which buys the extra steps; the EMA weights are exported.
# MINUTES (default 86) is a safety stop for a slower machine: a run it cuts short has not finished its decay, and
# the same command with more MINUTES resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
IP2P=${IP2P:-.venv/bin/ip2p}
DATA=${DATA:-runs/toy-dataset/pairs/data}
OUT=${OUT:-runs/toy-editor-cpu}
STEPS=${STEPS:-10000}
MINUTES=${MINUTES:-86}
EVAL_ITEMS=${EVAL_ITEMS:-300}
TEXT_GUIDANCE=${TEXT_GUIDANCE:-3}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
source scripts/cpu_precision.sh  # bf16 autocast where the CPU has it natively, else fp32 (PRECISION overrides)
mixed_precision=$([[ $PRECISION == bf16 ]] && echo bf16 || echo no)
[[ -e "$DATA" ]] || { echo "$DATA: no such dataset (make one with scripts/toy_dataset.sh)" >&2; exit 2; }
start=$(date +%s)
if [[ -f "$OUT/model/model_index.json" ]]; then
  echo "== $OUT/model exists: training done (remove it to train further)"
else
  echo "== training on $DATA: $STEPS steps, at most $MINUTES minutes ($(date +%H:%M:%S))"
  $IP2P train --preset toy --base-model toy --data "$DATA" --output-dir "$OUT" --cache-latents \
    --latent-target mean --mixed-precision "$mixed_precision" --attention classic --learning-rate 1e-3 --lr-schedule cosine \
    --lr-warmup-steps 200 --timestep-bias later --timestep-bias-multiplier 3 --timestep-bias-portion 0.3 \
    --max-train-steps "$STEPS" --max-minutes "$MINUTES" --checkpointing-steps 500 --validation-steps 1000 $TRAIN_FLAGS
  echo "== trained in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
fi
echo "== evaluation on $EVAL_ITEMS held-out rendered edits, text guidance $TEXT_GUIDANCE, image guidance 1.5 and 2 ($(date +%H:%M:%S))"
$IP2P evaluate --model "$OUT/model" --methods ip2p --clip toy --test-set "toy:$EVAL_ITEMS" --resolution 64 \
  --steps 20 --sweep grid --text-guidance "$TEXT_GUIDANCE" --image-guidance 1.5,2 -o "$OUT/eval"
