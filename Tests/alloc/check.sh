#!/usr/bin/env bash
# check.sh: counts heap allocations per training step (make check-allocs).
#
# Runs `sbpc train` for 1 and 21 steps under an LD_PRELOAD malloc counter, single-threaded
# (OpenBLAS's thread server allocates its own job records per threaded call), and prints the
# allocations per step. The loop prints one loss line per step, which costs about 2; the
# executor's step itself must add none. OpenBLAS's own mallocs (its SkylakeX small-matrix
# kernels take one per call) are counted apart and shown, not held against the step.
set -euo pipefail
cd "$(dirname "$0")/../.."
SBPC="${SBPC:-.build/release/sbpc}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -shared -fPIC -O2 -o "$tmp/count.so" Tests/alloc/count_malloc.c -ldl
status=0
# Besides the ViT and ConvNeXt: the ViT with bf16 products, BatchNorm, pooling and ReLU (the
# BN CNN), the clip and hard activations, and padding.
for spec in "models/vit_p4_d6_ts17.onnx --keep 1" "models/vit_p4_d6_ts17.onnx" "models/vit_p4_d6_ts17.onnx --mask random" \
  "models/vit_p4_d6_ts17.onnx --precision bf16" \
  "models/convnext_t1131_ts17.onnx" "models/reference_bn/cnn_bn.onnx" "Tests/Fixtures/ok_activations.onnx" "Tests/Fixtures/ok_pad.onnx"; do
  # shellcheck disable=SC2086
  "$SBPC" compile $spec --batch 2 -o "$tmp/p.plan" > /dev/null
  count() { LD_PRELOAD="$tmp/count.so" "$SBPC" train "$tmp/p.plan" --steps "$1" --dump-loss --threads 1 2>&1 >/dev/null | sed -n "s/^$2mallocs //p"; }
  a="$(count 1 "")"; b="$(count 21 "")"
  per=$(( (b - a) / 20 ))
  blas=$(( ($(count 21 "openblas ") - $(count 1 "openblas ")) / 20 ))
  echo "$spec: $per allocations per step (1 step: $a, 21 steps: $b); OpenBLAS: $blas per step"
  [ "$per" -le 2 ] || status=1
done
# The image loader: after warm-up, a batch read from JPEG or PNG files or from a shard
# allocates nothing in sbpc (decoders, resamplers and byte buffers are reused);
# libjpeg-turbo's and libpng's per-image decoder state is counted apart, like OpenBLAS's.
# 128 images, 32 steps of 4 per epoch: both counts (3 and 23 steps, and the loader's
# prefetch) stay in the first epoch, so the difference is per batch alone; what an epoch
# costs (its order, reopening the shard: a few allocations per thousands of images in real
# data) is not in it.
mkdir -p "$tmp/jpeg/a" "$tmp/jpeg/b" "$tmp/png/a" "$tmp/png/b" "$tmp/wds"
for i in $(seq -w 0 63); do
  for c in a b; do
    cp Tests/Fixtures/images/jpeg/train/0/0000.jpg "$tmp/jpeg/$c/$i.jpg"
    cp Tests/Fixtures/images/png/train/1/0001.png "$tmp/png/$c/$i.png"
    cp Tests/Fixtures/images/jpeg/train/2/0002.jpg "$tmp/wds/$c$i.jpg"
    [ $c = a ] && echo 0 > "$tmp/wds/$c$i.cls" || echo 1 > "$tmp/wds/$c$i.cls"
  done
done
(cd "$tmp/wds" && tar --format=ustar -cf ../shard.tar $(ls | sort))
"$SBPC" compile models/vit_p4_d6_ts17.onnx --batch 4 --num-classes 3 -o "$tmp/img.plan" > /dev/null 2>&1
for data in "$tmp/jpeg" "$tmp/png" "$tmp/shard.tar"; do
  count() { LD_PRELOAD="$tmp/count.so" "$SBPC" train "$tmp/img.plan" --data "$data" --shuffle --steps "$1" --dump-loss --threads 1 --workers 1 2>&1 >/dev/null | sed -n "s/^$2mallocs //p"; }
  a="$(count 3 "")"; b="$(count 23 "")"
  per=$(( (b - a) / 20 ))
  lib=$(( ($(count 23 "codec ") - $(count 3 "codec ")) / 20 ))
  echo "--data ${data#"$tmp/"}: $per allocations per step with the loader (3 steps: $a, 23 steps: $b); image libraries: $lib per step"
  [ "$per" -le 2 ] || status=1
done
exit $status
