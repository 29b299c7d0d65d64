# The paper's Figs. 2-3 in miniature: per-layer cosine similarity between sbpc's SBP gradient and its full gradient, grid against random masks.
"""Cosine similarity, per parameter, between the weight gradient of one SBP step and the
exact gradient of the same step, for grid masks against random masks (the paper's Figs. 2
and 3, on digits.py's tiny models instead of ViT-Tiny on ImageNet).

The weights are those of a model in training, as in the paper (which used a fixed
ViT-Tiny): digits.build(model) trained with digits_torch's recipe for --trained-epochs
epochs (5, seed 0; the schedule spans those epochs) and exported to ONNX like
digits.py's models.  --trained-epochs 0 uses DIR/<model>.onnx, the initial weights; there
the class token attends almost uniformly, its own row dominates every MLP gradient, and
SBP barely changes them (cosine > 0.9999).

The gradients are computed by sbpc itself.  From the ONNX it compiles, at batch 64, a
plan without SBP (--keep 1) and, for each keep ratio, an SBP plan with --mask grid and one
with --mask random (default blocks, attention qkv).  Each plan runs one step on the same
batch, the first 64 training images (DIR/first64_x.npy), with
`sbpc train PLAN --steps 1 --seed S --dump-grads D`: the gradients of the ONNX's
weights, before any update.  The plain step runs once (it has no randomness); each SBP
plan runs for seeds 0..N-1, which draw the mask (a random mask per seed; for grid, the
phase: keep 0.5 has two).  For every parameter, cos(g_SBP, g_full) is averaged over the
seeds (also kept: std, min, max and the per-seed values).

    OUT/grad_cosine.json   {"model", "onnx", "trained_epochs", "trained_top1", "batch",
                            "seeds", "keeps", "params": [torch names,
                            network order], "plotted": [...], "sbp_blocks": [...],
                            "series": {"grid 0.5": {"mask", "keep", "mean": {param: cos},
                            "std", "min", "max", "per_seed": {param: [cos]}, "norm_ratio":
                            {param: mean |g_SBP| / |g_full|}, "masks": [per seed, the
                            kept grid as 0/1 rows]}, ...}}
    OUT/grad_cosine.svg    mean cosine per weight of the SBP blocks (x, network order),
                           one line per mask and keep ratio, with min-max bars

Gradient files are named after the ONNX initializers ('/' -> '_'); DIR/<model>.params.json
maps them to PyTorch names.  The plotted parameters are the weights (`*.weight`, `gamma`)
of the blocks the default rule selects (reference.sbp_targets, which follows the same
rule as sbpc; the count is checked against `sbpc inspect`) and of split downsamplers.
"""

import argparse
import json
import os
import sys
import tempfile
import xml.sax.saxutils

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits  # noqa: E402
import digits_torch  # noqa: E402
import reference  # noqa: E402
import torch  # noqa: E402

BATCH = digits.FIRST
TRAINED_EPOCHS = 5
COLORS = {"grid": "#1f77b4", "random": "#d62728"}
DASHES = ["", "6,3", "2,3", "8,3,2,3"]


def ensure_inputs(folder, name):
    """Writes the digits data and the model's ONNX into `folder` when missing."""
    if not all(os.path.isfile(os.path.join(folder, f)) for f in ("first64_x.npy", "first64_y.npy")):
        digits.write_data(folder)
    if not all(os.path.isfile(os.path.join(folder, f"{name}{e}")) for e in (".onnx", ".params.json")):
        if not digits.export_model(name, folder):
            raise SystemExit(f"{name}: export check failed")


def sbp_parameters(name, binary, onnx_path):
    """([param names in network order], [SBP-block weights to plot], [SBP block modules])."""
    model = digits.build(name)
    targets = reference.sbp_targets(model, torch.zeros((1, *digits.CHW)))
    inspect = json.loads(digits.sbpc(binary, "inspect", onnx_path, "--batch", BATCH, "--json"))
    if len(inspect["selected"]) != len(targets.blocks):
        raise SystemExit(f"{name}: sbpc selects blocks {inspect['selected']}, reference.py "
                         f"{[b for b, _ in targets.blocks]}: the default rules differ")
    modules = [b for b, _ in targets.blocks] + [d for d, _ in targets.downsamplers]
    names = [n for n, _ in model.named_parameters()]
    plotted = [n for n in names
               if any(n.startswith(m + ".") for m in modules)
               and (n.endswith(".weight") or n.endswith("gamma"))]
    return names, plotted, modules


def load_grads(folder, mapping):
    """{torch name: gradient in PyTorch layout} from an sbpc --dump-grads folder."""
    out = {}
    for init, m in mapping.items():
        path = os.path.join(folder, init.replace("/", "_") + ".npy")
        if not os.path.isfile(path):
            raise SystemExit(f"{folder}: no gradient for {init} ({m['param']})")
        g = np.load(path)
        out[m["param"]] = g.T if m["transpose"] else g  # reshape only adds unit axes
    return out


