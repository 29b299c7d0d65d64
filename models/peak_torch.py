# Measures the peak RSS of a whole PyTorch (CPU) training process, no SBP vs SBP, one fresh process per run.
"""Peak resident set size of PyTorch CPU training, no SBP vs SBP.

Each run is a fresh child process (this script with --child) under /usr/bin/time -v;
the figure is its "Maximum resident set size", so it covers the whole process: the
Python interpreter, torch and timm, the model, its gradients and SGD's momentum buffers,
and the activations of the step.  The child builds the model as saved_torch.py does
(export.py's builder, seeds and perturbation, eval() like reference.py: no dropout /
drop path), uses 2 threads, SGD (lr 0.01, momentum 0.9), zero_grad(set_to_none=True),
seeded random input and labels, mean cross-entropy, and runs 2 training steps (forward,
backward, optimizer.step).  SBP is reference.py's: the default block rule, a grid mask
(keep 0.5, phase 0), and qkv attention for ViT (none for ConvNeXt).  The child also
reports its own peak (ru_maxrss) just before the first step, the "setup" column.
A single run's peak varies by up to ~10% (ViT-Tiny most); --repeat N reports the median.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (model, batch, SBP config of reference.py)
RUNS = [
    ("vit_tiny_patch16_224", 32, "qkv_grid0.5_p0"),
    ("convnext_tiny", 16, "none_grid0.5_p0"),
]
STEPS = 2
MAXRSS_RE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def child(name, batch, config):
    """One configuration in this process; prints a JSON line with its setup peak."""
    import export  # noqa: E402  (first: makes torchvision, hence timm, importable)
    import reference  # noqa: E402
    import torch  # noqa: E402

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)  # as saved_torch.py / reference.py
    model, chw = export.build(name, export.FULL[name])  # seeded, perturbed, eval()
    x = export.make_input(name, chw, batch)  # seeded torch.randn
    if config != "none":
        cfg = reference.SbpConfig.parse(config)
        targets = reference.sbp_targets(model, x)
        mask = reference.base_mask(cfg, *targets.grid)
        reference.apply_sbp(model, targets, mask, cfg.attention)
    g = torch.Generator().manual_seed(export.seed_of(name, f"labels{batch}"))
    labels = torch.randint(0, model.num_classes, (batch,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels, reduction="mean")
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(json.dumps({"setup_kb": setup_kb, "losses": losses, "torch": torch.__version__}))


def run(name, batch, config):
    """Peak RSS (bytes) of a fresh child process, plus what the child printed."""
    cmd = ["/usr/bin/time", "-v", sys.executable, os.path.abspath(__file__),
           "--child", name, str(batch), config]
    p = subprocess.run(cmd, capture_output=True, text=True)
    m = MAXRSS_RE.search(p.stderr)
    if p.returncode != 0 or not m:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"{name} b{batch} {config}: child failed (exit {p.returncode})")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return int(m.group(1)) * 1024, info


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    names = [n for n, _, _ in RUNS]
    parser = argparse.ArgumentParser(
        description="Peak RSS of a PyTorch CPU training process (2 steps, SGD momentum), "
        "no SBP vs SBP (reference.py's rules), each in a fresh process.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this model (repeatable): %s" % ", ".join(names))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="fresh processes per configuration; the figure is their median "
                        "(default 1; single runs vary by up to ~10%%)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(names)}")

    rows, torch_version = [], None
    for name, batch, config in RUNS:
        if args.only and name not in args.only:
            continue
        base = None
        for setting in ("none", config):
            runs = [run(name, batch, setting) for _ in range(max(1, args.repeat))]
            peaks = sorted(p for p, _ in runs)
            peak, info = peaks[(len(peaks) - 1) // 2], runs[0][1]  # lower median
            base = base or peak
            torch_version = info["torch"]
            rows.append(dict(model=name, batch=batch,
                             setting="no_sbp" if setting == "none" else setting,
                             peak_bytes=peak, peak_MiB=peak / 2**20, peak_MB=peak / 1e6,
                             ratio=peak / base, setup_MiB=info["setup_kb"] / 1024,
                             losses=info["losses"], runs_MB=[p / 1e6 for p, _ in runs]))
            if not args.json:
                print(f"  done {name} b{batch} {rows[-1]['setting']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"torch": torch_version, "threads": 2, "steps": STEPS,
                          "repeat": args.repeat, "rows": rows}, indent=2))
        return 0
    print(f"torch {torch_version}, 2 threads, {STEPS} SGD steps, eval() mode, peak RSS of a "
          f"fresh process (/usr/bin/time -v), median of {args.repeat}")
    head = ("model", "batch", "setting", "peak MiB", "peak MB", "SBP/no-SBP", "setup MiB",
            "MB min-max")
    table = [(r["model"], str(r["batch"]), r["setting"], f"{r['peak_MiB']:.0f}",
              f"{r['peak_MB']:.0f}", f"{r['ratio']:.3f}", f"{r['setup_MiB']:.0f}",
              f"{min(r['runs_MB']):.0f}-{max(r['runs_MB']):.0f}") for r in rows]
    from saved_torch import print_table  # here, so only a table run loads torch in the parent
    print_table(head, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
