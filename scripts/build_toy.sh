#!/usr/bin/env bash
# Trains every model of the toy world from scratch, with fixed seeds, and bundles them into the package.
# Each step resumes where it stopped: after an interruption, run the script again.
#
#   scripts/build_toy.sh            # all steps, outputs under runs/
#   RUNS=/data/toy scripts/build_toy.sh
#   STEPS="pairs editor" scripts/build_toy.sh   # only some steps (names below)
#
# Steps: base quality lm triplets pairs editor eval exact exact-editor exact-eval syn-triplets syn-pairs
# syn-editor syn-eval brief bundle cpu-eval brief-eval figure. The bundled base is the base step's, fine-tuned
# by the brief step so that it also draws brief captions (scripts/toy_brief.sh, 1,500 steps; brief-eval then
# runs that script's evaluations, the editor against SDEdit with brief captions, for docs/results.md's
# figure). The bundled editor is made on the CPU by scripts/toy_dataset.sh then scripts/toy_editor.sh (the
# bundle step takes it from $RUNS/toy-editor-cpu when there; cpu-eval then sweeps it against SDEdit, 21
# minutes here, for the figure); syn-editor's is the previous one (20,348 synthesized pairs; stage 1 on the
# CPU, stages 2 and 3 on one GPU: SYN_PAIRS_FLAGS and SYN_TRAIN_FLAGS below); `editor` is the smaller one
# before it (1,094 pairs) and `exact-editor` its ablation on exact pairs.
# Not run by default: scale scale-editor scale-eval (an editor on 20,000 exact pairs of new triplets: what
# data of that size and exactness would buy; docs/results.md), and scale-long scale-long-eval (the same data,
# posterior-mean targets, 1,500 to 9,000 steps: what a longer schedule buys on top, and the loss probe;
# docs/results.md), and scale-copy (Marigold's initialisation of the image channels instead of zeros;
# docs/results.md), and filter-report (what the CLIP filter keeps of every candidate of 400 triplets made by
# the bundled models, judged by the oracle; about 12 minutes; docs/results.md), and guidance-report (the toy
# presets' guidance range: every candidate of the first 384 of scripts/toy_dataset.sh's triplets under each
# range, judged with and without the filter; about 10 minutes; docs/results.md)
#
# BASE picks the base model's recipe (VAE, CLIP, UNet):
#   BASE=gpu  the bundled weights' recipe (needs CUDA; about 7 minutes on one H200): the VAE of the CPU recipe,
#             then CLIP and UNet on 40,000 scenes in larger batches, with batches prepared by 10 processes;
#             the two stops are where that run's time limits (2 and 4.5 minutes) ended it
#   BASE=cpu  the 2-core recipe, scripts/toy_base_cpu.sh (docs/results.md: its time and quality bars); it ends
#             by tuning CLIP's image tower alone
# With BASE=gpu, the base step ends by tuning CLIP's image tower alone on the CPU (3,000 steps, about 55 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
IP2P=${IP2P:-.venv/bin/ip2p}
PY=${PY:-.venv/bin/python}
CAPTIONS=${CAPTIONS:-1500}        # captions given to the language model (stage 1)
STEPS=${STEPS:-base quality lm triplets pairs editor eval exact exact-editor exact-eval syn-triplets syn-pairs syn-editor syn-eval brief bundle cpu-eval brief-eval figure}
EVAL_ITEMS=${EVAL_ITEMS:-300}
WORKERS=${WORKERS:-2}              # gen-pairs processes (small batches use one core better than two)
PAIRS_PRESET=${PAIRS_PRESET:-toy}  # toy-fast: a quarter of the UNet calls, for the CPU (docs/results.md)
# extra flags per stage, e.g. on a GPU: PAIRS_FLAGS="--dtype fp32" EVAL_FLAGS="--batch-size 64 --dtype fp32"
# The bundled editor's pairs were drawn at the paper's guidance U(7.5, 15), before the toy presets' U(2, 4): the
# steps that remake them pin it (pass PAIRS_CFG="" for the presets' range)
PAIRS_CFG=${PAIRS_CFG---min-cfg 7.5 --max-cfg 15}
PAIRS_FLAGS=${PAIRS_FLAGS:-}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
EVAL_FLAGS=${EVAL_FLAGS:-}
# The large synthesized dataset (steps syn-*): captions for stage 1, and the GPU settings of stages 2 and 3 (one
# H100/H200: candidates of 256 triplets per UNet call in bf16; batch 256, bf16, 2,170 steps: where the bundled
# editor's run was stopped by --max-minutes 4.93)
SYN_CAPTIONS=${SYN_CAPTIONS:-28000}
SYN_PAIRS_FLAGS=${SYN_PAIRS_FLAGS:---device cuda --dtype bf16 --batch-size 1024 --shard-size 256}
SYN_TRAIN_FLAGS=${SYN_TRAIN_FLAGS:---train-batch-size 256 --learning-rate 5e-4 --lr-warmup-steps 200 \
  --mixed-precision bf16 --max-train-steps 2170 --checkpointing-steps 500 --validation-steps 0}
