# compare_family.py: checks sbpc's one-step dumps against a models/families.py reference folder (logits, loss, every gradient, both directions).
"""Usage: python3 models/compare_family.py REF_DIR EXPORT_STEM SBPC_DUMP_DIR

REF_DIR is models/families/<name> or models/full/families/<name>; EXPORT_STEM is ts17
or dynamo.  SBPC_DUMP_DIR holds sbpc train's --dump-logits logits.npy, loss.npy (the
--dump-loss value) and --dump-grads grads/.  The bars are make check-torch's:

    logits   max|a-b| / max|b| < 1e-4
    loss     |a-b| < 1e-5
    grads    cosine > 0.9999 and max|a-b| / max|b| < 1e-3

A gradient that is zero in PyTorch up to rounding (a bias right before a train-mode
BatchNorm) must stay at rounding level against the step's largest gradient instead.
Every initializer the reference trains must have a gradient from sbpc and sbpc must
train nothing else: a parameter that silently gets no gradient is a failure.

Full-size references (models/families.py --full) also hold PyTorch's own float32 step
(<stem>/grads_torch32/); the summary line then says on how many gradients it misses the
same bars against float64, a control for what float32 can reach on that model.
"""
import json
import os
import sys

import numpy as np

LOGITS_REL, LOSS_ABS, GRAD_COS, GRAD_REL, ZERO = 1e-4, 1e-5, 0.9999, 1e-3, 1e-6


def rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    m = float(np.abs(b).max()) if b.size else 0.0
    d = float(np.abs(a - b).max()) if a.size else 0.0
    return d / m if m else (0.0 if d == 0 else float("inf"))


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na and nb else (1.0 if na == nb else 0.0)


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    ref, stem, dump = argv
    manifest = json.load(open(os.path.join(ref, "manifest.json")))
    entry = manifest["exports"][stem]
    fails, passed, worst = [], 0, (1.0, 0.0, "")
    logits = np.load(os.path.join(dump, "logits.npy"))
    r = rel(logits, np.load(os.path.join(ref, "logits.npy")))
    (fails.append(f"logits: rel err {r:.3e}") if not r < LOGITS_REL else None)
    loss_got = float(np.load(os.path.join(dump, "loss.npy")).ravel()[0])
    loss_want = float(np.load(os.path.join(ref, "loss.npy")).ravel()[0])
    if not abs(loss_got - loss_want) < LOSS_ABS:
        fails.append(f"loss: sbpc {loss_got:.7g}, PyTorch {loss_want:.7g}")
    gdir = os.path.join(ref, stem, "grads")
    want = {n: np.load(os.path.join(gdir, n + ".npy")) for n in
            (f[:-4] for f in os.listdir(gdir))}
    got_names = {f[:-4] for f in os.listdir(os.path.join(dump, "grads"))}
    scale = max(float(np.nan_to_num(np.abs(g)).max()) for g in want.values())
    for name in sorted(got_names - set(want)):
        fails.append(f"grad {name}: sbpc trains it, PyTorch has no such parameter")
    for name, w in sorted(want.items()):
        if name not in got_names:
            fails.append(f"grad {name}: PyTorch trains it, sbpc has no gradient")
            continue
        g = np.load(os.path.join(dump, "grads", name + ".npy"))
        if g.size != w.size:
            fails.append(f"grad {name}: {g.shape} vs {w.shape}")
            continue
        g = g.reshape(w.shape)
        # NaN compares false with every bar, so it would pass them all: refuse it first.
        if not (np.isfinite(g).all() and np.isfinite(w).all()):
            fails.append(f"grad {name}: not finite (sbpc {'ok' if np.isfinite(g).all() else 'NaN/inf'}, "
                         f"PyTorch {'ok' if np.isfinite(w).all() else 'NaN/inf'})")
            continue
        if float(np.abs(w).max()) < ZERO * scale:
            ok = float(np.abs(g).max()) < ZERO * scale
            (fails.append(f"grad {name}: should be zero up to rounding") if not ok else None)
            passed += ok
            continue
        c, e = cosine(g, w), rel(g, w)
        if c <= GRAD_COS or e >= GRAD_REL:
            fails.append(f"grad {name}: cosine {c:.7f}, rel err {e:.3e}")
        else:
            passed += 1
        worst = min(worst, (c, e, name))
    # Full-size references carry PyTorch's own float32 step as a control: how many gradients
    # it misses the same bars on says whether float32 can meet them on this model at all.
    cdir = os.path.join(ref, stem, "grads_torch32")
    control = ""
    if os.path.isdir(cdir):
        missed = 0
        for name, w in want.items():
            c = np.load(os.path.join(cdir, name + ".npy")).reshape(w.shape)
            if float(np.abs(w).max()) < ZERO * scale:
                missed += float(np.abs(c).max()) >= ZERO * scale
            elif cosine(c, w) <= GRAD_COS or rel(c, w) >= GRAD_REL:
                missed += 1
        control = f"; control: PyTorch's float32 step misses on {missed}/{len(want)}"
    for f in fails:
        print("FAIL " + f)
    print(f"{manifest['family']} ({stem}): logits rel {r:.1e}, loss |d| {abs(loss_got - loss_want):.1e}, "
          f"{passed}/{len(want)} gradients pass, lowest cosine {worst[0]:.7f} ({worst[2]}){control}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
