# Compares bf16 training steps with the fp32 PyTorch oracle: PyTorch's CPU autocast (the expectation) and sbpc --precision bf16.
"""bf16 gradients against the fp32 oracle, PyTorch's autocast beside sbpc's.

For each model (the tiny ones by default, --full for ViT-Tiny and ConvNeXt-Tiny at
reference.py's full batches), one training step on reference.py's input and labels:

  - the oracle: reference.py's fp32 step (train_step);
  - PyTorch autocast: the same step with the forward and the loss under
    torch.autocast("cpu", dtype=torch.bfloat16), the backward outside it, as PyTorch
    documents;
  - sbpc bf16 (with --sbpc BIN): `sbpc compile MODEL_ts17.onnx --batch B --keep 1
    --precision bf16`, then `sbpc train --steps 1 --input --labels --dump-grads`, each
    gradient mapped to its parameter through the export's params.json.

Per model: the lowest cosine between a gradient and the oracle's over every parameter,
for both, and the loss of each. Issue 26's bar is a cosine above 0.999 for sbpc;
PyTorch's own autocast sets the expectation. --full needs the full-size exports
(models/full/, export.py --full) and writes their fp32 references first when missing
(reference.py --full).

    python3 models/autocast_check.py [--full] [--sbpc .build/release/sbpc]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import export  # first: makes torchvision, hence timm, importable
import numpy as np
import reference
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = ("vit_tiny_patch16_224", "convnext_tiny")


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 if na == 0 and nb == 0 else float(a @ b / (na * nb + 1e-300))


def autocast_step(name, spec, x):
    model, _ = export.build(name, spec)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        labels = reference.labels_for(x.shape[0], logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="mean")
    loss.backward()
    return loss.item(), {n: p.grad.float().numpy() for n, p in params.items()}


def sbpc_step(sbpc, onnx, x, labels, folder):
    plan, xs, ys, grads = (os.path.join(folder, f) for f in ("p.plan", "x.npy", "y.npy", "grads"))
    np.save(xs, x.numpy())
    np.save(ys, labels)
    for cmd in ([sbpc, "compile", onnx, "--batch", str(x.shape[0]), "--keep", "1", "--precision", "bf16", "-o", plan, "--quiet"],
                [sbpc, "train", plan, "--steps", "1", "--input", xs, "--labels", ys, "--dump-grads", grads, "--dump-loss"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"autocast_check.py: {' '.join(cmd[:2])} failed: {done.stderr.strip()}")
    loss = float(done.stdout.split()[0])
    return loss, {f[:-4]: np.load(os.path.join(grads, f)) for f in os.listdir(grads)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="ViT-Tiny and ConvNeXt-Tiny at full size")
    parser.add_argument("--sbpc", metavar="BIN", help="also sbpc's bf16 step (this binary)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    print("| model | batch | loss fp32 / autocast / sbpc bf16 | lowest gradient cosine: PyTorch autocast | sbpc bf16 | gradients |")
    print("|---|---|---|---|---|---|")
    worst = {"autocast": 1.0, "sbpc": 1.0}
    for name in FULL if args.full else export.TINY:
        spec = export.FULL[name] if args.full else export.TINY[name]
        folder = os.path.join(HERE, "full") if args.full else HERE
        ref = os.path.join(folder, "reference", name)
        if args.full and not os.path.isfile(os.path.join(ref, "ts17.params.json")):
            subprocess.run([sys.executable, os.path.join(HERE, "reference.py"), "--full", "--only", name], check=True)
        x = torch.from_numpy(np.load(os.path.join(ref, "input.npy") if args.full else os.path.join(HERE, f"{name}.ref", "input.npy")))
        oracle = reference.train_step(name, export.build(name, spec)[0], x)
        loss_ac, grads_ac = autocast_step(name, spec, x)
        ac = min(cosine(grads_ac[n], g) for n, g in oracle.grads.items())
        worst["autocast"] = min(worst["autocast"], ac)
        sb, loss_sb = None, None
        if args.sbpc:
            mapping = json.load(open(os.path.join(ref, "ts17.params.json")))
            onnx = os.path.join(folder, f"{name}_ts17.onnx")
            with tempfile.TemporaryDirectory() as tmp:
                loss_sb, grads_sb = sbpc_step(args.sbpc, onnx, x, oracle.labels, tmp)
            sb = 1.0
            for init, m in mapping.items():
                g = grads_sb[init.replace("/", "_")]
                want = oracle.grads[m["param"]]
                want = want.T if m["transpose"] and want.ndim == 2 else want
                sb = min(sb, cosine(g, want.reshape(g.shape)))
            worst["sbpc"] = min(worst["sbpc"], sb)
        fmt = lambda v: "—" if v is None else f"{v:.7f}"  # noqa: E731
        losses = f"{oracle.loss:.5f} / {loss_ac:.5f} / " + ("—" if loss_sb is None else f"{loss_sb:.5f}")
        print(f"| {name} | {x.shape[0]} | {losses} | {ac:.7f} | {fmt(sb)} | {len(oracle.grads)} |")
    print(f"\nlowest over all: PyTorch autocast {worst['autocast']:.7f}" + (f", sbpc bf16 {worst['sbpc']:.7f}" if args.sbpc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
