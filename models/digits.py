# SBP's accuracy in miniature, data and models: scikit-learn's handwritten digits as .npy, and a tiny ViT and ConvNeXt as ONNX.
"""scikit-learn's bundled handwritten digits as .npy, and the two tiny models as ONNX.

Data: sklearn.datasets.load_digits(), 1,797 real 8x8 grey images (values 0..16) of the
digits 0-9, shipped inside scikit-learn (nothing is downloaded).  The images are
upscaled to 16x16 with bilinear interpolation (torch's interpolate, align_corners=False),
so that a patch-2 ViT gets an 8x8 token grid whose 2x2 patches mix neighbouring pixels
(nearest would make each patch one repeated pixel).  A fixed
stratified split (seed 0) keeps 360 images for validation and 1,437 for training.  Both
splits are normalized with the train split's mean and std (one channel, one scalar each).

    DIR/train_x.npy  f32 [1437, 1, 16, 16]     DIR/train_y.npy  i64 [1437]
    DIR/val_x.npy    f32 [360, 1, 16, 16]      DIR/val_y.npy    i64 [360]
    DIR/first64_x.npy, first64_y.npy           the first 64 training images (one batch)

Models (timm, pretrained=False, seeded by name; no dropout or drop path: timm's defaults
are 0 for both, which build() checks):

    vit       VisionTransformer(img_size=16, patch_size=2, in_chans=1, embed_dim=64, depth=6,
              num_heads=2, mlp_ratio=4, num_classes=10): class token + 8x8 patches; its
              position embedding is drawn with std 1 instead of timm's 0.02 (tiny_vit says
              why)
    convnext  ConvNeXt(in_chans=1, num_classes=10, depths=(1,1,3,1), dims=(16,32,64,128),
              patch_size=1): timm's ConvNeXt always has four stages and its stage 0 also
              downsamples when the stem's patch is 2, so a 16x16 input takes patch 1
              (a 1x1 stem conv): stage grids 16x16, 8x8, 4x4, 2x2

Exported with export.py's TorchScript exporter (opset 17, symbolic batch `batch`) into
DIR/vit.onnx and DIR/convnext.onnx, each checked with onnx.checker and onnxruntime
against PyTorch (export.check), plus DIR/<model>.params.json, the ONNX initializer ->
parameter map of reference.py.  The exporter merges parameters with equal values (every
fresh LayerNorm weight is all ones) into one initializer, which would tie them in
training; build() therefore jitters every parameter by a relative 1e-3 (1e-6 absolute
for all-zero ones) and the map check fails on any shared initializer.  PyTorch training
(digits_torch.py) starts from the same build(), so both frameworks start from the same
weights.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402  (also makes torchvision, hence timm, importable)
import reference  # noqa: E402
import torch  # noqa: E402
from timm.models.convnext import ConvNeXt  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

SIZE = 16  # upscaled side
CHW = (1, SIZE, SIZE)
NUM_CLASSES = 10
VAL_SIZE = 360
SPLIT_SEED = 0
FIRST = 64  # the one-batch set for grad_cosine.py
DEFAULT_DIR = "accuracy-results/digits"
DEFAULT_SBPC = ".build/release/sbpc"

POS_STD = 1.0  # the ViT's position embedding init (timm: 0.02); see tiny_vit


def tiny_vit():
    """timm's ViT with its position embedding drawn from N(0, POS_STD^2) instead of
    N(0, 0.02^2).  With timm's init the position code is ~50 times smaller than the patch
    tokens of a normalized image, and the class token (init 1e-6) starts by averaging the
    tokens, so the model learns where strokes are only slowly: the recipe reached 34% top-1
    in 10 epochs (28% after 8 of 30).  With std 1, 5 epochs at a constant lr 1e-3 reach 77%
    and the 30-epoch recipe 97%."""
    model = VisionTransformer(img_size=SIZE, patch_size=2, in_chans=1, embed_dim=64, depth=6,
                              num_heads=2, mlp_ratio=4, num_classes=NUM_CLASSES)
    with torch.no_grad():
        torch.nn.init.normal_(model.pos_embed, std=POS_STD)
    return model


MODELS = {
    "vit": export.Spec(tiny_vit, CHW, (17,), False),
    "convnext": export.Spec(
        lambda: ConvNeXt(
            in_chans=1, num_classes=NUM_CLASSES, depths=(1, 1, 3, 1), dims=(16, 32, 64, 128),
            patch_size=1,
        ),
        CHW, (17,), False,
    ),
}


def seed_name(name):
    return f"digits_{name}"


@torch.no_grad()
def jitter(model, seed):
    """Makes parameters with equal values distinct, barely changing the init: each
    parameter moves by randn times 1e-3 of its mean |value| (1e-6 if it is all zeros)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        mean = float(p.abs().mean())
        p.add_(noise * (mean * 1e-3 if mean > 0 else 1e-6))