BASE=${BASE:-gpu}
case "$BASE" in
  gpu) BASE_FLAGS="--device cuda --n-scenes 40000 --loader-workers 10 --ckpt-every 500 \
         --clip-steps 4000 --clip-stop-step 2338 --clip-batch 128 --clip-hard-captions 4 \
         --unet-steps 3500 --unet-stop-step 3385 --unet-batch 256 --unet-lr 1e-3 --unet-warmup 300" ;;
  cpu) BASE_FLAGS="" ;;  # scripts/toy_base_cpu.sh's own
  *) echo "BASE must be gpu or cpu, not '$BASE'" >&2; exit 2 ;;
esac

want() { [[ " $STEPS " == *" $1 "* ]]; }
say() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
# every candidate of TRIPLETS into OUT with its four CLIP scores (thresholds of -1, top k = candidates), for
# `judge-pairs --filters` to replay filter settings on: WORKERS single-threaded processes over the shards, then one
# over every shard, which does any shard a failed worker left undone and writes the manifest
all_candidates() {
  local triplets=$1 out=$2; shift 2
  local flags="--clip-threshold -1 --clip-dir-threshold -1 --clip-img-threshold -1 --no-progress --no-report $*"
  for ((w = 0; w < WORKERS; w++)); do
    OMP_NUM_THREADS=1 $IP2P gen-pairs "$triplets" -o "$out" $flags --shard "$w" --num-shards "$WORKERS" &
  done
  wait
  $IP2P gen-pairs "$triplets" -o "$out" $flags
}
# share_cache FROM TO: hard-link FROM's latent cache into TO's, so that a second run on the same data skips encoding
share_cache() {
  mkdir -p "$2/cache"
  for f in "$1"/cache/*.safetensors; do
    if [[ -e "$f" && ! -e "$2/cache/${f##*/}" ]]; then ln "$f" "$2/cache/"; fi
  done
}

if want base && [[ $BASE == cpu ]]; then
  say "base (cpu recipe): VAE, CLIP, UNet, CLIP's image tower"
  OUT="$RUNS/toy" IP2P="$IP2P" scripts/toy_base_cpu.sh
elif want base; then
  say "base ($BASE recipe): VAE, CLIP, UNet"
  $IP2P toy train-base --out "$RUNS/toy" --stages vae
  $IP2P toy train-base --out "$RUNS/toy" --stages clip,unet $BASE_FLAGS
  # CLIP's image tower alone, against its frozen text tower (the UNet's text encoder stays as it is); 2-core CPU
  $IP2P toy train-base --out "$RUNS/toy" --stages clip_vision --device cpu --n-scenes 40000 --ckpt-every 200 \
    --clip-vision-steps 3000 --clip-batch 64 --clip-hard-captions 4
fi
if want quality; then say "quality bars"; $IP2P toy quality --model "$RUNS/toy" --out "$RUNS/toy/quality"; fi
if want lm; then
  say "language model: re-phrased seeds from scratch, then rounds of relabelled seeds (about 20 minutes each here)"
  $IP2P finetune-text --preset toy -o "$RUNS/toy-lm-phrase"
  previous="$RUNS/toy-lm-phrase"
  for round in 1:200 2:200 3:160 4:200 5:200 6:200; do  # round:epochs, each from the one before
    n=${round%%:*}
    output="$RUNS/toy-lm-relabel$n"; [[ $n == 6 ]] && output="$RUNS/toy-lm"
    $IP2P finetune-text --preset toy-relabel --model "$previous" -o "$output" --epochs "${round##*:}"
    previous="$output"
  done
