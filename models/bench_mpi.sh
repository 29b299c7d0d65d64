#!/usr/bin/env bash
# bench_mpi.sh: data-parallel scaling on this machine: 2 ranks × 1 thread against 1 rank × 1 thread (make bench-mpi).
#
# ViT-Tiny with SBP (keep 0.5) at batch 16 per rank, seeded synthetic data. The two runs
# alternate for ROUNDS rounds of STEPS steps; each step's time comes from rank 0's --log
# (images/s since the run began, at every step), the first step of each run is warm-up, and
# the table quotes medians over the rest. Throughput counts every rank's images. The
# 2-rank run also reports, with --profile, the share of its step spent waiting for
# gradient allreduces. Results go to $OUT/mpi.md (default bench-results/).
# Settings: ROUNDS (2), STEPS (11), BATCH (16), MODEL (vit_tiny_patch16_224). Needs mpirun
# (make deps) and the full-size export (exported here when missing; needs the PyTorch tools).
set -euo pipefail
cd "$(dirname "$0")/.."
SBPC="${SBPC:-.build/release/sbpc}"
OUT="${OUT:-bench-results}"; ROUNDS="${ROUNDS:-2}"; STEPS="${STEPS:-11}"; BATCH="${BATCH:-16}"
MODEL="${MODEL:-vit_tiny_patch16_224}"
onnx="models/full/${MODEL}_ts17.onnx"
[ -f "$onnx" ] || python3 models/export.py --full --only "$MODEL"
mkdir -p "$OUT"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$SBPC" compile "$onnx" --batch "$BATCH" --keep 0.5 -o "$work/one.plan" --quiet >/dev/null
"$SBPC" compile "$onnx" --batch "$BATCH" --keep 0.5 --distributed -o "$work/dp.plan" --quiet >/dev/null
for r in $(seq "$ROUNDS"); do
  "$SBPC" train "$work/one.plan" --steps "$STEPS" --threads 1 --log "$work/one.$r.jsonl" >/dev/null
  mpirun -np 2 --bind-to core "$SBPC" train "$work/dp.plan" --steps "$STEPS" --threads 1 --profile \
    --log "$work/dp.$r.jsonl" > "$work/dp.$r.out"
done
python3 - "$work" "$ROUNDS" "$BATCH" <<'PY' | tee "$OUT/mpi.md"
import json, re, statistics, sys
work, rounds, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def step_times(path, images):
    # images/s since the run began, at each step s: the run's time at s is s·images/rate.
    recs = [r for r in map(json.loads, open(path)) if r["kind"] == "step"]
    t = [r["step"] * images / r["images_per_s"] for r in recs]
    return [b - a for a, b in zip(t, t[1:])]
one = [x for r in range(1, rounds + 1) for x in step_times(f"{work}/one.{r}.jsonl", batch)]
two = [x for r in range(1, rounds + 1) for x in step_times(f"{work}/dp.{r}.jsonl", 2 * batch)]
waits = []
for r in range(1, rounds + 1):
    m = re.search(r"waited ([0-9.]+) ms per step", open(f"{work}/dp.{r}.out").read())
    waits.append(float(m.group(1)) / 1000)
m1, m2 = statistics.median(one), statistics.median(two)
print(f"| run | step (median) | images/s |")
print(f"|---|---|---|")
print(f"| 1 rank × 1 thread, batch {batch} | {1000*m1:.0f} ms | {batch/m1:.1f} |")
print(f"| 2 ranks × 1 thread, batch {batch} each | {1000*m2:.0f} ms | {2*batch/m2:.1f} |")
print()
print(f"throughput 2 ranks / 1 rank: {(2*batch/m2)/(batch/m1):.2f}x; allreduce wait {1000*statistics.median(waits):.1f} ms per step, "
      f"{100*statistics.median(waits)/m2:.1f}% of the 2-rank step ({rounds} rounds of {len(one)//rounds} timed steps each)")
PY
