# image_data.py: image-file data sets for sbpc's data loader (digits as JPEG/PNG/WebDataset, generated ImageNet-like JPEGs) and the PIL loader baseline.
"""Image files for `sbpc data`, and the speed of the loader it is measured against.

    digits OUT          scikit-learn's load_digits() (1,797 8x8 grey images, values 0..16,
                        nothing downloaded) with digits.py's split (stratified, seed 0:
                        1,437 train, 360 val).  Each image is scaled to 0..255, upscaled to
                        32x32 with PIL bicubic and replicated to RGB, then written as
                          OUT/jpeg/{train,val}/<digit>/<index:04d>.jpg   (quality 95)
                          OUT/png/{train,val}/<digit>/<index:04d>.png
                          OUT/shards/train-000.tar .. train-003.tar, val-000.tar
                        index being the sample's index in load_digits().  The shards are
                        WebDataset tars: per sample <index:04d>.jpg (the same bytes as the
                        JPEG folder) then <index:04d>.cls (the digit as ASCII), samples in
                        ascending index, the train split cut into 4 contiguous runs.
    imagenet-like OUT   --count generated 500x375 RGB JPEGs (quality 90) with photographic
                        statistics, as the ImageFolder OUT/c<k>/<i:05d>.jpg, image i in class
                        i % K.  Image i depends only on (--seed, i).
    pil-bench DIR       images/s of PIL + torchvision's training transform on one thread
                        (RandomResizedCrop, flip, ToTensor, Normalize) over DIR's .jpg files.
"""

import argparse
import io
import json
import os
import sys
import tarfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# digits.py's split (make_data), repeated here because it exposes no split on its own.
DIGITS_VAL_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_SIDE = 32
DIGITS_TRAIN_SHARDS = 4

IMAGENET_W, IMAGENET_H = 500, 375  # the commonest ImageNet shape


def digits_split():
    """(images f32 [N,8,8], labels i64 [N], {"train": indices, "val": indices}), each
    index list ascending."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_i, val_i = train_test_split(np.arange(len(labels)), test_size=DIGITS_VAL_SIZE,
                                      stratify=labels, random_state=DIGITS_SPLIT_SEED, shuffle=True)
    return digits.images, labels, {"train": np.sort(train_i), "val": np.sort(val_i)}


def encode(image, fmt, **options):
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_shard(path, members):
    """A tar of (name, bytes) with no trace of the machine or the time it was made."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def digits(out):
    images, labels, splits = digits_split()
    shards = os.path.join(out, "shards")
    os.makedirs(shards, exist_ok=True)
    shard_sizes = {}
    for split, indices in splits.items():
        members = []
        for i in indices:
            grey = Image.fromarray(np.round(images[i] * (255 / 16)).astype(np.uint8), "L")
            rgb = grey.resize((DIGITS_SIDE, DIGITS_SIDE), Image.Resampling.BICUBIC).convert("RGB")
            jpeg = encode(rgb, "JPEG", quality=95)
            name = f"{split}/{labels[i]}/{i:04d}"
            write_file(os.path.join(out, "jpeg", name + ".jpg"), jpeg)
            write_file(os.path.join(out, "png", name + ".png"), encode(rgb, "PNG"))
            members.append([(f"{i:04d}.jpg", jpeg), (f"{i:04d}.cls", str(labels[i]).encode())])
        runs = np.array_split(np.arange(len(members)), DIGITS_TRAIN_SHARDS if split == "train" else 1)
        for k, run in enumerate(runs):
            write_shard(os.path.join(shards, f"{split}-{k:03d}.tar"), [m for j in run for m in members[j]])
        shard_sizes[split] = [len(run) for run in runs]
    for fmt in ("jpeg", "png"):
        print(f"{fmt}: train {len(splits['train'])}, val {len(splits['val'])} images, "
              f"{DIGITS_SIDE}x{DIGITS_SIDE} RGB, 10 classes -> {os.path.join(out, fmt)}")
    print(f"shards: train {'+'.join(map(str, shard_sizes['train']))} samples in {len(shard_sizes['train'])} tars, "
          f"val {shard_sizes['val'][0]} in 1 (WebDataset .jpg + .cls) -> {shards}")


def imagenet_like_image(rng):
    """A smooth scene (a gradient under a few blurred shapes) with fine texture and sensor
    noise, so that JPEG sizes and decode work resemble photographs rather than flat art."""
    h, w = IMAGENET_H, IMAGENET_W
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    scene = Image.fromarray(np.clip(a + (b - a) * t[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    for _ in range(rng.integers(3, 9)):
        x0, x1 = sorted(rng.integers(-w // 4, w + w // 4, 2))
        y0, y1 = sorted(rng.integers(-h // 4, h + h // 4, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(2, 8)))
    # Texture: noise drawn at a quarter of the resolution and upsampled, grain a few pixels wide.
    texture = rng.normal(0, 1, (h // 4, w // 4)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture, "F").resize((w, h), Image.Resampling.BICUBIC))
    pixels = (np.asarray(scene, np.float32) + rng.uniform(4, 16) * texture[..., None]
              + rng.normal(0, 8, (h, w, 3)).astype(np.float32))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def imagenet_like(out, count, classes, seed):
    total = 0
    for i in range(count):
        jpeg = encode(imagenet_like_image(np.random.default_rng([seed, i])), "JPEG", quality=90)
        write_file(os.path.join(out, f"c{i % classes}", f"{i:05d}.jpg"), jpeg)
        total += len(jpeg)
    print(f"imagenet-like: {count} images in {classes} classes, {IMAGENET_W}x{IMAGENET_H} RGB, "
          f"quality 90, mean {total / max(count, 1) / 1024:.0f} KiB -> {out}")


def pil_bench(folder, size, seconds, as_json):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export  # noqa: F401  (makes torchvision importable)
    import torch
    from torchvision import transforms

    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder)
                   for f in names if f.endswith(".jpg"))
    if not files:
        raise SystemExit(f"{folder}: no .jpg files")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1), ratio=(3 / 4, 4 / 3),
                                     interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        with Image.open(files[n % len(files)]) as image:
            transform(image.convert("RGB"))
        n += 1
    if as_json:
        print(json.dumps({"images_per_s": n / elapsed, "images": n, "seconds": elapsed}))
    else:
        print(f"pil: {n} images in {elapsed:.2f} s, {n / elapsed:.1f} images/s (1 thread)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("digits", help="scikit-learn's digits as JPEG, PNG and WebDataset shards")
    p.add_argument("out")
    p = sub.add_parser("imagenet-like", help="generated 500x375 JPEGs as an ImageFolder")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pil-bench", help="PIL + torchvision training transform, images/s on one thread")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the line")
    args = parser.parse_args(argv)
    if args.command == "digits":
        digits(args.out)
    elif args.command == "imagenet-like":
        imagenet_like(args.out, args.count, args.classes, args.seed)
    else:
        pil_bench(args.dir, args.size, args.seconds, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
