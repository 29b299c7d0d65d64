#!/usr/bin/env bash
# bad-inputs.sh: regenerates README.md's bad-input table by running each case through sbpc.
#
# Each row of CASES is "what it is|sbpc arguments". The table records the one-line message
# (without "sbpc: error: ", with the checkout's absolute path shown as …) and the exit code.
# BadInputTableTests runs every row again on each `make test`, so the table cannot drift.
set -uo pipefail
cd "$(dirname "$0")/../.."
SBPC="${SBPC:-.build/debug/sbpc}"
root="$(pwd)/"
CASES=(
"ONNX: empty file|inspect Tests/Fixtures/bad/empty.onnx"
"ONNX: random bytes|inspect Tests/Fixtures/bad/random.onnx"
"ONNX: truncated file|inspect Tests/Fixtures/bad/truncated.onnx"
"ONNX: no graph|inspect Tests/Fixtures/no_graph.onnx"
"ONNX: opset outside 13-21|inspect Tests/Fixtures/opset_12.onnx"
"ONNX: unknown op|inspect Tests/Fixtures/unknown_op.onnx"
"ONNX: graph with a cycle|inspect Tests/Fixtures/cycle.onnx"
"ONNX: value nothing defines|inspect Tests/Fixtures/dangling_input.onnx"
"ONNX: symbolic dimension other than the batch|inspect Tests/Fixtures/symbolic_dim.onnx"
"ONNX: tensor bytes do not match its shape|inspect Tests/Fixtures/bad_size.onnx"
"ONNX: 2^40-element tensor|inspect Tests/Fixtures/huge_tensor.onnx"
"external data: file missing|inspect Tests/Fixtures/ext_missing/model.onnx"
"external data: absolute location|inspect Tests/Fixtures/ext_absolute/model.onnx"
"external data: location escapes with ..|inspect Tests/Fixtures/ext_escape/model.onnx"
"external data: symbolic link out of the folder|inspect Tests/Fixtures/ext_symlink/model.onnx"
"external data: offset + length past the end|inspect Tests/Fixtures/ext_past_end/model.onnx"
"text IR: malformed line|opt Tests/Fixtures/bad/bad-line.sbpir"
"text IR: declared type differs from the op's|opt Tests/Fixtures/bad/type-mismatch.sbpir"
"text IR: value used before it is defined|opt Tests/Fixtures/bad/undefined-value.sbpir"
"plan: not a plan|train Tests/Fixtures/bad/garbage.plan"
"plan: other format version|train Tests/Fixtures/bad/version.plan"
"plan: its model is missing|train Tests/Fixtures/bad/missing-model.plan"
"plan: edited after compile (checksum)|train Tests/Fixtures/bad/edited.plan"
"plan: corrupt graph|train Tests/Fixtures/bad/bad-op.plan"
"plan: needs more than --max-memory|train Fuzz/corpus/plan/linear-sgd.plan --max-memory 64"
".npy: not a .npy file|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad/not-npy.npy --labels Tests/Fixtures/bad/labels.npy"
".npy: wrong dtype|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad/f64-images.npy --labels Tests/Fixtures/bad/labels.npy"
".npy: wrong shape|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad/wrong-shape.npy --labels Tests/Fixtures/bad/labels.npy"
".npy: label out of range|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad/images.npy --labels Tests/Fixtures/bad/labels-range.npy"
"flag: --epochs without a data set|train Fuzz/corpus/plan/linear-sgd.plan --epochs 2"
".npy: validation set of the wrong shape|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad/images.npy --labels Tests/Fixtures/bad/labels.npy --epochs 1 --val Tests/Fixtures/bad/wrong-shape.npy Tests/Fixtures/bad/labels.npy"
".npy: folder without .x.npy/.y.npy pairs|train Fuzz/corpus/plan/linear-sgd.plan --input Tests/Fixtures/bad --epochs 1"
"flag: unknown --lr-schedule|train Fuzz/corpus/plan/linear-sgd.plan --lr-schedule linear"
"plan: clipping needs an unfused plan|train Tests/Fixtures/sbp-vit.plan --clip-grad-norm 1"
"flag: --bucket-mb without --distributed|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --bucket-mb 4"
"flag: --bucket-mb out of range|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --distributed --bucket-mb 0"
"flag: unknown --precision|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --precision fp16"
"flag: unknown --distributed|train Fuzz/corpus/plan/linear-sgd.plan --distributed yes"
"flag: --sync-bn without mpirun|train Fuzz/corpus/plan/linear-sgd.plan --sync-bn"
"checkpoint: none in the --resume folder|train Fuzz/corpus/plan/linear-sgd.plan --resume Tests/Fixtures/bad"
"images: empty class folder|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/empty-class"
"images: no images in the folder|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/no-images"
"images: symbolic link out of the folder|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/escape"
"images: a shard that is not a tar|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/not-a-tar.tar"
"images: a .cls label outside the head|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/label-12.tar"
"images: data set missing|eval Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/bad/images/nowhere"
"flag: unknown --on-bad-image|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/images/jpeg --on-bad-image ignore"
"flag: --mixup on a plan without soft targets|train Tests/Fixtures/sbp-vit.plan --data Tests/Fixtures/images/jpeg --mixup 0.8"
"flag: --num-classes below 2|compile models/vit_p4_d6_ts17.onnx -o /dev/null --num-classes 1"
"flag: --freeze that matches nothing|compile models/vit_p4_d6_ts17.onnx -o /dev/null --freeze nosuch.layer"
"flag: --batch out of range|inspect models/vit_p4_d6_ts17.onnx --batch 0"
"flag: --dim not NAME=N|inspect models/vit_p4_d6_ts17.onnx --dim oops"
"flag: --blocks out of range|inspect models/vit_p4_d6_ts17.onnx --blocks 2-6"
"flag: --blocks malformed|inspect models/vit_p4_d6_ts17.onnx --blocks stage:0[1"
"flag: unknown pass|opt Tests/Fixtures/ok_linear.onnx --passes canonicalize,nosuch"
"flag: bench --runs out of range|bench Tests/Fixtures/ok_linear.onnx --runs 0"
"flag: bench --plans unknown|bench Tests/Fixtures/ok_linear.onnx --plans all"
"flag: --keep out of range|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --keep 0"
"flag: --keep above 1|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --keep 1.5"
"flag: --keep keeps less than one patch|compile models/vit_p4_d6_ts17.onnx -o /dev/null --keep 1e-9"
"flag: --keep too small for a grid mask|compile models/vit_p4_d6_ts17.onnx -o /dev/null --keep 0.02"
"flag: unknown --mask|compile models/vit_p4_d6_ts17.onnx -o /dev/null --mask stripes"
"flag: unknown --attention|compile models/vit_p4_d6_ts17.onnx -o /dev/null --attention key"
"flag: SBP --blocks out of range|compile models/vit_p4_d6_ts17.onnx -o /dev/null --blocks 7"
"flag: --mask-phase out of range|train Tests/Fixtures/sbp-vit.plan --steps 1 --mask-phase 2"
"flag: --mask-phase on a plan without SBP|train Fuzz/corpus/plan/linear-sgd.plan --mask-phase 0"
"mask: not 2-D over the base grid|train Tests/Fixtures/sbp-vit.plan --steps 1 --mask-file Tests/Fixtures/bad/mask-shape.npy"
"mask: keeps more than the plan holds|train Tests/Fixtures/sbp-vit.plan --steps 1 --mask-file Tests/Fixtures/bad/mask-too-many.npy"
"mask: wrong dtype|train Tests/Fixtures/sbp-vit.plan --steps 1 --mask-file Tests/Fixtures/bad/mask-f32.npy"
"flag: compile --max-memory too small|compile models/vit_p4_d6_ts17.onnx -o /dev/null --batch 8 --max-memory 2M"
"flag: memory --dtype unknown|memory models/vit_p4_d6_ts17.onnx --dtype int8"
"flag: unknown optimizer|compile Tests/Fixtures/ok_linear.onnx -o /dev/null --optimizer lbfgs"
"flag: --steps below 1|train Fuzz/corpus/plan/linear-sgd.plan --steps 0"
"flag: --max-memory not a size|train Fuzz/corpus/plan/linear-sgd.plan --max-memory lots"
"flag: not a number|inspect models/vit_p4_d6_ts17.onnx --batch abc"
)
table="$(mktemp)"
{
  echo "<!-- bad-inputs:begin: generated by Tests/golden/bad-inputs.sh, checked by BadInputTableTests -->"
  echo "| input | command | message (after \`sbpc: error: \`) | exit |"
  echo "| --- | --- | --- | --- |"
  for c in "${CASES[@]}"; do
    what="${c%%|*}"; args="${c#*|}"
    # shellcheck disable=SC2086
    msg="$("$SBPC" $args 2>&1 >/dev/null)"; code=$?
    msg="${msg#sbpc: error: }"; msg="${msg//$root/…}"
    echo "| $what | \`sbpc $args\` | \`$msg\` | $code |"
  done
  echo "<!-- bad-inputs:end -->"
} > "$table"
python3 - "$table" <<'PY'
import re, sys
table = open(sys.argv[1]).read()
readme = open("README.md").read()
new = re.sub(r"<!-- bad-inputs:begin.*?<!-- bad-inputs:end -->\n", lambda m: table, readme, flags=re.S)
open("README.md", "w").write(new)
PY
echo "README.md: bad-input table regenerated (${#CASES[@]} cases)"
