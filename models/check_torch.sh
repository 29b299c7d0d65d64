#!/usr/bin/env bash
# check_torch.sh: compares sbpc's training step with PyTorch on the full-size models (make check-torch).
#
# For ViT-Tiny/16 at batch 4 and ConvNeXt-Tiny at batch 2, from both exporters: compile, run one
# step on the reference input and labels, dump logits, loss and gradients, and compare them with
# models/reference.py's PyTorch results (models/compare.py: logits rel < 1e-4, loss < 1e-5,
# every gradient cosine > 0.9999 and max relative error < 1e-3). Needs the PyTorch tools from
# models/requirements.txt; it exports the models and references first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SBPC="${SBPC:-.build/release/sbpc}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
[ -f models/full/vit_tiny_patch16_224_ts17.onnx ] && [ -f models/full/convnext_tiny_dynamo/model.onnx ] || python3 models/export.py --full
[ -f models/full/reference/vit_tiny_patch16_224/loss.npy ] && [ -f models/full/reference/convnext_tiny/loss.npy ] || python3 models/reference.py --full
status=0
for spec in vit_tiny_patch16_224:4 convnext_tiny:2; do
  model="${spec%%:*}"; batch="${spec##*:}"
  ref="models/full/reference/$model"
  for stem in ts17 dynamo; do
    onnx="models/full/${model}_ts17.onnx"
    [ "$stem" = dynamo ] && onnx="models/full/${model}_dynamo/model.onnx"
    dump="$out/${model}_$stem"
    mkdir -p "$dump"
    echo "== $model ($stem), batch $batch"
    "$SBPC" compile "$onnx" --batch "$batch" -o "$dump/model.plan" > /dev/null
    "$SBPC" train "$dump/model.plan" --steps 1 --input "$ref/input.npy" --labels "$ref/labels.npy" \
      --dump-loss --dump-logits "$dump/logits.npy" --dump-grads "$dump/grads" > "$dump/loss.txt"
    python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.array([float(open(sys.argv[1]).read().split()[0])], dtype=np.float32))" \
      "$dump/loss.txt" "$dump/loss.npy"
    python3 models/compare.py "$ref" "$stem" "$dump" | tail -3 || status=1
  done
done
exit $status
