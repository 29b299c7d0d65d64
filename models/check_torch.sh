#!/usr/bin/env bash
# check_torch.sh: compares sbpc's training step with PyTorch on the full-size models (make check-torch).
#
# For ViT-Tiny/16 (class token and average-pool head) at batch 4 and ConvNeXt-Tiny at batch 2,
# from both exporters: compile, run one step on the reference input and labels, dump logits,
# loss and gradients, and compare them with models/reference.py's PyTorch results
# (models/compare.py: logits rel < 1e-4, loss < 1e-5, every gradient cosine > 0.9999 and max
# relative error < 1e-3). Then the same with SBP at keep 0.5 and the default blocks (qkv for the
# ViTs), fed the reference's mask with --mask-file, against reference.py --sbp --full. Needs the
# PyTorch tools from models/requirements.txt; it exports the models and references first if
# they are missing. Last, models/check_families.sh runs the nineteen timm families at full size.
set -euo pipefail
cd "$(dirname "$0")/.."
SBPC="${SBPC:-.build/release/sbpc}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
models=(vit_tiny_patch16_224:4:qkv_grid0.5_p0 vit_tiny_avg_patch16_224:4:qkv_grid0.5_p0 convnext_tiny:2:none_grid0.5_p0)
for spec in "${models[@]}"; do
  model="${spec%%:*}"; cfg="${spec##*:}"
  [ -f "models/full/${model}_ts17.onnx" ] && [ -f "models/full/${model}_dynamo/model.onnx" ] || python3 models/export.py --full --only "$model"
  [ -f "models/full/reference/$model/loss.npy" ] || python3 models/reference.py --full --only "$model"
  [ -f "models/full/reference/$model/sbp/$cfg/loss.npy" ] || python3 models/reference.py --full --sbp --only "$model" --config "$cfg"
done
# One step: compile with the given flags, train on the reference batch, compare with REF.
check() {
  local onnx="$1" batch="$2" ref="$3" stem="$4" dump="$5"; shift 5
  mkdir -p "$dump"
  local mask=()
  [ -f "$ref/mask.npy" ] && mask=(--mask-file "$ref/mask.npy")
  "$SBPC" compile "$onnx" --batch "$batch" "$@" -o "$dump/model.plan" > /dev/null
  "$SBPC" train "$dump/model.plan" --steps 1 --input "$input" --labels "$ref/labels.npy" "${mask[@]}" \
    --dump-loss --dump-logits "$dump/logits.npy" --dump-grads "$dump/grads" > "$dump/loss.txt"
  python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.array([float(open(sys.argv[1]).read().split()[0])], dtype=np.float32))" \
    "$dump/loss.txt" "$dump/loss.npy"
  python3 models/compare.py "$ref" "$stem" "$dump" | tail -3
}
status=0
for spec in "${models[@]}"; do
  spec="${spec%:*}"
  model="${spec%%:*}"; batch="${spec##*:}"
  ref="models/full/reference/$model"
  for stem in ts17 dynamo; do
    onnx="models/full/${model}_ts17.onnx"
    [ "$stem" = dynamo ] && onnx="models/full/${model}_dynamo/model.onnx"
    input="$ref/input.npy"
    echo "== $model ($stem), batch $batch, no SBP"
    check "$onnx" "$batch" "$ref" "$stem" "$out/${model}_$stem" --keep 1 || status=1
    for cfgdir in "$ref"/sbp/*/; do
      cfg="$(basename "$cfgdir")"
      att="${cfg%%_*}"; rest="${cfg#*_}"; mode="${rest%%[0-9]*}"; keep="${rest#$mode}"; keep="${keep%%_*}"
      echo "== $model ($stem), batch $batch, SBP $cfg"
      check "$onnx" "$batch" "$ref/sbp/$cfg" "$stem" "$out/${model}_${stem}_$cfg" --keep "$keep" --mask "$mode" --attention "$att" || status=1
    done
  done
done
# The timm families (models/families.py): one step of each, full size, against PyTorch's
# float64 train-mode step.
echo "== timm families, full size (models/check_families.sh)"
models/check_families.sh || status=1
exit $status
