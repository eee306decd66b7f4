#!/usr/bin/env bash
# LoRA against full training in the toy world, and a fine-tune of the bundled toy editor, each judged by the oracle
# on the 300 held-out edits (toy:300) at the bundled editor's setting (20 steps, text guidance 3, image guidance 2).
#
#   1. exact rendered pairs of TRIPLETS seed triplets (`ip2p toy seeds`, then `ip2p toy exact-pairs`), and of their
#      recolourings alone;
#   2. a LoRA toy editor (rank RANK on the attention projections, the 8-channel input convolution trained in full)
#      and a full toy editor, both from the toy base (`--base-model toy`), on the same pairs, steps and batch, with
#      the bundled editor's recipe (scripts/toy_editor.sh) at a short budget;
#   3. the bundled toy editor fine-tuned on the recolouring pairs alone (`--start-from editor`, no surgery), at a
#      tenth of its learning rate: recolouring before and after, and the other edit types (did it forget?);
#   4. each evaluated; the success overall and per edit type printed.
#
#   scripts/toy_lora.sh                                  # -> runs/toy-lora
#   OUT=runs/x STEPS=2000 MINUTES=40 RANK=32 scripts/toy_lora.sh
#
# Rerun the same command to resume: data and finished models are kept, a training run continues from its last
# checkpoint (MINUTES and FT_MINUTES are safety stops; a run they cut short is exported as it stands and noted).
set -euo pipefail
cd "$(dirname "$0")/.."
IP2P=${IP2P:-.venv/bin/ip2p}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/toy-lora}
TRIPLETS=${TRIPLETS:-3000}
STEPS=${STEPS:-300}
MINUTES=${MINUTES:-30}
RANK=${RANK:-16}
FT_STEPS=${FT_STEPS:-100}
FT_MINUTES=${FT_MINUTES:-6}
FT_LR=${FT_LR:-1e-4}
EVAL_ITEMS=${EVAL_ITEMS:-300}
source scripts/cpu_precision.sh  # bf16 autocast where the CPU has it natively, else fp32 (PRECISION overrides)
mixed_precision=$([[ $PRECISION == bf16 ]] && echo bf16 || echo no)
mkdir -p "$OUT"
stamp() { date +%H:%M:%S; }

echo "== data: $TRIPLETS seed triplets, exact pairs; the recolourings alone ($(stamp))"
[[ -s "$OUT/triplets.jsonl" ]] || $IP2P toy seeds -o "$OUT/triplets.jsonl" -n "$TRIPLETS" --seed 1
[[ -f "$OUT/pairs/manifest.json" ]] || $IP2P toy exact-pairs "$OUT/triplets.jsonl" -o "$OUT/pairs"
if [[ ! -s "$OUT/recolor.jsonl" ]]; then
  $PY - "$OUT/triplets.jsonl" "$OUT/recolor.jsonl" <<'EOF'
import json, sys
from ip2p.toy.edits import edit_type_of
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
kept = [r for r in rows if edit_type_of(r["edit"]) == "recolor"]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
print(f"{len(kept)} recolouring triplets of {len(rows)}")
EOF
fi
[[ -f "$OUT/recolor-pairs/manifest.json" ]] || $IP2P toy exact-pairs "$OUT/recolor.jsonl" -o "$OUT/recolor-pairs"

# the bundled editor's recipe (scripts/toy_editor.sh) but for the budget and the warm-up
RECIPE=(--preset toy --cache-latents --latent-target mean --mixed-precision "$mixed_precision" --attention classic
  --timestep-bias later --timestep-bias-multiplier 3 --timestep-bias-portion 0.3 --checkpointing-steps 100
  --validation-steps 0 --num-validation-examples 0)
run() {  # NAME DONE_FILE FLAGS...: train unless DONE_FILE exists, timed
  local name=$1 done=$2
  shift 2
  if [[ -e "$done" ]]; then
    echo "== $name: $done exists, trained"
    return
  fi
  echo "== $name ($(stamp))"
  local start
  start=$(date +%s)
  $IP2P train "${RECIPE[@]}" "$@"
  echo "== $name trained in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
}
TOY_BUDGET=(--data "$OUT/pairs/data" --learning-rate 1e-3 --lr-schedule cosine --lr-warmup-steps 50
  --max-train-steps "$STEPS" --max-minutes "$MINUTES")
run "LoRA rank $RANK from the toy base, $STEPS steps" "$OUT/lora/lora/lora_info.json" \
  --base-model toy --output-dir "$OUT/lora" --lora-rank "$RANK" "${TOY_BUDGET[@]}"
run "full from the toy base, $STEPS steps" "$OUT/full/model/model_index.json" \
  --base-model toy --output-dir "$OUT/full" "${TOY_BUDGET[@]}"
run "the bundled editor fine-tuned on recolourings, $FT_STEPS steps" "$OUT/finetune/model/model_index.json" \
  --base-model toy --start-from editor --output-dir "$OUT/finetune" --data "$OUT/recolor-pairs/data" \
  --learning-rate "$FT_LR" --lr-schedule constant --max-train-steps "$FT_STEPS" --max-minutes "$FT_MINUTES"
for run_dir in lora full finetune; do
  if [[ -f "$OUT/$run_dir/metrics.jsonl" ]]; then
    echo "$run_dir, last logged step: $(tail -n 1 "$OUT/$run_dir/metrics.jsonl")"
  fi
done
ls -l "$OUT/lora/lora"
du -k "$OUT/lora/lora/pytorch_lora_weights.safetensors" "$OUT/lora/lora/conv_in.safetensors"

evaluate() {  # NAME FLAGS...: unless its summary exists
  local name=$1
  shift
  [[ -f "$OUT/eval-$name/summary.jsonl" ]] && return
  echo "== evaluating $name on toy:$EVAL_ITEMS ($(stamp))"
  $IP2P evaluate "$@" --methods ip2p --clip toy --test-set "toy:$EVAL_ITEMS" --resolution 64 --steps 20 \
    --sweep grid --text-guidance 3 --image-guidance 2 -o "$OUT/eval-$name" > "$OUT/eval-$name.log"
}
evaluate lora --model toy --lora "$OUT/lora/lora"
evaluate full --model "$OUT/full/model"
evaluate finetune --model "$OUT/finetune/model"
evaluate bundled --model toy
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
types = ("recolor", "change_kind", "background", "add", "remove", "style")
print("| editor | oracle_success | " + " | ".join(types) + " |")
for name in ("bundled", "lora", "full", "finetune"):
    rows = [json.loads(line) for line in (out / f"eval-{name}" / "summary.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r.get("method") == "ip2p")
    cells = [f"{100 * row[f'oracle_success/{t}']:.0f}%" if f"oracle_success/{t}" in row else "-" for t in types]
    print(f"| {name} | {100 * row['oracle_success']:.1f}% | " + " | ".join(cells) + " |")
EOF
echo "== done ($(stamp))"