def build(name):
    """The model `name` with its seeded init (the same bits every call), in train() mode."""
    spec = MODELS[name]
    torch.manual_seed(export.seed_of(seed_name(name), "init"))
    model = spec.builder()
    jitter(model, export.seed_of(seed_name(name), "jitter"))
    active = [n for n, m in model.named_modules()
              if isinstance(m, torch.nn.Dropout) and m.p > 0
              or type(m).__name__ == "DropPath" or isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if active:
        raise SystemExit(f"{name}: train() would differ from eval() in {active}")
    return model.train()


def load(folder, split):
    """(x f32 [N,1,16,16], y i64 [N]) of split train | val | first64 from `folder`."""
    try:
        return (np.load(os.path.join(folder, f"{split}_x.npy")),
                np.load(os.path.join(folder, f"{split}_y.npy")))
    except OSError as e:
        raise SystemExit(f"{folder}: no {split} split ({e.strerror}); run models/digits.py --out {folder}")


def make_data():
    """{"train": (x, y), "val": (x, y), "first64": (x, y)}, normalized with the train split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)  # [N,1,8,8]
    up = torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear",
                                         align_corners=False).numpy()
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_i, val_i = train_test_split(idx, test_size=VAL_SIZE, stratify=labels,
                                      random_state=SPLIT_SEED, shuffle=True)
    mean, std = float(up[train_i].mean()), float(up[train_i].std())
    norm = ((up - mean) / std).astype(np.float32)
    data = {"train": (norm[train_i], labels[train_i]), "val": (norm[val_i], labels[val_i])}
    data["first64"] = (data["train"][0][:FIRST], data["train"][1][:FIRST])
    return data, (mean, std)


def write_data(folder):
    os.makedirs(folder, exist_ok=True)
    data, (mean, std) = make_data()
    for split, (x, y) in data.items():
        np.save(os.path.join(folder, f"{split}_x.npy"), np.ascontiguousarray(x))
        np.save(os.path.join(folder, f"{split}_y.npy"), y)
    counts = np.bincount(data["train"][1], minlength=NUM_CLASSES)
    print(f"digits: train {len(data['train'][1])}, val {len(data['val'][1])} ({SIZE}x{SIZE} bilinear, "
          f"normalized with train mean {mean:.4f} std {std:.4f}); train per class "
          f"{counts.min()}..{counts.max()} -> {folder}")


def export_model(name, folder, model=None, stem=None):
    """DIR/<stem>.onnx (TorchScript, opset 17) and DIR/<stem>.params.json of `model`
    (default: build(name)), stem defaulting to name; True if the checks pass."""
    model = build(name) if model is None else model
    spec = MODELS[name]
    x = export.make_input(seed_name(name), spec.chw, export.REF_BATCH)
    with torch.no_grad():
        y = model(x).numpy()
    path = os.path.join(folder, f"{stem or name}.onnx")
    export.export_ts(model, x, path, 17)
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    reference.write_json(os.path.join(folder, f"{stem or name}.params.json"),
                         reference.match_params(path, params))  # SystemExit on a shared initializer
    nparams = sum(p.size for p in params.values())
    print(f"{name}: {nparams:,} parameters -> {path}")
    return export.check(path, model, seed_name(name), spec.chw, x, y)


def sbpc(binary, *args, wait=120):
    """Runs `binary args...` and returns its stdout; SystemExit with one line on failure.
    A rebuild may replace the binary under us: wait up to `wait` s for it to reappear."""
    deadline = time.monotonic() + wait
    while True:
        try:
            r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
            break
        except OSError as e:  # missing, or being written (ETXTBSY)
            if time.monotonic() > deadline:
                raise SystemExit(f"{binary}: {e.strerror}")
            time.sleep(2)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() + r.stdout.splitlines() if l.strip()]
        raise SystemExit(f"sbpc {args[0]} {args[1]} failed (exit {r.returncode}): "
                         f"{lines[0] if lines else 'no output'}")
    return r.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write scikit-learn's digits as .npy (16x16, normalized, seeded stratified "
        "1437/360 split) and export the tiny ViT and ConvNeXt to ONNX.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_DIR, help=f"output folder (default {DEFAULT_DIR})")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated models to export, or 'none' (default: %(default)s)")
    args = parser.parse_args(argv)
    names = [] if args.models == "none" else args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(2)
    write_data(args.out)
    ok = all([export_model(n, args.out) for n in names])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