def run_step(binary, plan, data, seed, out, threads, sbp=True):
    d = os.path.join(out, "grads")
    digits.sbpc(binary, "train", plan, "--steps", 1, "--input", os.path.join(data, "first64_x.npy"),
                "--labels", os.path.join(data, "first64_y.npy"), "--seed", seed, "--threads", threads,
                "--dump-grads", d, *(("--dump-mask", os.path.join(out, "mask")) if sbp else ()))
    mask_file = os.path.join(out, "mask", "step000001.npy")
    mask = np.load(mask_file).astype(int).tolist() if os.path.isfile(mask_file) else None
    return d, mask


def trained_model(name, data, epochs, threads, folder):
    """Trains build(name) with digits_torch's recipe for `epochs` epochs (seed 0) and exports
    it to folder/<name>_trained<epochs>.onnx; (onnx path, val top-1)."""
    model = digits.build(name)
    r = digits_torch.train(name, data, 0, epochs, threads=threads, model=model, progress=False)
    stem = f"{name}_trained{epochs}"
    if not digits.export_model(name, folder, model=model, stem=stem):
        raise SystemExit(f"{name}: the trained model's export failed its checks")
    return os.path.join(folder, stem + ".onnx"), r["top1"]


def measure(name, onnx_path, data, binary, seeds, keeps, threads, work):
    with open(onnx_path[:-len(".onnx")] + ".params.json") as f:
        mapping = json.load(f)
    names, plotted, modules = sbp_parameters(name, binary, onnx_path)

    def compile_plan(tag, *flags):
        plan = os.path.join(work, f"{tag}.plan")
        digits.sbpc(binary, "compile", onnx_path, "--batch", BATCH, *flags, "-o", plan)
        return plan

    full_dir, _ = run_step(binary, compile_plan("full", "--keep", 1), data, 0,
                           os.path.join(work, "full"), threads, sbp=False)
    full = load_grads(full_dir, mapping)
    series = {}
    for keep in keeps:
        for mask in ("grid", "random"):
            label = f"{mask} {keep:g}"
            plan = compile_plan(f"{mask}{keep:g}", "--keep", keep, "--mask", mask)
            per_seed, masks, ratio = {n: [] for n in names}, [], {n: [] for n in names}
            for seed in seeds:
                out = os.path.join(work, f"{mask}{keep:g}_s{seed}")
                d, m = run_step(binary, plan, data, seed, out, threads)
                masks.append(m)
                for n, g in load_grads(d, mapping).items():
                    per_seed[n].append(reference.cosine(g, full[n]))
                    ratio[n].append(float(np.linalg.norm(g) / max(np.linalg.norm(full[n]), 1e-30)))
            stats = {k: {n: float(f(v)) for n, v in per_seed.items()}
                     for k, f in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))}
            series[label] = dict(mask=mask, keep=keep, **stats, per_seed=per_seed, masks=masks,
                                 norm_ratio={n: float(np.mean(v)) for n, v in ratio.items()})
            print(f"  {label}: mean cosine over the plotted weights {np.mean([stats['mean'][n] for n in plotted]):.4f} "
                  f"(min {min(stats['min'][n] for n in plotted):.4f}), {len(seeds)} seeds, "
                  f"{len({json.dumps(m) for m in masks})} distinct masks", file=sys.stderr)
    return {"model": name, "onnx": os.path.basename(onnx_path), "batch": BATCH,
            "seeds": list(seeds), "keeps": list(keeps),
            "attention": "qkv", "blocks": "default", "sbp_blocks": modules, "params": names,
            "plotted": plotted, "series": series}


def short(name):
    """blocks.3.mlp.fc1.weight -> b3.fc1; stages.1.blocks.0.conv_dw.weight -> s1.b0.conv_dw."""
    s = name.replace("blocks.", "b").replace("stages.", "s").replace(".weight", "")
    for part in ("attn.", "mlp.", "downsample."):
        s = s.replace(part, "")
    return s


def weights(result):
    n = result.get("trained_epochs")
    return (f"weights after {n} epochs in PyTorch (val top-1 {100 * result['trained_top1']:.1f}%)"
            if n else "initial weights")


