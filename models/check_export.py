# Checks `sbpc export`: onnxruntime's logits on the exported model against sbpc's eval of the same weights.
"""onnxruntime against sbpc on an exported, trained model.

    python3 models/check_export.py [--sbpc .build/release/sbpc] [--model models/vit_p4_d6_ts17.onnx]

Compiles MODEL (batch 8, SBP at keep 0.5), trains it one epoch on seeded random data with a
checkpoint, exports the trained weights with `sbpc export`, then compares, on a validation
set of 21 samples (a partial last batch), the logits of `sbpc eval --dump-logits` on the
exported model with onnxruntime's on the same file. Passes when the largest relative error
(max |a - b| / max |b|) is below 1e-4. Run it for a single-file export and for one with
external data (the dynamo export's folder). Exit status 0 when all pass.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort


def run(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"check_export.py: {' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def check(sbpc, model, d):
    rng = np.random.default_rng(0)
    sess = ort.InferenceSession(model)
    shape = [8] + [int(s) for s in sess.get_inputs()[0].shape[1:]]
    x = rng.standard_normal((40, *shape[1:])).astype(np.float32)
    vx = rng.standard_normal((21, *shape[1:])).astype(np.float32)
    y = rng.integers(0, 10, 40).astype(np.int64)
    vy = rng.integers(0, 10, 21).astype(np.int64)
    for name, a in (("x", x), ("y", y), ("vx", vx), ("vy", vy)):
        np.save(os.path.join(d, name + ".npy"), a)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    run(sbpc, "compile", model, "--batch", "8", "-o", p("train.plan"))
    run(sbpc, "train", p("train.plan"), "--input", p("x.npy"), "--labels", p("y.npy"), "--epochs", "1",
        "--checkpoint", p("ck"))
    run(sbpc, "export", p("train.plan"), "--weights", p("ck"), "-o", p("trained.onnx"))
    run(sbpc, "compile", p("trained.onnx"), "--batch", "8", "--keep", "1", "-o", p("eval.plan"))
    run(sbpc, "eval", p("eval.plan"), "--input", p("vx.npy"), "--labels", p("vy.npy"), "--dump-logits", p("logits.npy"))
    ours = np.load(p("logits.npy"))
    s = ort.InferenceSession(p("trained.onnx"))
    theirs = s.run(None, {s.get_inputs()[0].name: vx})[0]
    rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    data = os.path.exists(p("trained.onnx.data"))
    print(f"{model}: {len(vx)} samples, logits max relative error {rel:.2e}"
          f"{' (external data)' if data else ''} {'ok' if rel < 1e-4 else 'FAIL'}")
    return rel < 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbpc", default=".build/release/sbpc")
    ap.add_argument("--model", action="append")
    args = ap.parse_args()
    models = args.model or ["models/vit_p4_d6_ts17.onnx", "models/vit_p4_d6_dynamo/model.onnx",
                            "models/convnext_t1131_ts17.onnx"]
    ok = True
    for m in models:
        with tempfile.TemporaryDirectory() as d:
            ok &= check(args.sbpc, m, d)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
