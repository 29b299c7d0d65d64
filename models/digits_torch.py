# SBP's accuracy in miniature, PyTorch side: trains digits.py's tiny ViT / ConvNeXt on the digits with the recipe sbpc runs.
"""Train digits.py's models on scikit-learn's digits in PyTorch (CPU), with the recipe
that `make accuracy` gives sbpc:

  - the same initial weights as DIR/<model>.onnx (digits.build: seeded by the model's
    name, so every seed starts from the same weights, as sbpc does from the ONNX file);
  - AdamW (PyTorch's: betas 0.9/0.999, eps 1e-8, decoupled weight decay on every
    parameter, as sbpc's adamw), lr 1e-3, weight decay 0.05, batch 64;
  - E epochs (30); each epoch shuffles the train split in the order sbpc train draws for
    the same seed (sbpc_permutation, a bit-exact replica of its SplitMix64 and Swift's
    shuffle), so both frameworks see the same batches and differ only in arithmetic; the
    last partial batch is dropped (1437 // 64 = 22 steps per epoch);
  - lr per step (lr_at): linear warm-up over K = 2 epochs of steps, then cosine to 0;
  - mean cross-entropy, no augmentation, no label smoothing, no gradient clipping;
  - the model stays in train() (timm's defaults have no dropout and no drop path, which
    digits.build checks, so train() and eval() compute the same function); evaluation
    after each epoch on the val split under no_grad;
  - 2 threads.

--sbp KEEP trains with SBP in PyTorch instead (reference.py's rules: default blocks, a
grid mask whose phase is drawn from the run's generator every step, attention --attention
for the ViT, qkv by default): a cross-check of what sbpc's SBP rows should reach, not part of `make accuracy`.

--log F writes sbpc train's JSON-lines records: {"kind": "step", "step", "epoch", "loss",
"lr"} per step and {"kind": "eval", "epoch", "step", "loss", "top1"} per epoch (top1 in
[0, 1]).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits  # noqa: E402  (imports export, which makes timm importable)
import reference  # noqa: E402
import torch  # noqa: E402

BATCH = 64
LR = 1e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 2
EPOCHS = 30
THREADS = 2


def steps_per_epoch(n, batch=BATCH):
    return n // batch  # the last partial batch is dropped


MASK64 = (1 << 64) - 1


class SplitMix64:
    """sbpc's SplitMix64 generator (Sources/SBPPasses/Mask.swift), bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, bound):
        """Swift's RandomNumberGenerator.next(upperBound:): Lemire's multiply-high with
        rejection."""
        m = self.next() * bound
        if m & MASK64 < bound:
            t = ((1 << 64) - bound) % bound
            while m & MASK64 < t:
                m = self.next() * bound
        return m >> 64


def sbpc_permutation(n, seed, epoch):
    """The sample order of 0-based epoch `epoch` of `sbpc train --epochs --seed seed`
    (BatchOrder.permutation: SplitMix64 seeded from the seed and the epoch, then Swift's
    Array.shuffle(using:), a Fisher-Yates pass from the front)."""
    rng = SplitMix64(((seed ^ 0xD1B54A32D192ED03) + epoch * 0x9E3779B97F4A7C15) & MASK64)
    order = list(range(n))
    for i in range(n - 1):
        j = i + rng.below(n - i)
        order[i], order[j] = order[j], order[i]
    return np.array(order, dtype=np.int64)


