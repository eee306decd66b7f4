#!/usr/bin/env bash
# The paper's comparison with captions that leave the layout unsaid, on a 2-core CPU (docs/results.md, "The
# paper's comparison with brief captions").
# A toy caption says everything about its scene, so SDEdit, which regenerates from the output caption, loses nothing;
# real captions leave most of a photograph unsaid. Brief toy captions name each shape's colour and kind, the
# background and the style, and leave every size and position unsaid.
#
#   1. the base's UNet (INIT, default the bundled base) fine-tuned so that it also draws brief captions: half of
#      its captions brief, FT_STEPS steps of 128 latents at lr 2e-4 (cosine), classic attention, bf16 autocast
#      where the CPU has it natively (scripts/cpu_precision.sh; PRECISION=fp32|bf16 overrides);
#   2. its quality bars on complete captions, and its accuracy on the same scenes' brief captions;
#   3. the editor (EDIT_MODEL, default the bundled one; text guidance 3, image guidance 1 to 5) against SDEdit with
#      that base (strengths 0.3 to 0.9), on the 300 held-out edits with brief captions, then with complete ones;
#   4. the reference points (no edit, the exact edits, the exact edits through the autoencoder) on the same items;
#   5. the figure and table of each (toy_figure.py): the CLIP plane and the oracle's.
# Rerun the same command to resume: the fine-tune goes on from its last checkpoint, the evaluations from their
# records, and what is done is skipped.
#
#   scripts/toy_brief.sh                          # -> runs/toy-brief
#   FT_STEPS=600 N_SCENES=20000 EVAL_ITEMS=120 IMAGE_GUIDANCE=1.5,2.0 CAPTION_SETS=brief \
#     QUALITY_FLAGS="--limit 50" OUT=runs/brief-probe scripts/toy_brief.sh      # a 20-minute probe
#   INIT=runs/toy-cpu/base FT_STEPS=3000 OUT=runs/brief-cpu scripts/toy_brief.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IP2P=${IP2P:-.venv/bin/ip2p}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/toy-brief}
INIT=${INIT:-toy}
EDIT_MODEL=${EDIT_MODEL:-toy}
CLIP=${CLIP:-toy}
PRESET=${PRESET:-toy}
FT_STEPS=${FT_STEPS:-1500}
N_SCENES=${N_SCENES:-40000}
BRIEF=${BRIEF:-0.5}
EVAL_ITEMS=${EVAL_ITEMS:-300}
EVAL_STEPS=${EVAL_STEPS:-20}
IMAGE_GUIDANCE=${IMAGE_GUIDANCE:-1,1.5,2,3,4,5}  # past the paper's 2.2: at low strength SDEdit changes little
STRENGTHS=${STRENGTHS:-0.3,0.5,0.7,0.9}
CAPTION_SETS=${CAPTION_SETS:-brief complete}  # which evaluations: brief captions, complete ones, or both
QUALITY_FLAGS=${QUALITY_FLAGS:-}
FT_FLAGS=${FT_FLAGS:-}
source scripts/cpu_precision.sh
start=$(date +%s)
say() { printf '\n== %s (%s, %d min since the start)\n' "$1" "$(date +%H:%M:%S)" $(( ($(date +%s) - start) / 60 )); }

say "the base's UNet fine-tuned on complete and brief captions"
$IP2P toy train-base --out "$OUT" --stages unet --preset "$PRESET" --unet-init "$INIT" --brief-captions "$BRIEF" \
  --n-scenes "$N_SCENES" --unet-steps "$FT_STEPS" --unet-batch 128 --unet-lr 2e-4 --unet-warmup 100 \
  --attention classic --unet-precision "$PRECISION" --ckpt-every 100 --threads 2 $FT_FLAGS
say "quality: complete captions (the bars) and brief ones"
[[ -f "$OUT/quality/quality.json" ]] ||
  $IP2P toy quality --model "$OUT/base" --only t2i,t2i_brief --out "$OUT/quality" $QUALITY_FLAGS
for captions in $CAPTION_SETS; do
  [[ $captions == brief || $captions == complete ]] || { echo "CAPTION_SETS: brief or complete, not '$captions'" >&2; exit 2; }
  set_name=$([[ $captions == brief ]] && echo toy-brief || echo toy)
  say "the editor against SDEdit, $captions captions"
  $IP2P evaluate --model "$EDIT_MODEL" --base "$OUT/base" --clip "$CLIP" --test-set "$set_name:$EVAL_ITEMS" \
    --resolution 64 --steps "$EVAL_STEPS" --sweep grid --text-guidance 3 --image-guidance "$IMAGE_GUIDANCE" \
    --strengths "$STRENGTHS" -o "$OUT/eval-$captions"
  # the reference points on the same items: no edit, every edit exact, and the exact edits through the editor's
  # autoencoder, the best a latent editor can output (under a minute)
  $IP2P evaluate --model "$EDIT_MODEL" --methods none --references input,target,target-vae --clip "$CLIP" \
    --test-set "$set_name:$EVAL_ITEMS" --resolution 64 -o "$OUT/eval-$captions-references"
  $PY scripts/toy_figure.py "$OUT/eval-$captions=editor" "$OUT/eval-$captions-references" \
    -o "$OUT/eval-$captions.png" \
    --title "toy world, $EVAL_ITEMS held-out edits, $captions captions" > "$OUT/eval-$captions.md"
  cat "$OUT/eval-$captions.md"
done
say "done"