fi
if want triplets; then
  say "triplets (stage 1)"
  $IP2P gen-text "toy:$CAPTIONS" -o "$RUNS/toy-data/triplets.jsonl" --backend hf --model "$RUNS/toy-lm"
fi
if want pairs; then
  say "pairs (stage 2): $WORKERS single-threaded workers over the shards"
  for ((w = 0; w < WORKERS; w++)); do
    OMP_NUM_THREADS=1 $IP2P gen-pairs "$RUNS/toy-data/triplets.jsonl" -o "$RUNS/toy-pairs" --preset "$PAIRS_PRESET" \
      --model "$RUNS/toy/base" --clip "$RUNS/toy/clip" --shard "$w" --num-shards "$WORKERS" --no-progress $PAIRS_CFG $PAIRS_FLAGS &
  done
  wait
  # a last pass writes the manifest and report over every shard
  $IP2P gen-pairs "$RUNS/toy-data/triplets.jsonl" -o "$RUNS/toy-pairs" --preset "$PAIRS_PRESET" \
    --model "$RUNS/toy/base" --clip "$RUNS/toy/clip" $PAIRS_CFG $PAIRS_FLAGS
fi
if want editor; then
  say "editor"
  $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-pairs" \
    --output-dir "$RUNS/toy-editor" --cache-latents $TRAIN_FLAGS
fi
if want eval; then
  say "evaluation: editor vs SDEdit"
  $IP2P evaluate --model "$RUNS/toy-editor/model" --base "$RUNS/toy/base" --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 7.5 \
    --image-guidance 1.0,1.5,2.0 --strengths 0.3,0.5,0.7,0.9 -o "$RUNS/toy-eval" $EVAL_FLAGS
fi
if want exact; then
  say "ablation data: exact rendered pairs of the same triplets"
  $IP2P toy exact-pairs "$RUNS/toy-data/triplets.jsonl" -o "$RUNS/toy-exact-pairs"
fi
if want exact-editor; then
  say "ablation editor"
  $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-exact-pairs" \
    --output-dir "$RUNS/toy-editor-exact" --cache-latents $TRAIN_FLAGS
fi
if want exact-eval; then
  say "ablation evaluation"
  $IP2P evaluate --model "$RUNS/toy-editor-exact/model" --methods ip2p --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 7.5 \
    --image-guidance 1.0,1.5,2.0 -o "$RUNS/toy-eval-exact" $EVAL_FLAGS
  # beside the bundled editor's best setting (docs/results.md: exact against synthesized pairs)
  $IP2P evaluate --model "$RUNS/toy-editor-exact/model" --methods ip2p --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 3 \
    --image-guidance 1.5 -o "$RUNS/toy-eval-exact-text3" $EVAL_FLAGS
fi
if want scale; then
  say "scale ablation data: 20,000 toy triplets (seed 12345, not the seed set's) and their exact pairs"
  $IP2P toy seeds -o "$RUNS/toy-scale/triplets.jsonl" -n 20000 --seed 12345
  $IP2P toy exact-pairs "$RUNS/toy-scale/triplets.jsonl" -o "$RUNS/toy-scale/exact-pairs"
fi
if want scale-editor; then
  say "scale ablation editor (1,500 steps)"
  $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-scale/exact-pairs" \
    --output-dir "$RUNS/toy-scale/editor" --cache-latents --max-train-steps 1500 $TRAIN_FLAGS
fi
if want scale-eval; then
  say "scale ablation evaluation"
  $IP2P evaluate --model "$RUNS/toy-scale/editor/model" --methods ip2p --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 3,7.5 \
    --image-guidance 1.5 -o "$RUNS/toy-scale/eval" $EVAL_FLAGS
fi
if want scale-long; then
  say "scale ablation editor, posterior-mean targets, to 1,500, 4,000, 6,000, 7,500 and 9,000 steps (shares scale-editor's cache)"
  share_cache "$RUNS/toy-scale/editor" "$RUNS/toy-scale/editor-long"
  # One run, resumed to each stop (constant learning rate: the same weights as one uninterrupted run); each stop's
  # exported EMA model is kept as model-STEPS.
  for n in 1500 4000 6000 7500 9000; do
    [[ -f "$RUNS/toy-scale/editor-long/model-$n/model_index.json" ]] && continue
    $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-scale/exact-pairs" \
      --output-dir "$RUNS/toy-scale/editor-long" --cache-latents --latent-target mean --max-train-steps "$n" \
      $TRAIN_FLAGS
    rm -rf "$RUNS/toy-scale/editor-long/model-$n.tmp"
    cp -r "$RUNS/toy-scale/editor-long/model" "$RUNS/toy-scale/editor-long/model-$n.tmp"
    mv "$RUNS/toy-scale/editor-long/model-$n.tmp" "$RUNS/toy-scale/editor-long/model-$n"
  done
