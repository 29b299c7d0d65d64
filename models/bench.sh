#!/usr/bin/env bash
# bench.sh: times sbpc's and PyTorch's training steps, no SBP and SBP, on the full-size models (make bench).
#
# For each model below: models/bench_torch.py with --sbpc, which runs PyTorch eager (no SBP,
# and the paper's SBP rules) and sbpc's two plans (`sbpc bench-child`) as four child
# processes stepped in turn, round after round, at the same batch, threads, keep ratio,
# counted runs and warm-up; then one Markdown table per model from models/bench_table.py. JSON and tables go to $OUT (default bench-results/).
# Settings: RUNS (21), WARMUP (1), THREADS (2), MODELS (the list below, "name:batch"),
# PRECISIONS ("fp32 bf16": each model also runs with PyTorch's autocast bf16 beside sbpc
# --precision bf16, its tables in $OUT/<model>.bf16.md). 21 counted
# steps per plan, because on a shared 2-vCPU machine a slow spell moves a median of 11 by the
# few percent that separate the SBP speed-ups from their targets (BENCHMARKS.md); about 15 minutes.
# Needs the PyTorch tools from models/requirements.txt; exports the models if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SBPC="${SBPC:-.build/release/sbpc}"
OUT="${OUT:-bench-results}"
RUNS="${RUNS:-21}"; WARMUP="${WARMUP:-1}"; THREADS="${THREADS:-2}"
MODELS="${MODELS:-vit_tiny_patch16_224:16 vit_tiny_avg_patch16_224:16 convnext_tiny:8}"
PRECISIONS="${PRECISIONS:-fp32 bf16}"
mkdir -p "$OUT"
for spec in $MODELS; do
  model="${spec%%:*}"; batch="${spec##*:}"
  onnx="models/full/${model}_ts17.onnx"
  [ -f "$onnx" ] || python3 models/export.py --full --only "$model"
  attention=qkv; case "$model" in convnext*) attention=none ;; esac
  for precision in $PRECISIONS; do
    stem="$model"; [ "$precision" = fp32 ] || stem="$model.$precision"
    echo "== $model, batch $batch, $THREADS threads, $precision" >&2
    python3 models/bench_torch.py --model "$model" --batch "$batch" --threads "$THREADS" --runs "$RUNS" \
      --warmup "$WARMUP" --keep 0.5 --attention "$attention" --precision "$precision" --json \
      --sbpc "$SBPC" --onnx "$onnx" --sbpc-json "$OUT/$stem.sbpc.json" > "$OUT/$stem.torch.json"
    python3 models/bench_table.py "$OUT/$stem.torch.json" "$OUT/$stem.sbpc.json" | tee "$OUT/$stem.md"
    echo
  done
done