def nice_ticks(lo, hi, count=5):
    """(ticks, bottom): round-numbered ticks from at most lo up to hi."""
    raw = (hi - lo) / count
    mag = 10.0 ** np.floor(np.log10(raw))
    step = mag * next(m for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    bottom = np.floor(lo / step) * step
    return [bottom + i * step for i in range(int(round((hi - bottom) / step)) + 1)], bottom


def write_svg(path, result):
    """A hand-written SVG line plot: x = plotted parameters, y = mean cosine, min-max bars."""
    labels = result["plotted"]
    n = len(labels)
    series = result["series"]
    lo = min(min(s["min"][p] for p in labels) for s in series.values())
    ticks, lo = nice_ticks(max(min(lo, 0.999), -1.0), 1.0)
    decimals = next(d for d in range(1, 7) if all(abs(round(t, d) - t) < 1e-9 for t in ticks))
    left, top, bottom, step = 64, 90 + 16 * len(series), 90, 24
    w = max(left + 30 + step * max(n - 1, 1), 620)
    h = top + 260 + bottom
    ph = h - top - bottom
    X = lambda i: left + 10 + step * i
    Y = lambda v: top + ph * (1.0 - v) / (1.0 - lo)
    e = xml.sax.saxutils.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="13">{e(result["model"])}: cosine(SBP gradient, full gradient) '
           f'per weight of the SBP blocks</text>',
           f'<text x="{left}" y="38">one batch of {result["batch"]}; {weights(result)}</text>',
           f'<text x="{left}" y="54">mean over {len(result["seeds"])} seeds (masks), bars min-max; default '
           f'blocks, attention {result["attention"]}</text>']
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{X(n - 1) + 10}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:.{decimals}f}</text>')
    out.append(f'<text transform="translate(16,{top + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f'cosine similarity</text>')
    for i, p in enumerate(labels):
        out.append(f'<text transform="translate({X(i) + 4},{top + ph + 10}) rotate(-60)" text-anchor="end" '
                   f'font-size="10">{e(short(p))}</text>')
    for k, (label, s) in enumerate(series.items()):
        color = COLORS.get(s["mask"], "black")
        dash = DASHES[result["keeps"].index(s["keep"]) % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        off = (k - (len(series) - 1) / 2) * 3  # side by side bars
        for i, p in enumerate(labels):
            out.append(f'<line x1="{X(i) + off:.1f}" x2="{X(i) + off:.1f}" y1="{Y(s["min"][p]):.1f}" '
                       f'y2="{Y(s["max"][p]):.1f}" stroke="{color}" stroke-opacity="0.45" stroke-width="2"/>')
        pts = " ".join(f"{X(i):.1f},{Y(s['mean'][p]):.1f}" for i, p in enumerate(labels))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"{dash_attr}/>')
        out += [f'<circle cx="{X(i):.1f}" cy="{Y(s["mean"][p]):.1f}" r="2.5" fill="{color}"/>'
                for i, p in enumerate(labels)]
        ly = 74 + 16 * k
        out.append(f'<line x1="{left}" x2="{left + 24}" y1="{ly}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="1.6"{dash_attr}/>')
        mean = np.mean([s["mean"][p] for p in labels])
        out.append(f'<text x="{left + 30}" y="{ly + 4}">{e(label)}: mean {mean:.4f}, '
                   f'min {min(s["min"][p] for p in labels):.4f}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Per-parameter cosine similarity between sbpc's SBP gradient and its full "
        "gradient on one digits batch, grid against random masks (the paper's Figs. 2-3).",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit", choices=sorted(digits.MODELS), help="default: vit")
    parser.add_argument("--data", default=digits.DEFAULT_DIR,
                        help="digits.py's folder; written when missing (default %(default)s)")
    parser.add_argument("--out", default="accuracy-results", help="default: %(default)s")
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 (default %(default)s)")
    parser.add_argument("--keeps", default="0.5", help="comma-separated keep ratios (default %(default)s)")
    parser.add_argument("--sbpc", default=digits.DEFAULT_SBPC, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--trained-epochs", type=int, default=TRAINED_EPOCHS, metavar="N",
                        help="measure on the weights after N epochs of digits_torch's recipe "
                        "(seed 0); 0 = the initial weights (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        keeps = [float(k) for k in args.keeps.split(",")]
    except ValueError:
        parser.error(f"--keeps: expected comma-separated numbers, got {args.keeps!r}")
    if not all(0 < k < 1 for k in keeps) or args.seeds < 1 or args.trained_epochs < 0:
        parser.error("keep ratios must be in (0, 1) and --seeds >= 1")
    ensure_inputs(args.data, args.model)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grad_cosine.") as work:
        onnx_path, top1 = os.path.join(args.data, f"{args.model}.onnx"), None
        if args.trained_epochs > 0:
            onnx_path, top1 = trained_model(args.model, args.data, args.trained_epochs, args.threads, work)
            print(f"  trained {args.trained_epochs} epochs in PyTorch: val top-1 {100 * top1:.2f}%", file=sys.stderr)
        result = measure(args.model, onnx_path, args.data, args.sbpc, range(args.seeds), keeps, args.threads, work)
        result.update(trained_epochs=args.trained_epochs, trained_top1=top1)
    stem = os.path.join(args.out, "grad_cosine")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_svg(stem + ".svg", result)
    print(f"{'parameter':28s} " + " ".join(f"{k:>12s}" for k in result["series"]))
    for p in result["plotted"]:
        print(f"{p:28s} " + " ".join(f"{s['mean'][p]:12.4f}" for s in result["series"].values()))
    print(f"wrote {stem}.json and {stem}.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
