#!/usr/bin/env bash
# check_families.sh: one sbpc training step of each timm family against PyTorch's float64 train-mode step (part of make check-torch).
#
#   models/check_families.sh            # full size: models/full/families (exported first if missing)
#   models/check_families.sh --tiny     # the committed tiny versions in models/families
#
# For each family and export (ts17; dynamo where models/families.py makes one): compile at the
# reference batch with --keep 1, run one step on the reference input and labels, dump logits,
# loss and gradients, and compare with models/compare_family.py (logits rel < 1e-4, loss
# < 1e-5, every gradient cosine > 0.9999 and max-rel < 1e-3, and sbpc trains exactly the
# initializers PyTorch trains). Needs the PyTorch tools of models/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SBPC="${SBPC:-.build/release/sbpc}"
root=models/full/families
if [ "${1:-}" = --tiny ]; then root=models/families; fi
if [ "$root" = models/full/families ] && [ ! -f "$root/resnet50/manifest.json" ]; then python3 models/families.py --full; fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for d in "$root"/*/; do
  d="${d%/}"
  fam="$(basename "$d")"
  batch="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['batch'])" "$d/manifest.json")"
  for stem in $(python3 -c "import json,sys; print(' '.join(sorted(json.load(open(sys.argv[1]))['exports'])))" "$d/manifest.json"); do
    file="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['exports'][sys.argv[2]]['file'])" "$d/manifest.json" "$stem")"
    dump="$out/$fam-$stem"
    mkdir -p "$dump"
    if ! "$SBPC" compile "$d/$file" --batch "$batch" --keep 1 --quiet -o "$dump/model.plan" > /dev/null 2> "$dump/err" ||
      ! "$SBPC" train "$dump/model.plan" --steps 1 --input "$d/input.npy" --labels "$d/labels.npy" \
        --dump-loss --dump-logits "$dump/logits.npy" --dump-grads "$dump/grads" > "$dump/loss.txt" 2>> "$dump/err"; then
      echo "FAIL $fam ($stem): $(tail -1 "$dump/err")"
      status=1
      continue
    fi
    python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.array([float(open(sys.argv[1]).read().split()[0])], dtype=np.float32))" \
      "$dump/loss.txt" "$dump/loss.npy"
    python3 models/compare_family.py "$d" "$stem" "$dump" || status=1
  done
done
exit $status