def lr_at(step, total, warmup, base=LR):
    """The lr of 0-based step `step` of `total`: base*(step+1)/warmup for the first
    `warmup` steps, then base*0.5*(1+cos(pi*(step-warmup)/(total-warmup)))."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


@torch.no_grad()
def evaluate(model, x, y, batch=256):
    """(mean cross-entropy, top-1 fraction) over x, y."""
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        loss += float(torch.nn.functional.cross_entropy(logits, y[i:i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return loss / len(y), correct / len(y)


def sbp_hook(model, keep, rng, x, attention="qkv"):
    """A function that re-patches model with a fresh grid mask (reference.py's SBP)."""
    targets = reference.sbp_targets(model, x)
    attention = attention if targets.kind == "vit" else "none"
    stride = reference.grid_stride(keep)[0]

    def remask():
        cfg = reference.SbpConfig(attention, "grid", keep, int(rng.integers(stride)), None)
        reference.apply_sbp(model, targets, reference.base_mask(cfg, *targets.grid), attention)

    return remask


def train(name, data_dir, seed, epochs=EPOCHS, lr=LR, weight_decay=WEIGHT_DECAY,
          warmup_epochs=WARMUP_EPOCHS, threads=THREADS, log=None, sbp_keep=None, progress=True,
          model=None, sbp_attention="qkv"):
    """Trains one run; {"model", "seed", "top1", "loss", "evals", "seconds", ...}.  `model`
    (default: a fresh digits.build(name)) is trained in place."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tx, ty = (torch.from_numpy(a) for a in digits.load(data_dir, "train"))
    vx, vy = (torch.from_numpy(a) for a in digits.load(data_dir, "val"))
    model = digits.build(name) if model is None else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    per_epoch = steps_per_epoch(len(ty))
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    remask = sbp_hook(model, sbp_keep, rng, tx[:1], sbp_attention) if sbp_keep else None
    out = open(log, "w") if log else None
    evals, step, start = [], 0, time.perf_counter()
    try:
        for epoch in range(epochs):
            perm = torch.from_numpy(sbpc_permutation(len(ty), seed, epoch))
            for b in range(per_epoch):
                idx = perm[b * BATCH:(b + 1) * BATCH]
                rate = lr_at(step, total, warmup, lr)
                for group in opt.param_groups:
                    group["lr"] = rate
                if remask:
                    remask()
                loss = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if out:
                    out.write(json.dumps({"kind": "step", "step": step, "epoch": epoch + 1,
                                          "loss": loss.item(), "lr": rate}) + "\n")
            vloss, top1 = evaluate(model, vx, vy)
            evals.append({"kind": "eval", "epoch": epoch + 1, "step": step, "loss": vloss, "top1": top1})
            if out:
                out.write(json.dumps(evals[-1]) + "\n")
            if progress:
                print(f"  {name} seed {seed} epoch {epoch + 1}/{epochs}: train loss {loss.item():.4f}, "
                      f"val loss {vloss:.4f}, top-1 {100 * top1:.2f}% "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    finally:
        if out:
            out.close()
    return {"model": name, "seed": seed, "epochs": epochs, "steps": step,
            "top1": evals[-1]["top1"], "loss": evals[-1]["loss"], "evals": evals,
            "seconds": time.perf_counter() - start, "sbp_keep": sbp_keep,
            "sbp_attention": sbp_attention if sbp_keep else None,
            "torch": torch.__version__, "threads": threads}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Train digits.py's tiny models on scikit-learn's digits in PyTorch "
        "(the recipe of make accuracy) and print the final val top-1 per seed.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=digits.DEFAULT_DIR,
                        help="digits.py's output folder (default %(default)s)")
    parser.add_argument("--models", default=",".join(digits.MODELS), help="default: %(default)s")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=LR, help="default %(default)s")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="default %(default)s")
    parser.add_argument("--threads", type=int, default=THREADS, help="default %(default)s")
    parser.add_argument("--sbp", type=float, metavar="KEEP",
                        help="train with SBP at this keep ratio (reference.py's rules)")
    parser.add_argument("--attention", default="qkv", choices=reference.ATTENTION_MODES,
                        help="with --sbp, the ViT's attention split (default %(default)s)")
    parser.add_argument("--log", metavar="PREFIX",
                        help="write PREFIX<model>_s<seed>.jsonl (sbpc train's --log records)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in digits.MODELS]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(digits.MODELS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if args.epochs < 1 or args.sbp is not None and not 0 < args.sbp <= 1:
        parser.error("--epochs must be >= 1 and --sbp in (0, 1]")

    runs = []
    for name in names:
        for seed in seeds:
            log = f"{args.log}{name}_s{seed}.jsonl" if args.log else None
            r = train(name, args.data, seed, args.epochs, args.lr, args.weight_decay,
                      threads=args.threads, log=log, sbp_keep=args.sbp, progress=not args.json,
                      sbp_attention=args.attention)
            runs.append(r)
            if not args.json:
                print(f"{name} seed {seed}: val top-1 {100 * r['top1']:.2f}% after {r['epochs']} epochs "
                      f"({r['steps']} steps, {r['seconds']:.0f} s)", flush=True)
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
