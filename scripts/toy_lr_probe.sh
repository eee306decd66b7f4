#!/usr/bin/env bash
# The learning-rate probe behind the bundled editor's recipe (docs/results.md): four variants of
# scripts/toy_editor.sh's recipe trained side by side, each for at most MINUTES, then judged by the oracle on
# 300 held-out edits at text guidance 3 and 5. Meant for one GPU: docs/results.md's run (one H200,
# MINUTES=6.5) stopped every variant at 4,000 to 4,300 of its 8,800 steps. On this CPU give each variant its
# own run of scripts/toy_editor.sh instead. The probe predates the timestep bias of the recipe, so it draws
# timesteps uniformly, as it did.
#
#   DATA=runs/toy-dataset/pairs/data scripts/toy_lr_probe.sh      # -> runs/toy-lr-probe/{variant}/eval/summary.csv
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-runs/toy-dataset/pairs/data}
ROOT=${ROOT:-runs/toy-lr-probe}
MINUTES=${MINUTES:-6.5}
EVAL_ITEMS=${EVAL_ITEMS:-300}
PY=${PY:-.venv/bin/python}
[[ -e "$DATA" ]] || { echo "$DATA: no such dataset (make one with scripts/toy_dataset.sh)" >&2; exit 2; }
mkdir -p "$ROOT"
variant() {  # name, flags after the recipe's (the last value of a flag wins)
  OUT="$ROOT/$1" DATA="$DATA" MINUTES="$MINUTES" EVAL_ITEMS="$EVAL_ITEMS" TEXT_GUIDANCE=3,5 \
    TRAIN_FLAGS="$2 --timestep-bias none --validation-steps 0 --num-validation-examples 0 --checkpointing-steps 100000" \
    scripts/toy_editor.sh > "$ROOT/$1.log" 2>&1 || { echo "$1 failed: see $ROOT/$1.log" >&2; return 1; }
}
variant constant-5e-4 "--learning-rate 5e-4 --lr-schedule constant" &
variant cosine-5e-4 "--learning-rate 5e-4" &
variant cosine-1e-3 "" &
variant cosine-2e-3 "--learning-rate 2e-3" &
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
for name in constant-5e-4 cosine-5e-4 cosine-1e-3 cosine-2e-3; do
  echo "== $name, last logged step: $(tail -n 1 "$ROOT/$name/metrics.jsonl" 2>/dev/null)"
  $PY -c 'import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print("   text %s, image %s: success %.1f%%" % (r["text_guidance_scale"], r["image_guidance_scale"], 100 * float(r["oracle_success"])))' \
    "$ROOT/$name/eval/summary.csv" 2>/dev/null || echo "   no evaluation"
done
exit $status
