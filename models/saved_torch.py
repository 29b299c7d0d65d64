# Measures in PyTorch (CPU) the bytes of activations autograd saves for backward in one training step, without and with SBP.
"""Saved-activation bytes of one training step, no SBP vs SBP, in PyTorch.

The models are the full-size timm models of export.py (same builder, seeds and
perturbation, in eval() like reference.py: no dropout / drop path), plus a ViT-Tiny
with an average-pool head and no class token.  SBP is reference.py's: the default
block rule (sbp_targets), a grid mask (base_mask) and the patched forwards
(apply_sbp, the paper's Algorithm 1).

"Saved bytes": every tensor that autograd packs during the forward and the loss
(mean cross-entropy against seeded random labels), caught with
torch.autograd.graph.saved_tensors_hooks.  Tensors whose storage is a parameter's
storage, or the input image's, are left out.  The rest are deduplicated by storage
(data_ptr, nbytes) and each distinct storage counts its full nbytes once.  Every
packed tensor is kept alive until backward, so no two live storages share an address.
"""

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402  (also makes torchvision, hence timm, importable)
import reference  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

CHW = (3, 224, 224)
AVG = "vit_tiny_avg_patch16_224"  # ViT-Tiny, avg-pool head, no class token
SPECS = {
    "vit_tiny_patch16_224": export.FULL["vit_tiny_patch16_224"],
    # export.FULL's spec if it has one (same name, so the same seeds), else the same model here.
    AVG: export.FULL.get(AVG) or export.Spec(
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                  global_pool="avg", class_token=False), CHW, (), False),
    "convnext_tiny": export.FULL["convnext_tiny"],
}
# (model, batch, SBP config of reference.py: attention_grid<keep>_p<phase>)
RUNS = [
    ("vit_tiny_patch16_224", 16, "qkv_grid0.5_p0"),
    (AVG, 16, "qkv_grid0.5_p0"),
    ("convnext_tiny", 8, "none_grid0.5_p0"),
]


def print_table(head, rows):
    """Prints rows under head, the first three columns left-aligned, the rest right-aligned."""
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    for line in [head, tuple("-" * w for w in widths)] + list(rows):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths))))


def storage_key(t):
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def saved_bytes(model, x, labels):
    """{"bytes", "storages", "packed", "excluded", "loss"} of one training step of `model`
    (mean cross-entropy of model(x) against labels, then backward); "bytes" is what
    autograd saved, parameters and x left out, deduplicated by storage."""
    excluded = {storage_key(p) for p in model.parameters()} | {storage_key(x)}
    seen, packed, skipped = {}, [], collections.Counter()

    def pack(t):
        packed.append(t)  # keep alive (autograd does too) so addresses stay unique
        key = storage_key(t)
        if key in excluded:
            skipped[key] += 1
        elif key[1] > 0:
            seen[key] = key[1]
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="mean")
    loss.backward()  # the step completes: every saved tensor unpacks
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise SystemExit(f"no gradient for {missing}")
    return {"bytes": sum(seen.values()), "storages": len(seen), "packed": len(packed),
            "excluded": sum(skipped.values()), "loss": loss.item()}


def measure(name, batch, cfg):
    """saved_bytes() of one step of model `name`; cfg None = no SBP."""
    model, chw = export.build(name, SPECS[name])  # seeded, perturbed, eval()
    x = export.make_input(name, chw, batch)  # seeded torch.randn
    if cfg is not None:
        targets = reference.sbp_targets(model, x)
        mask = reference.base_mask(cfg, *targets.grid)
        reference.apply_sbp(model, targets, mask, cfg.attention)
    g = torch.Generator().manual_seed(export.seed_of(name, f"labels{batch}"))
    labels = torch.randint(0, model.num_classes, (batch,), generator=g)
    return saved_bytes(model, x, labels)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Bytes of activations saved for backward in one PyTorch training step "
        "(CPU), no SBP vs SBP (reference.py's rules).", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this model (repeatable): %s" % ", ".join(SPECS))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in SPECS]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(SPECS)}")
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)  # as reference.py

    rows = []
    for name, batch, config in RUNS:
        if args.only and name not in args.only:
            continue
        base = None
        for cfg in (None, reference.SbpConfig.parse(config)):
            r = measure(name, batch, cfg)
            base = base or r["bytes"]
            rows.append(dict(model=name, batch=batch, setting=cfg.name if cfg else "no_sbp",
                             saved_bytes=r["bytes"], saved_MB=r["bytes"] / 1e6,
                             saved_MiB=r["bytes"] / 2**20, ratio=r["bytes"] / base,
                             storages=r["storages"], packed=r["packed"],
                             packed_params_or_input=r["excluded"], loss=r["loss"]))
            if not args.json:
                print(f"  done {name} b{batch} {rows[-1]['setting']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "timm": timm.__version__,
                          "fused_attn": timm.layers.use_fused_attn(), "rows": rows}, indent=2))
        return 0
    print(f"torch {torch.__version__}, timm {timm.__version__}, "
          f"fused attention (SDPA) {timm.layers.use_fused_attn()}, 2 threads, eval() mode")
    head = ("model", "batch", "setting", "saved MB", "saved MiB", "SBP/no-SBP", "storages", "packed")
    table = [(r["model"], str(r["batch"]), r["setting"], f"{r['saved_MB']:.1f}",
              f"{r['saved_MiB']:.1f}", f"{r['ratio']:.3f}", str(r["storages"]), str(r["packed"]))
             for r in rows]
    print_table(head, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