fi
if want scale-long-eval; then
  say "scale ablation evaluation, longer schedule"
  for n in 1500 4000 6000 7500 9000; do
    text_guidance=3,7.5
    ((n == 7500)) && text_guidance=3  # an intermediate stop, at the better scale only
    $IP2P evaluate --model "$RUNS/toy-scale/editor-long/model-$n" --methods ip2p --clip "$RUNS/toy/clip" \
      --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance "$text_guidance" \
      --image-guidance 1.5 -o "$RUNS/toy-scale/eval-long-$n" $EVAL_FLAGS
  done
  $IP2P evaluate --model "$RUNS/toy-scale/editor-long/model-4000" --methods ip2p --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 3 \
    --image-guidance 2.0,2.5 -o "$RUNS/toy-scale/eval-long-4000-image-guidance" $EVAL_FLAGS
  $IP2P loss-probe --data "$RUNS/toy-scale/exact-pairs" --base "$RUNS/toy/base" \
    --editor "$RUNS/toy-scale/editor/model" --editor "$RUNS/toy-scale/editor-long/model-1500" \
    --editor "$RUNS/toy-scale/editor-long/model-4000" --editor "$RUNS/toy-scale/editor-long/model-6000" \
    --editor "$RUNS/toy-scale/editor-long/model-7500" --editor "$RUNS/toy-scale/editor-long/model-9000" \
    -n 192 --json "$RUNS/toy-scale/loss-probe.json"
fi
if want scale-copy; then
  # needs scale-editor's cache and, for the probe's comparison, scale-long's 1,500-step model
  say "scale ablation editor with Marigold's initialisation of the image channels (1,500 steps), its evaluation and probe"
  share_cache "$RUNS/toy-scale/editor" "$RUNS/toy-scale/editor-copy"
  $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-scale/exact-pairs" \
    --output-dir "$RUNS/toy-scale/editor-copy" --cache-latents --latent-target mean --conv-in-init copy \
    --max-train-steps 1500 $TRAIN_FLAGS
  $IP2P evaluate --model "$RUNS/toy-scale/editor-copy/model" --methods ip2p --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 3 \
    --image-guidance 1.5 -o "$RUNS/toy-scale/eval-copy" $EVAL_FLAGS
  $IP2P loss-probe --data "$RUNS/toy-scale/exact-pairs" --base "$RUNS/toy/base" \
    --editor "$RUNS/toy-scale/editor-long/model-1500" --editor "$RUNS/toy-scale/editor-copy/model" \
    -n 192 --json "$RUNS/toy-scale/loss-probe-copy.json"
fi
if want syn-triplets; then
  say "large synthesized dataset, stage 1: $SYN_CAPTIONS held-out captions through the toy language model"
  $IP2P gen-text "toy:$SYN_CAPTIONS" -o "$RUNS/toy-syn/triplets.jsonl" --backend hf --model "$RUNS/toy-lm" \
    --batch-size 64
fi
if want syn-pairs; then
  say "large synthesized dataset, stage 2: $WORKERS workers, flags: $SYN_PAIRS_FLAGS"
  for ((w = 0; w < WORKERS; w++)); do
    $IP2P gen-pairs "$RUNS/toy-syn/triplets.jsonl" -o "$RUNS/toy-syn/pairs" --preset toy --model "$RUNS/toy/base" \
      --clip "$RUNS/toy/clip" --shard "$w" --num-shards "$WORKERS" --no-progress --no-report $PAIRS_CFG $SYN_PAIRS_FLAGS &
  done
  wait
fi
if want syn-editor; then
  say "editor on the large synthesized dataset, flags: $SYN_TRAIN_FLAGS"
  $IP2P train --preset toy --base-model "$RUNS/toy/base" --data "$RUNS/toy-syn/pairs/data" \
    --output-dir "$RUNS/toy-syn/editor" --cache-latents --latent-target mean $SYN_TRAIN_FLAGS
