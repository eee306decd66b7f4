#!/usr/bin/env bash
# The toy base model (VAE, CLIP, UNet) from scratch on a 2-core CPU, then its quality bars (ip2p toy quality).
# Rerun the same command to resume: every stage goes on from its last checkpoint, and a finished stage is skipped.
#
#   scripts/toy_base_cpu.sh                       # -> runs/toy-cpu (base/ and clip/, as the bundled weights)
#   OUT=runs/base UNET_STEPS=2000 scripts/toy_base_cpu.sh
#   PRESET=test N_SCENES=48 VAE_STEPS=2 CLIP_STEPS=2 UNET_STEPS=2 CLIP_VISION_STEPS=1 \
#     QUALITY_FLAGS="--limit 2 --steps 2" OUT=/tmp/base scripts/toy_base_cpu.sh   # the tests' tiny models
#
# The recipe, on this machine's two cores (times of its second run, docs/results.md):
#   1. the VAE (1,200 steps of 16, about 17 minutes) and CLIP (2,400 steps of 128 scenes with 4 hard-negative
#      captions each; 44 minutes in all) side by side, one core each; when the VAE is done, CLIP is stopped (SIGTERM:
#      it saves a checkpoint at the step it has reached) and resumed on both cores;
#   2. the UNet on both cores: UNET_STEPS steps of 128 cached latents of 40,000 scenes, lr 1e-3 after 300 warm-up
#      steps with a cosine decay to a tenth, EMA 0.999 (2,400 steps: 43 minutes with its latent cache);
#   3. CLIP's image tower alone against its frozen text tower (CLIP_VISION_STEPS; 0 skips it), which leaves the
#      UNet's text encoder as it is (6,000 steps: 35 minutes; 3,000 gave 87.4%);
#   4. the quality bars (2 minutes).
# The second run took 2 h 4 min in all and met every bar: VAE 32.2 dB, CLIP 91.8%, text-to-image 100% and 94%
# (docs/results.md, the base on the 2-core CPU).
# CLIP and UNet train under bf16 autocast with classic attention (benchmarks/bench_base_train.py: a CLIP step 3.0 and
# a UNet step 1.9 times as fast on an AVX-512 BF16 CPU); the weights stay float32. A CPU without native bf16 trains
# in fp32 (scripts/cpu_precision.sh; PRECISION=fp32|bf16 overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
IP2P=${IP2P:-.venv/bin/ip2p}
OUT=${OUT:-runs/toy-cpu}
VAE_STEPS=${VAE_STEPS:-1200}
CLIP_STEPS=${CLIP_STEPS:-2400}
UNET_STEPS=${UNET_STEPS:-2400}
CLIP_VISION_STEPS=${CLIP_VISION_STEPS:-6000}
PRESET=${PRESET:-toy}
N_SCENES=${N_SCENES:-40000}
QUALITY_FLAGS=${QUALITY_FLAGS:-}
source scripts/cpu_precision.sh
FAST="--preset $PRESET --attention classic --clip-precision $PRECISION --unet-precision $PRECISION --ckpt-every 100"
CLIP_FLAGS="--n-scenes $N_SCENES --clip-steps $CLIP_STEPS --clip-batch 128 --clip-hard-captions 4 $FAST"
UNET_FLAGS="--n-scenes $N_SCENES --unet-steps $UNET_STEPS --unet-batch 128 --unet-lr 1e-3 --unet-warmup 300 $FAST"
VISION_FLAGS="--n-scenes $N_SCENES --clip-vision-steps $CLIP_VISION_STEPS --clip-batch 64 --clip-hard-captions 4 $FAST"
start=$(date +%s)
say() { printf '\n== %s (%s, %d min since the start)\n' "$1" "$(date +%H:%M:%S)" $(( ($(date +%s) - start) / 60 )); }

say "VAE and CLIP side by side, one core each"
clip_pid=""
if [[ ! -f "$OUT/clip/config.json" ]]; then
  $IP2P toy train-base --out "$OUT" --stages clip --threads 1 $CLIP_FLAGS &
  clip_pid=$!
fi
$IP2P toy train-base --out "$OUT" --stages vae --threads 1 --preset "$PRESET" --vae-steps "$VAE_STEPS" \
  --n-scenes "$(( N_SCENES < 20000 ? N_SCENES : 20000 ))"
if [[ -n "$clip_pid" ]]; then
  say "VAE done: CLIP moves to both cores"
  kill -TERM "$clip_pid" 2>/dev/null || true
  wait "$clip_pid" || true  # 130: stopped after saving its checkpoint
  $IP2P toy train-base --out "$OUT" --stages clip --threads 2 $CLIP_FLAGS
fi
say "UNet on both cores"
$IP2P toy train-base --out "$OUT" --stages unet --threads 2 $UNET_FLAGS
if (( CLIP_VISION_STEPS > 0 )); then
  say "CLIP's image tower alone"
  $IP2P toy train-base --out "$OUT" --stages clip_vision --threads 2 $VISION_FLAGS
fi
say "trained"
$IP2P toy quality --model "$OUT" --out "$OUT/quality" $QUALITY_FLAGS
say "measured"
