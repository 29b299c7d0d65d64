#!/usr/bin/env bash
# check_families.sh: one sbpc training step of each timm family against PyTorch's float64 train-mode step (part of make check-torch).
#
#   models/check_families.sh            # full size: models/full/families (exported first if missing),
#                                       # plain step and SBP step (models/sbp_hook_check.py --full)
#   models/check_families.sh --tiny     # the committed tiny versions in models/families
#   models/check_families.sh --opsets   # the tiny versions exported at TorchScript opsets 13-16
#                                       # and 18-20 and dynamo 18, 20, 21, against the same references
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
# One step of FILE, compiled at the family's batch, against the family's reference STEM.
step() {
  local d="$1" stem="$2" file="$3" dump="$4" batch
  batch="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['batch'])" "$d/manifest.json")"
  mkdir -p "$dump"
  if ! "$SBPC" compile "$file" --batch "$batch" --keep 1 --quiet -o "$dump/model.plan" > /dev/null 2> "$dump/err" ||
    ! "$SBPC" train "$dump/model.plan" --steps 1 --input "$d/input.npy" --labels "$d/labels.npy" \
      --dump-loss --dump-logits "$dump/logits.npy" --dump-grads "$dump/grads" > "$dump/loss.txt" 2>> "$dump/err"; then
    echo "FAIL $(basename "$d") ($(basename "$file")): $(tail -1 "$dump/err")"
    return 1
  fi
  python3 -c "import numpy as np, sys; np.save(sys.argv[2], np.array([float(open(sys.argv[1]).read().split()[0])], dtype=np.float32))" \
    "$dump/loss.txt" "$dump/loss.npy"
  local st=0
  python3 models/compare_family.py "$d" "$stem" "$dump" > "$dump/compare.txt" || st=1
  grep -m 5 '^FAIL' "$dump/compare.txt" || true
  tail -1 "$dump/compare.txt"
  return $st
}
if [ "${1:-}" = --opsets ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  python3 models/families.py --sweep "$out/onnx" > /dev/null
  status=0; n=0
  for f in "$out"/onnx/*.onnx; do
    b="$(basename "$f" .onnx)"; fam="${b%__*}"; v="${b##*__}"; stem=ts17
    if [[ $v == dy* ]] && [ -d "models/families/$fam/dynamo" ]; then stem=dynamo; fi
    step "models/families/$fam" "$stem" "$f" "$out/$b" > "$out/$b.txt" || { status=1; cat "$out/$b.txt"; }
    n=$((n + 1))
  done
  echo "$n exports checked"
  exit $status
fi
if [ "$root" = models/full/families ]; then
  # Export whichever full-size families are missing (a partial folder checks them all).
  missing="$(python3 -c "import os, sys; sys.path.insert(0, 'models'); import families
print(' '.join(f'--only {n}' for n in families.FULL if not os.path.exists(f'models/full/families/{n}/manifest.json')))")"
  if [ -n "$missing" ]; then python3 models/families.py --full $missing; fi
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for d in "$root"/*/; do
  d="${d%/}"
  fam="$(basename "$d")"
  for stem in $(python3 -c "import json,sys; print(' '.join(sorted(json.load(open(sys.argv[1]))['exports'])))" "$d/manifest.json"); do
    file="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['exports'][sys.argv[2]]['file'])" "$d/manifest.json" "$stem")"
    step "$d" "$stem" "$d/$file" "$out/$fam-$stem" || status=1
  done
done
# The SBP step of every full-size family against the hook oracle (the references are computed
# on the spot; float32 against float64 misses max-rel where the plain step does: resnet50).
if [ "$root" = models/full/families ]; then
  for d in "$root"/*/; do
    fam="$(basename "$d")"
    python3 models/sbp_hook_check.py "$fam" --full --sbpc "$SBPC" 2> /dev/null | tail -1 | sed 's/^/SBP: /' || status=1
  done
fi
# The SBP step of the tiny families whose default SBP splits token-wise branches, against the
# architecture-independent hook oracle (models/sbp_hook_check.py; CI holds sbpc to the
# gradients it committed in <family>/ts17/sbp_p0/).
if [ "$root" = models/families ]; then
  for d in "$root"/*/; do
    fam="$(basename "$d")"
    [ -d "$d/ts17/sbp_p0" ] || continue
    python3 models/sbp_hook_check.py "$fam" --sbpc "$SBPC" 2> /dev/null | tail -1 | sed 's/^/SBP: /' || status=1
    # The forward-exact attention split too, where the family has an attention core.
    python3 models/sbp_hook_check.py "$fam" --sbpc "$SBPC" --attention query 2> /dev/null | tail -1 | sed 's/^/SBP query: /' || status=1
    # The explicit Algorithm 1 per node, for information: it differs by design on parameters
    # after a split's last linear (models/README.md), so its misses do not fail the run.
    python3 models/sbp_hook_check.py "$fam" --sbpc "$SBPC" --algorithm1 2> /dev/null | tail -1 | sed 's/^/SBP algorithm1 (per node): /' || true
  done
fi
exit $status
