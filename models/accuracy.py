# The driver of `make accuracy`: SBP's accuracy in miniature on scikit-learn's digits, PyTorch against sbpc without and with SBP, as the paper's table.
"""SBP's accuracy in miniature: top-1 on scikit-learn's digits for digits.py's tiny ViT
and ConvNeXt, trained three ways with the same recipe, over several seeds:

  PyTorch            digits_torch.train (no SBP), on sbpc's batch order for the seed
  sbpc no SBP        sbpc compile --keep 1, then sbpc train
  sbpc SBP keep 0.5  sbpc compile --keep 0.5 (default blocks, grid mask, attention qkv)

The recipe (digits_torch.py): AdamW lr 1e-3, weight decay 0.05, batch 64, E epochs
(30), shuffled with the seed, last partial batch dropped, linear warm-up over 2 epochs'
steps then cosine to 0, no augmentation, 2 threads.  Every run starts from the same
weights (DIR/<model>.onnx, digits.build); the seed changes the shuffling and the SBP masks.
sbpc runs as

  sbpc compile MODEL.onnx --batch 64 --optimizer adamw --lr 1e-3 --weight-decay 0.05 --keep K -o P
  sbpc train P --input train_x.npy --labels train_y.npy --epochs E --seed S --lr-schedule cosine
      --warmup W --last-batch drop --val val_x.npy val_y.npy --log run.jsonl --threads 2

with W = 2 * (1437 // 64) steps.  run.jsonl holds {"kind": "step", "step", "epoch", "loss",
"lr"} per step and {"kind": "eval", "epoch", "step", "loss", "top1"} per epoch; a run's
top-1 is its last eval record's.  Each run's step lr is checked against
digits_torch.lr_at (the largest relative difference is kept as "lr_max_rel_diff").

Memory is the saved-activation bytes of one training step at batch 64: for sbpc,
`sbpc memory PLAN --json` (cost.savedBytes: forward values other than parameters and
inputs that the backward reads; memory.totalBytes is the whole plan); for PyTorch,
saved_torch.saved_bytes (every tensor autograd packs, deduplicated by storage).

Output: OUT/accuracy.json (every run, rewritten after each one), OUT/accuracy.md (a
table per model, also printed), OUT/runs/*.jsonl (the logs), OUT/plans/*.plan and the
data and models in OUT/digits/ (rewritten every time; the output is deterministic).  At the
end it runs grad_cosine.py on the ViT (OUT/grad_cosine.svg and .json) unless --skip-cosine.
"""

import argparse
import json
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits  # noqa: E402
import digits_torch  # noqa: E402
import grad_cosine  # noqa: E402
import saved_torch  # noqa: E402
import torch  # noqa: E402

SETTINGS = [  # (key, row label, keep ratio for sbpc; None = PyTorch)
    ("torch", "PyTorch (no SBP)", None),
    ("sbpc_nosbp", "sbpc, no SBP", 1.0),
    ("sbpc_sbp", "sbpc, SBP keep 0.5", 0.5),
]
TOLERANCE = 1.5  # points: sbpc no SBP within this of PyTorch; SBP at most this below no SBP
LR_TOLERANCE = 1e-4  # relative to the base lr: warn when sbpc's schedule is not lr_at
FLOOR = 90.0  # sbpc without SBP must reach this top-1 (%)
FIRST_LOSS_TOLERANCE = 1e-4  # relative: the first step's loss, sbpc no SBP against PyTorch


