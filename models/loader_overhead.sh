#!/usr/bin/env bash
# loader_overhead.sh: does the image loader slow training? ViT-Tiny with SBP, batch 16, 2 threads, from JPEGs against the same images preloaded as .npy, interleaved.
# Usage: models/loader_overhead.sh [ROUNDS (3)] [STEPS (30)]
# Needs models/full/vit_tiny_patch16_224_ts17.onnx (python3 models/export.py --full --only vit_tiny_patch16_224)
# and writes its data (320 generated 500x375 JPEGs, models/image_data.py imagenet-like) under $OUT.
set -euo pipefail
SBPC=${SBPC:-.build/release/sbpc}
OUT=${OUT:-.build/loader-overhead}
ROUNDS=${1:-3}
STEPS=${2:-30}
mkdir -p "$OUT"
[ -d "$OUT/images" ] || python3 models/image_data.py imagenet-like "$OUT/images" --count 320 --classes 4
"$SBPC" compile models/full/vit_tiny_patch16_224_ts17.onnx --batch 16 -o "$OUT/vit.plan" > /dev/null
# The .npy side holds exactly what the loader's train transform makes of the same files
# (epoch 0's draws), so both runs step on images of the same size from the same source.
[ -f "$OUT/images.npy" ] || "$SBPC" data "$OUT/images" --transform train --size 224 --dump 320 "$OUT/images.npy" > /dev/null
ms() { sed -n 's/.*(\([0-9.]*\) ms\/step.*/\1/p'; }
ratios=()
for r in $(seq "$ROUNDS"); do
  jpeg=$("$SBPC" train "$OUT/vit.plan" --data "$OUT/images" --shuffle --steps "$STEPS" --threads 2 --profile)
  npy=$("$SBPC" train "$OUT/vit.plan" --input "$OUT/images.npy" --labels "$OUT/images.labels.npy" --shuffle --steps "$STEPS" --threads 2)
  a=$(echo "$jpeg" | ms); b=$(echo "$npy" | ms)
  wait_ms=$(echo "$jpeg" | sed -n 's/data: the step waited \([0-9.]*\) ms.*/\1/p')
  ratio=$(python3 -c "print(f'{$a/$b:.3f}')")
  ratios+=("$ratio")
  echo "round $r: JPEG folder $a ms/step (waited $wait_ms ms/step for data), preloaded .npy $b ms/step, ratio $ratio"
done
echo "median ratio JPEG / .npy over $ROUNDS rounds: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}') (bar: 1.05)"
