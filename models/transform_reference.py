# transform_reference.py: checks sbpc's eval transform (an `sbpc data --dump`) against timm's on the same image files.
"""Compare `sbpc data DATA_DIR --transform eval --size S --dump N out.npy` with timm.

The dump is f32 [N,3,S,S], normalized with ImageNet's mean and std: the first N images of
DATA_DIR in sbpc's data-set order, which this script repeats:

  - classes are DATA_DIR's subfolders sorted by name (byte order); files directly in
    DATA_DIR are not images of the set
  - a class's images are its files whose lowercased extension is .jpg, .jpeg or .png,
    sorted by name (byte order)
  - DATA_DIR is listed as given, even when it has train and val subfolders: pass the
    folder sbpc data was given (e.g. DIR/jpeg/val)

timm's side is timm.data.create_transform(input_size=(3,S,S), is_training=False,
crop_pct, interpolation, ImageNet mean/std) on PIL's Image.open(f).convert("RGB"):
resize of the shorter side to floor(S / crop_pct), centre crop S, ToTensor, Normalize.
Exits 1 unless the mean |difference| <= 0.01 and the max <= 0.1 (normalized units).

    python3 models/transform_reference.py DIR/jpeg/val out.npy --size 32

With --write, the dump argument is where timm's output for the first --count images is
written instead (the committed reference of the SBPData tests):

    python3 models/transform_reference.py Tests/Fixtures/images/jpeg/val \
        Tests/Fixtures/images/eval32_jpeg.npy --size 32 --write --count 6
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402,F401  (makes torchvision, hence timm, importable)
import timm.data  # noqa: E402
from PIL import Image  # noqa: E402

EXTENSIONS = (".jpg", ".jpeg", ".png")
MEAN_BAR, MAX_BAR = 0.01, 0.1


def byte_sorted(names):
    return sorted(names, key=os.fsencode)


def dataset_files(folder):
    """The image paths of `folder` in sbpc's data-set order."""
    files = []
    for cls in byte_sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, cls)
        if os.path.isdir(class_dir):
            files += [os.path.join(class_dir, f) for f in byte_sorted(os.listdir(class_dir))
                      if os.path.splitext(f)[1].lower() in EXTENSIONS
                      and os.path.isfile(os.path.join(class_dir, f))]
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="the folder given to sbpc data")
    parser.add_argument("dump", help="sbpc data's --dump output, f32 [N,3,S,S]")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--crop-pct", type=float, default=0.875)
    parser.add_argument("--interpolation", default="bicubic")
    parser.add_argument("--write", action="store_true", help="write timm's output to DUMP instead of comparing")
    parser.add_argument("--count", type=int, default=8, help="with --write: how many images")
    args = parser.parse_args(argv)
    s = args.size
    transform = timm.data.create_transform(
        input_size=(3, s, s), is_training=False, crop_pct=args.crop_pct,
        interpolation=args.interpolation, mean=timm.data.IMAGENET_DEFAULT_MEAN,
        std=timm.data.IMAGENET_DEFAULT_STD)
    files = dataset_files(args.data_dir)
    if args.write:
        out = []
        for f in files[:args.count]:
            with Image.open(f) as image:
                out.append(transform(image.convert("RGB")).numpy())
        np.save(args.dump, np.stack(out).astype(np.float32))
        print(f"wrote timm's eval transform of {len(out)} images to {args.dump}")
        return 0

    dump = np.load(args.dump)
    if dump.dtype != np.float32 or dump.ndim != 4 or dump.shape[1:] != (3, s, s) or not len(dump):
        raise SystemExit(f"{args.dump}: {dump.dtype} {list(dump.shape)}, expected float32 [N>0, 3, {s}, {s}]")
    if len(files) < len(dump):
        raise SystemExit(f"{args.data_dir}: {len(files)} images, the dump has {len(dump)}")
    print(f"timm {timm.__version__} transform:\n{transform}")

    total, worst, worst_file = 0.0, -1.0, None
    for f, got in zip(files, dump):
        with Image.open(f) as image:
            want = transform(image.convert("RGB")).numpy()
        diff = np.abs(want.astype(np.float64) - got)
        total += diff.sum()
        if diff.max() > worst:
            worst, worst_file = float(diff.max()), f
    mean = total / dump.size
    ok = mean <= MEAN_BAR and worst <= MAX_BAR
    print(f"{len(dump)} images: mean |diff| {mean:.6f} (bar {MEAN_BAR}), max |diff| {worst:.6f} "
          f"(bar {MAX_BAR}) in {os.path.relpath(worst_file, args.data_dir)}: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