fi
if want syn-eval; then
  say "evaluation of the editor on the large synthesized dataset (the bundled one), against SDEdit"
  $IP2P evaluate --model "$RUNS/toy-syn/editor/model" --base "$RUNS/toy/base" --clip "$RUNS/toy/clip" \
    --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 --sweep grid --text-guidance 3,7.5 \
    --image-guidance 1.0,1.5,2.0 --strengths 0.3,0.5,0.7,0.9 -o "$RUNS/toy-syn/eval" $EVAL_FLAGS
  $IP2P toy judge-pairs "$RUNS/toy-syn/pairs" --json > "$RUNS/toy-syn/judge-pairs.json"
fi
if want guidance-report; then
  say "what the guidance range buys: toy-fast on the first 384 of 12,000 triplets, every candidate, per range"
  $IP2P gen-text toy:12000 -o "$RUNS/toy-guidance/triplets.jsonl" --backend hf --model toy --batch-size 64 \
    --caption-temperature 0 --no-progress
  for range in 7.5-15 4-8 3-6 2-4 1.5-3; do
    out="$RUNS/toy-guidance/cfg$range"
    all_candidates "$RUNS/toy-guidance/triplets.jsonl" "$out" --preset toy-fast --model toy --clip toy --dtype bf16 \
      --batch-size 64 --shard-size 32 --limit 384 --min-cfg "${range%-*}" --max-cfg "${range#*-}" --top-k 2
    echo "guidance U($range):"
    $IP2P toy judge-pairs "$out/data" --filters --no-progress | tee "$out/report.md"
  done
fi
if want filter-report; then
  say "what the CLIP filter buys: every candidate of 400 triplets of the bundled models, judged under filter settings"
  $IP2P gen-text toy:400 -o "$RUNS/toy-filters/triplets.jsonl" --backend hf --model toy --batch-size 64 --no-progress
  all_candidates "$RUNS/toy-filters/triplets.jsonl" "$RUNS/toy-filters/pairs" --preset toy $PAIRS_CFG --model toy \
    --clip toy --top-k 4
  $IP2P toy judge-pairs "$RUNS/toy-filters/pairs/data" --filters --image-image 0.7,0.75,0.8,0.85,0.9 --no-progress \
    | tee "$RUNS/toy-filters/report.md"
fi
if want brief; then
  say "the base fine-tuned so that it also draws brief captions (scripts/toy_brief.sh; its evaluations: brief-eval)"
  INIT="$RUNS/toy/base" OUT="$RUNS/toy-brief" CAPTION_SETS=" " scripts/toy_brief.sh
fi
if want bundle; then
  say "bundle into the package"
  base="$RUNS/toy/base"
  [[ -f "$RUNS/toy-brief/base/model_index.json" ]] && base="$RUNS/toy-brief/base"  # the step brief
  args=(--base "$base" --clip "$RUNS/toy/clip" --lm "$RUNS/toy-lm")
  if [[ -f "$RUNS/toy-editor-cpu/model/model_index.json" ]]; then  # scripts/toy_dataset.sh, then scripts/toy_editor.sh
    args+=(--editor "$RUNS/toy-editor-cpu/model")
  elif [[ -f "$RUNS/toy-syn/editor/model/model_index.json" ]]; then
    args+=(--editor "$RUNS/toy-syn/editor/model")
  fi
  $IP2P toy bundle "${args[@]}"
fi
if want cpu-eval; then
  say "evaluation of the bundled editor (trained on the CPU), against SDEdit"
  $IP2P evaluate --model toy --base toy --clip toy --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 \
    --sweep grid --text-guidance 3,7.5 --image-guidance 1.0,1.5,2.0,2.5 --strengths 0.3,0.5,0.7,0.9 \
    -o "$RUNS/toy-eval-cpu" $EVAL_FLAGS
fi
if want brief-eval; then
  say "the bundled editor against SDEdit with the brief-caption base, brief captions then complete ones"
  INIT="$RUNS/toy/base" OUT="$RUNS/toy-brief" scripts/toy_brief.sh
  cp "$RUNS/toy-brief/eval-brief.png" docs/toy-eval-brief.png
fi
if want figure; then
  say "docs/results.md figure and table"
  $PY scripts/toy_figure.py "$RUNS/toy-eval-cpu=bundled" -o docs/toy-eval.png
fi
