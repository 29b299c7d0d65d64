# Compares sbpc's training-step dumps (logits, loss, ONNX-layout gradients) against a models/reference.py reference folder.
"""Usage: python3 models/compare.py REF_DIR EXPORT_STEM SBPC_DUMP_DIR

REF_DIR is a folder written by models/reference.py (models/reference/<name> or
models/full/reference/<name>); EXPORT_STEM names the ONNX export sbpc ran (ts17,
ts14, dynamo), which selects REF_DIR/<stem>.params.json.  SBPC_DUMP_DIR holds:

    logits.npy                      float32 [B, classes]
    loss.npy                        float32 [1]
    grads/<initializer>.npy         float32, in the ONNX initializer's layout; '/' in
                                    the initializer name is replaced by '_'

Each gradient is brought to PyTorch's layout with the params.json entry (reshape
to the transposed or plain PyTorch shape, then transpose back) and checked:

    logits   max|a-b| / max|b| < 1e-4
    loss     |a-b| < 1e-5
    grads    cosine(a, b) > 0.9999 and max|a-b| / max|b| < 1e-3

(a = sbpc, b = reference).  Prints one line per failing tensor and a summary
"N passed, M failed"; exits 1 if anything failed or is missing.
"""

import argparse
import json
import os
import sys

import numpy as np

LOGITS_REL = 1e-4
LOSS_ABS = 1e-5
GRAD_COS = 0.9999
GRAD_REL = 1e-3


def rel_err(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = float(np.abs(a - b).max()) if a.size else 0.0
    m = float(np.abs(b).max()) if b.size else 0.0
    if m == 0.0:
        return 0.0 if d == 0.0 else float("inf")
    return d / m


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def to_torch_layout(a, entry, torch_shape):
    """Inverse of reference.py's map: onnx = reshape(param.T if transpose else param)."""
    if entry["transpose"]:
        return a.reshape(torch_shape[::-1]).T
    return a.reshape(torch_shape)


def load(path, failures):
    if not os.path.isfile(path):
        failures.append(f"missing {path}")
        return None
    return np.load(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Compare sbpc's logits, loss and gradients with a "
                                 "models/reference.py folder.",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref_dir", metavar="REF_DIR")
    ap.add_argument("stem", metavar="EXPORT_STEM")
    ap.add_argument("dump_dir", metavar="SBPC_DUMP_DIR")
    args = ap.parse_args(argv)

    mpath = os.path.join(args.ref_dir, f"{args.stem}.params.json")
    if not os.path.exists(mpath):
        # SBP references (<model>/sbp/<config>/) share their model's parameter maps.
        parent = os.path.join(args.ref_dir, os.pardir, os.pardir, f"{args.stem}.params.json")
        if os.path.exists(parent):
            mpath = parent
    if not os.path.isfile(mpath):
        ap.error(f"no {mpath}")
    with open(mpath) as f:
        mapping = json.load(f)

    passed, failures = 0, []

    def result(ok, line):
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(line)

    ref_logits = np.load(os.path.join(args.ref_dir, "logits.npy"))
    got = load(os.path.join(args.dump_dir, "logits.npy"), failures)
    if got is not None:
        if got.shape != ref_logits.shape:
            result(False, f"logits: shape {list(got.shape)}, expected {list(ref_logits.shape)}")
        else:
            r = rel_err(got, ref_logits)
            result(r < LOGITS_REL, f"logits: rel err {r:.3e} (limit {LOGITS_REL:g})")

    ref_loss = np.load(os.path.join(args.ref_dir, "loss.npy")).astype(np.float64)
    got = load(os.path.join(args.dump_dir, "loss.npy"), failures)
    if got is not None:
        if got.size != 1:
            result(False, f"loss: {got.size} elements, expected 1")
        else:
            d = abs(float(got.ravel()[0]) - float(ref_loss.ravel()[0]))
            result(d < LOSS_ABS, f"loss: |diff| {d:.3e} (limit {LOSS_ABS:g}), "
                   f"sbpc {float(got.ravel()[0]):.7g}, ref {float(ref_loss.ravel()[0]):.7g}")

    for init, entry in mapping.items():
        ref = np.load(os.path.join(args.ref_dir, "grads", entry["param"] + ".npy"))
        got = load(os.path.join(args.dump_dir, "grads", init.replace("/", "_") + ".npy"), failures)
        if got is None:
            continue
        tag = f"grad {init}" + (f" ({entry['param']})" if init != entry["param"] else "")
        want = entry["reshape"] or list(ref.shape[::-1] if entry["transpose"] else ref.shape)
        if list(got.shape) != list(want):
            result(False, f"{tag}: shape {list(got.shape)}, expected {list(want)}")
            continue
        a = to_torch_layout(got, entry, ref.shape)
        c, r = cosine(a, ref), rel_err(a, ref)
        result(c > GRAD_COS and r < GRAD_REL,
               f"{tag}: cosine {c:.7f} (min {GRAD_COS:g}), rel err {r:.3e} (limit {GRAD_REL:g})")

    for line in failures:
        print("FAIL " + line)
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
