#!/usr/bin/env bash
# InstructPix2Pix (timbrooks/instruct-pix2pix) on the standard benchmarks, for a machine with the hub and a GPU:
# MagicBrush single- and multi-turn (the released test set) and the Emu Edit test set. Not run by the tests.
#
# Published numbers to compare with (docs/benchmarks.md, "Standard benchmarks"):
#   MagicBrush paper, Table 2, InstructPix2Pix, single-turn: L1 0.1122, L2 0.0371, CLIP-I 0.8524, DINO 0.7428,
#   CLIP-T 0.2764. Emu Edit paper, Emu Edit test set, InstructPix2Pix: CLIPdir 0.078.
#
# Settings: those of MagicBrush's edit_cli_single_multi_turn.py (512 px, 100 Euler-ancestral steps, text guidance
# 7.5, image guidance 1.5, fp16 autocast); the Emu Edit paper does not state the ones it used for InstructPix2Pix,
# so the same are assumed. Metric models: CLIP ViT-B/32 and DINO ViT-S/16, as MagicBrush's image_eval.py.
#
# Usage: MB_TEST=/data/magicbrush/test scripts/reproduce_benchmarks.sh [OUT]
#   MB_TEST: MagicBrush's released test folder (edit_sessions.json, images/<img_id>/..., local_captions.json);
#   the hub's osunlp/MagicBrush holds only train and dev.
#   IP2P: the command (default ip2p); on several GPUs, e.g.
#   IP2P="accelerate launch --multi_gpu --num_processes 8 -m ip2p.cli" (the sessions are split over them).
set -euo pipefail

OUT=${1:-runs/benchmarks}
MB_TEST=${MB_TEST:?set MB_TEST to the released MagicBrush test folder: edit_sessions.json, images/, local_captions.json}
MODEL=${MODEL:-timbrooks/instruct-pix2pix}
read -r -a IP2P <<< "${IP2P:-ip2p}"
COMMON=(--model "$MODEL" --methods ip2p --text-guidance 7.5 --image-guidance 1.5 --steps 100
        --scheduler euler_ancestral --resolution 512 --dtype fp16 --seed 0
        --clip-model openai/clip-vit-base-patch32 --dino-model facebook/dino-vits16)

"${IP2P[@]}" evaluate --benchmark magicbrush --data "$MB_TEST" "${COMMON[@]}" -o "$OUT/magicbrush-single"
"${IP2P[@]}" evaluate --benchmark magicbrush-multi --data "$MB_TEST" "${COMMON[@]}" -o "$OUT/magicbrush-multi"
"${IP2P[@]}" evaluate --benchmark emu-edit --data facebook/emu_edit_test_set --split test "${COMMON[@]}" \
    -o "$OUT/emu-edit-test"
ip2p evaluate --compare "$OUT/magicbrush-single" "$OUT/magicbrush-multi" "$OUT/emu-edit-test"