def read_log(path):
    """(step records, eval records) of a --log JSON-lines file."""
    steps, evals = [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{i}: not JSON ({e.msg})")
            (steps if rec.get("kind") == "step" else evals if rec.get("kind") == "eval" else []).append(rec)
    return steps, evals


def check_log(path, epochs, per_epoch, warmup, lr):
    """{"top1", "loss", "evals", "steps", "lr_max_rel_diff"} of a finished run's log."""
    steps, evals = read_log(path)
    if not evals:
        raise SystemExit(f"{path}: no eval record")
    if len(evals) != epochs or len(steps) != epochs * per_epoch:
        raise SystemExit(f"{path}: {len(steps)} steps and {len(evals)} evals, expected "
                         f"{epochs * per_epoch} and {epochs}")
    total = epochs * per_epoch
    diffs = [abs(s["lr"] - digits_torch.lr_at(s["step"] - 1, total, warmup, lr)) / lr
             for s in steps if "lr" in s and "step" in s]
    return {"top1": float(evals[-1]["top1"]), "loss": float(evals[-1]["loss"]),
            "evals": [{k: e[k] for k in ("epoch", "step", "loss", "top1") if k in e} for e in evals],
            "steps": len(steps), "lr_max_rel_diff": max(diffs) if diffs else None}


def check_same_start(m, seed, sbpc_log, torch_log):
    """Both frameworks start from the same weights and see the same batches (digits_torch
    replays sbpc's order), so their first losses agree to rounding; records the relative
    difference per seed and stops on a mismatch, which would mean the recipes differ."""
    a, b = read_log(sbpc_log)[0], read_log(torch_log)[0]
    if not a or not b:
        return
    diff = abs(a[0]["loss"] - b[0]["loss"]) / abs(b[0]["loss"])
    m.setdefault("first_loss_rel_diff", {})[str(seed)] = diff
    if diff > FIRST_LOSS_TOLERANCE:
        raise SystemExit(f"seed {seed}: sbpc's first loss {a[0]['loss']:.6f} differs from PyTorch's "
                         f"{b[0]['loss']:.6f}: the two runs do not start alike")


class Runner:
    def __init__(self, args):
        self.args = args
        self.data = os.path.join(args.out, "digits")
        self.plans = os.path.join(args.out, "plans")
        self.logs = os.path.join(args.out, "runs")
        for d in (self.plans, self.logs):
            os.makedirs(d, exist_ok=True)
        n = len(digits.load(self.data, "train")[1])
        self.per_epoch = digits_torch.steps_per_epoch(n)
        self.warmup = digits_torch.WARMUP_EPOCHS * self.per_epoch

    def sbpc(self, *a):
        return digits.sbpc(self.args.sbpc, *a)

    def compile(self, name, key, keep):
        plan = os.path.join(self.plans, f"{name}_{key}.plan")
        self.sbpc("compile", os.path.join(self.data, f"{name}.onnx"), "--batch", digits_torch.BATCH,
                  "--optimizer", "adamw", "--lr", digits_torch.LR, "--weight-decay", digits_torch.WEIGHT_DECAY,
                  "--keep", f"{keep:g}", "--precision", self.args.precision, "-o", plan)
        m = json.loads(self.sbpc("memory", plan, "--json"))
        return plan, {"saved_bytes": m["cost"]["savedBytes"], "total_bytes": m["memory"]["totalBytes"],
                      "arena_bytes": m["memory"]["arenaBytes"], "sbp": m.get("sbp"), "blocks": m.get("blocks")}

    def train_command(self, plan, seed, log):
        d = self.data
        return ["train", plan, "--input", os.path.join(d, "train_x.npy"), "--labels", os.path.join(d, "train_y.npy"),
                "--epochs", self.args.epochs, "--seed", seed, "--lr-schedule", "cosine", "--warmup", self.warmup,
                "--last-batch", "drop", "--val", os.path.join(d, "val_x.npy"), os.path.join(d, "val_y.npy"),
                "--log", log, "--threads", self.args.threads]

    def run_sbpc(self, plan, seed, log):
        if os.path.exists(log):
            os.remove(log)  # never read a previous run's log
        start = time.perf_counter()
        self.sbpc(*self.train_command(plan, seed, log))
        seconds = time.perf_counter() - start
        r = check_log(log, self.args.epochs, self.per_epoch, self.warmup, digits_torch.LR)
        if r["lr_max_rel_diff"] is not None and r["lr_max_rel_diff"] > LR_TOLERANCE:
            print(f"   warning: {log}: the logged lr differs from digits_torch.lr_at by up to "
                  f"{100 * r['lr_max_rel_diff']:.2f}% of the base lr", file=sys.stderr)
        return dict(r, seed=seed, seconds=seconds, log=log)

    def run_torch(self, name, seed, log):
        r = digits_torch.train(name, self.data, seed, self.args.epochs, threads=self.args.threads,
                               log=log, progress=False)
        return dict(top1=r["top1"], loss=r["loss"], evals=r["evals"], steps=r["steps"], seed=seed,
                    seconds=r["seconds"], log=log)

    def torch_memory(self, name):
        x, y = digits.load(self.data, "train")
        b = digits_torch.BATCH
        torch.set_num_threads(self.args.threads)
        r = saved_torch.saved_bytes(digits.build(name), torch.from_numpy(x[:b]), torch.from_numpy(y[:b]))
        return {"saved_bytes": r["bytes"]}


def summarize(result):
    """Adds per-setting "top1_mean", "top1_std" (percent, sample std) to each model."""
    for m in result["models"].values():
        for s in m["settings"].values():
            t = [100 * r["top1"] for r in s["runs"]]
            s["top1_mean"] = statistics.fmean(t) if t else None
            s["top1_std"] = statistics.stdev(t) if len(t) > 1 else 0.0 if t else None
            s["seconds_mean"] = statistics.fmean(r["seconds"] for r in s["runs"]) if t else None


def fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def table(name, m):
    """(Markdown lines, console rows) of one model's table."""
    st = m["settings"]
    base = st["sbpc_nosbp"]["memory"]["saved_bytes"] if "memory" in st.get("sbpc_nosbp", {}) else None
    ref = {k: st[k]["top1_mean"] for k in st if st[k].get("top1_mean") is not None}
    head = ("setting", "saved act. MiB", "vs sbpc no SBP", "top-1 % (mean ± std)", "per seed",
            "Δ vs sbpc no SBP", "Δ vs PyTorch", "s / run")
    rows = []
    for key, label, _ in SETTINGS:
        if key not in st:
            continue
        s = st[key]
        mem = s.get("memory", {}).get("saved_bytes")
        mean = s.get("top1_mean")
        d_sbpc = mean - ref["sbpc_nosbp"] if key == "sbpc_sbp" and mean is not None and "sbpc_nosbp" in ref else None
        d_torch = mean - ref["torch"] if key == "sbpc_nosbp" and mean is not None and "torch" in ref else None
        rows.append((
            label, fmt(mem and mem / 2**20, ".2f"), fmt(mem and base and mem / base, ".3f"),
            f"{mean:.2f} ± {s['top1_std']:.2f}" if mean is not None else "–",
            " / ".join(f"{100 * r['top1']:.1f}" for r in s["runs"]) or "–",
            fmt(d_sbpc, "+.2f"), fmt(d_torch, "+.2f"), fmt(s.get("seconds_mean"), ".0f")))
    md = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    return md, head, rows


def verdicts(m):
    """Lines judging the issue's bounds for one model (empty when runs are missing)."""
    t = {k: s.get("top1_mean") for k, s in m["settings"].items()}
    plain, sbp, ref = t.get("sbpc_nosbp"), t.get("sbpc_sbp"), t.get("torch")
    out = []
    if plain is not None and ref is not None:
        ok = abs(plain - ref) <= TOLERANCE and plain >= FLOOR
        out.append(f"sbpc no SBP vs PyTorch: {plain - ref:+.2f} points, top-1 {plain:.2f}% "
                   f"({'ok' if ok else 'FAILS'}: within {TOLERANCE} and >= {FLOOR:g}%)")
    if m.get("first_loss_rel_diff"):
        worst = max(m["first_loss_rel_diff"].values())
        out.append(f"same start: the first step's loss of sbpc (no SBP) and PyTorch differs by at most "
                   f"{worst:.1e} (relative) over the seeds")
    if plain is not None and sbp is not None:
        ok = sbp - plain >= -TOLERANCE  # costing at most 1.5 points; gaining is fine
        out.append(f"sbpc SBP vs no SBP: {sbp - plain:+.2f} points ({'ok' if ok else 'FAILS'}: "
                   f"at most {TOLERANCE} below)")
    return out


def report(result, out):
    summarize(result)
    a = result["args"]
    md = ["# SBP's accuracy in miniature: scikit-learn digits (16×16)", "",
          f"Train {result['train_size']} / val {result['val_size']} images; batch 64, {a['epochs']} "
          f"epoch{'s' if a['epochs'] != 1 else ''}, "
          f"AdamW lr 1e-3 wd 0.05, warm-up {result['warmup_steps']} steps then cosine, {a['threads']} threads; "
          f"seeds {a['seeds']}. Top-1 on val after the last epoch. Saved activations: one step at batch 64 "
          "(sbpc: `sbpc memory`, cost.savedBytes; PyTorch: saved_torch.py's autograd count).", ""]
    for name, m in result["models"].items():
        lines, head, rows = table(name, m)
        md += lines + [""] + [f"- {v}" for v in verdicts(m)] + [""]
        print(f"{name}:")
        saved_torch.print_table(head, rows)
        for v in verdicts(m):
            print(f"  {v}")
        print()
    with open(os.path.join(out, "accuracy.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    with open(os.path.join(out, "accuracy.json"), "w") as f:
        json.dump(result, f, indent=1)


def parse_list(parser, flag, text, kind, allowed=None):
    try:
        items = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        parser.error(f"{flag}: expected a comma-separated list, got {text!r}")
    bad = [i for i in items if allowed is not None and i not in allowed]
    if not items or bad:
        parser.error(f"{flag}: unknown {bad}; choose from {', '.join(allowed)}" if bad else f"{flag}: empty")
    return items


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Train digits.py's tiny ViT and ConvNeXt on scikit-learn's digits in PyTorch, "
        "in sbpc without SBP and in sbpc with SBP (keep 0.5), over several seeds, and write the "
        "paper-style table (make accuracy).", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="accuracy-results", help="default: %(default)s")
    parser.add_argument("--seeds", default="0,1,2", help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=digits_torch.EPOCHS, help="default: %(default)s")
    parser.add_argument("--models", default=",".join(digits.MODELS), help="default: %(default)s")
    parser.add_argument("--sbpc", default=digits.DEFAULT_SBPC, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=digits_torch.THREADS, help="default: %(default)s")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the PyTorch runs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="sbpc's products (compile --precision; default %(default)s)")
    parser.add_argument("--skip-cosine", action="store_true",
                        help="do not run grad_cosine.py (ViT, keep 0.5) at the end")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the plans and measure memory, print the sbpc train commands, train nothing")
    args = parser.parse_args(argv)
    seeds = parse_list(parser, "--seeds", args.seeds, int)
    names = parse_list(parser, "--models", args.models, str, list(digits.MODELS))
    if args.epochs < 1 or args.threads < 1:
        parser.error("--epochs and --threads must be >= 1")

    data = os.path.join(args.out, "digits")
    digits.write_data(data)  # deterministic and quick: never stale
    for name in names:
        if not digits.export_model(name, data):
            raise SystemExit(f"{name}: the exported ONNX failed its checks")
    run = Runner(args)
    result = {"args": dict(vars(args), seeds=seeds, models=names), "torch": torch.__version__,
              "train_size": len(digits.load(data, "train")[1]), "val_size": len(digits.load(data, "val")[1]),
              "steps_per_epoch": run.per_epoch, "warmup_steps": run.warmup, "models": {}}
    settings = [s for s in SETTINGS if not (args.skip_torch and s[0] == "torch")]
    for name in names:
        m = result["models"][name] = {"onnx": os.path.join(data, f"{name}.onnx"), "settings": {}}
        plans = {}
        for key, label, keep in settings:
            s = m["settings"][key] = {"label": label, "keep": keep, "runs": []}
            if keep is None:
                s["memory"] = run.torch_memory(name)
            else:
                plans[key], s["memory"] = run.compile(name, key, keep)
        if args.dry_run:
            for key in plans:
                cmd = run.train_command(plans[key], seeds[0], os.path.join(run.logs, f"{name}_{key}_s{seeds[0]}.jsonl"))
                print(" ".join(map(str, [args.sbpc, *cmd])))
            continue
        for seed in seeds:
            for key, label, keep in settings:
                log = os.path.join(run.logs, f"{name}_{key}_s{seed}.jsonl")
                print(f"== {name} seed {seed}: {label}", file=sys.stderr, flush=True)
                r = run.run_torch(name, seed, log) if keep is None else run.run_sbpc(plans[key], seed, log)
                m["settings"][key]["runs"].append(r)
                print(f"   top-1 {100 * r['top1']:.2f}% in {r['seconds']:.0f} s", file=sys.stderr, flush=True)
                if key == "sbpc_nosbp" and "torch" in m["settings"]:
                    check_same_start(m, seed, log, os.path.join(run.logs, f"{name}_torch_s{seed}.jsonl"))
                summarize(result)
                with open(os.path.join(args.out, "accuracy.json"), "w") as f:
                    json.dump(result, f, indent=1)
    report(result, args.out)
    if not (args.dry_run or args.skip_cosine):
        grad_cosine.main(["--data", data, "--out", args.out, "--sbpc", args.sbpc, "--threads", str(args.threads)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
