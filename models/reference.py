# Writes the PyTorch oracle for sbpc's training step: logits, cross-entropy loss and every parameter gradient, plus ONNX-initializer-to-parameter maps.
"""PyTorch reference for sbpc's training step.

For each model this rebuilds the exact timm model of export.py (same builder, seeds
and perturbation, imported from export.py), puts it in eval() mode (no dropout; the
gradients are still computed) and runs one step on a fixed input and fixed labels:

    logits = model(input)
    loss   = torch.nn.functional.cross_entropy(logits, labels, reduction="mean")
    loss.backward()

labels = np.arange(batch) * 7 % num_classes (int64).  Written to
models/reference/<name>/ (tiny models, committed) or, with --full,
models/full/reference/<name>/ (git-ignored):

    labels.npy                 int64 [B]
    logits.npy                 float32 [B, classes]
    loss.npy                   float32 [1]
    grads/<torch name>.npy     float32, PyTorch layout, one per parameter
    <stem>.params.json         for each ONNX export <name>_<stem>.onnx or
                               <name>_dynamo/model.onnx (stem ts17, ts14, dynamo):
                               {"<initializer>": {"param": "<torch name>",
                                 "transpose": bool, "reshape": [ONNX shape] | null}}
    input.npy                  --full only (tiny models use <name>.ref/input.npy)

An initializer is derived from its parameter as
    onnx = param.T if transpose else param;  onnx = onnx.reshape(reshape) if reshape
Initializers are matched to parameters by value (bit-exact), not by name.  Every
float initializer with more than one element must match exactly one parameter and
every trainable parameter must be matched exactly once; otherwise the script fails.
Output is deterministic (2 threads, deterministic algorithms).
"""

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402  (also makes torchvision importable, see export.py)
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

HERE = export.HERE
TINY_BATCH = export.REF_BATCH
FULL_BATCH = {"vit_tiny_patch16_224": 4, "convnext_tiny": 2}
LOGITS_ATOL = 1e-5  # our forward vs the committed <name>.ref/logits.npy


def labels_for(batch, num_classes):
    return np.arange(batch, dtype=np.int64) * 7 % num_classes


def find_exports(folder, name):
    """[(stem, path)] of the ONNX exports of `name` in `folder`, sorted by stem."""
    found = []
    pat = re.compile(re.escape(name) + r"_(ts\d+)\.onnx$")
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            found.append((m.group(1), os.path.join(folder, f)))
    dyn = os.path.join(folder, f"{name}_dynamo", "model.onnx")
    if os.path.isfile(dyn):
        found.append(("dynamo", dyn))
    return found


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def match_params(path, params):
    """{initializer: {"param", "transpose", "reshape"}} by value; SystemExit on any gap."""
    plain = collections.defaultdict(list)  # bytes in PyTorch order -> params
    transposed = collections.defaultdict(list)  # bytes of param.T -> 2-D params
    for pname, p in params.items():
        plain[digest(p)].append(pname)
        if p.ndim == 2:
            transposed[digest(p.T)].append(pname)

    mapping, errors = {}, []
    used = collections.defaultdict(list)
    for t in onnx.load(path).graph.initializer:
        if t.data_type not in export.FLOAT_TYPES:
            continue
        a = numpy_helper.to_array(t)
        if a.size <= 1:
            continue
        if a.dtype != np.float32:
            errors.append(f"{t.name}: dtype {a.dtype}, expected float32")
            continue
        h = digest(a)
        cands = {}
        for pname in plain.get(h, []):
            p = params[pname]
            if np.array_equal(a.reshape(p.shape), p):
                cands[pname] = (False, None if a.shape == p.shape else list(a.shape))
        for pname in transposed.get(h, []):
            p = params[pname]
            if pname not in cands and np.array_equal(a.reshape(p.T.shape), p.T):
                cands[pname] = (True, None if a.shape == p.T.shape else list(a.shape))
        if len(cands) != 1:
            errors.append(
                f"{t.name} {list(a.shape)}: matches {len(cands)} parameters {sorted(cands)}"
            )
            continue
        (pname, (tr, rs)), = cands.items()
        mapping[t.name] = {"param": pname, "transpose": tr, "reshape": rs}
        used[pname].append(t.name)
    for pname in params:
        if len(used[pname]) != 1:
            errors.append(f"parameter {pname}: {len(used[pname])} initializers {used[pname]}")
    if errors:
        raise SystemExit(f"{path}: initializers and parameters do not match one to one:\n  "
                         + "\n  ".join(errors))
    return mapping


def write_json(path, mapping):
    # One entry per line: compact, diffable, deterministic (initializer order).
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items()]
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def reference(name, spec, x, out, onnx_folder, write_input, expect_logits=None):
    model, _ = export.build(name, spec)  # seeded, perturbed, eval()
    params = collections.OrderedDict(
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    )
    model.zero_grad(set_to_none=True)
    logits = model(x)
    labels = labels_for(x.shape[0], logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="mean")
    loss.backward()

    logits_np = logits.detach().numpy().astype(np.float32)
    if expect_logits is not None:
        d = float(np.abs(logits_np - expect_logits).max())
        print(f"  {name}: max |logits - {name}.ref/logits.npy| = {d:.1e}")
        if d > LOGITS_ATOL:
            raise SystemExit(f"{name}: logits differ from {name}.ref/logits.npy by {d:.2e}: "
                             "the model was not rebuilt identically")
    missing = [n for n, p in params.items() if p.grad is None]
    if missing:
        raise SystemExit(f"{name}: no gradient for {missing} (unused in the eval forward)")

    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "grads"))
    if write_input:
        np.save(os.path.join(out, "input.npy"), x.numpy())
    np.save(os.path.join(out, "labels.npy"), labels)
    np.save(os.path.join(out, "logits.npy"), logits_np)
    np.save(os.path.join(out, "loss.npy"), np.array([loss.item()], dtype=np.float32))
    for n, p in params.items():
        np.save(os.path.join(out, "grads", f"{n}.npy"), p.grad.numpy().astype(np.float32))

    values = {n: p.detach().numpy() for n, p in params.items()}
    stems = []
    for stem, path in find_exports(onnx_folder, name):
        mapping = match_params(path, values)
        write_json(os.path.join(out, f"{stem}.params.json"), mapping)
        quirks = collections.Counter(
            "transposed" if v["transpose"] else "reshaped" for v in mapping.values()
            if v["transpose"] or v["reshape"]
        )
        stems.append(f"{stem} ({len(mapping)}" + "".join(f", {c} {k}" for k, c in sorted(quirks.items())) + ")")
    if not stems:
        raise SystemExit(f"{name}: no ONNX export found in {onnx_folder}")
    print(f"{name}: batch {x.shape[0]}, labels {labels.tolist()}, loss {loss.item():.6f}, "
          f"{len(params)} params; maps: {', '.join(stems)}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write PyTorch references (logits, mean cross-entropy loss, parameter "
        "gradients in eval mode) for sbpc's training step, and ONNX initializer -> "
        "parameter maps for every export of each model.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true",
                        help="full-size models (%s) from models/full/ into "
                        "models/full/reference/" % ", ".join(f"{n} batch {b}" for n, b in FULL_BATCH.items()))
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this model (repeatable); tiny: %s" % ", ".join(export.TINY))
    args = parser.parse_args(argv)

    specs = {n: export.FULL[n] for n in FULL_BATCH} if args.full else export.TINY
    names = args.only or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(specs)}")
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    folder = os.path.join(HERE, "full") if args.full else HERE
    for name in names:
        spec = specs[name]
        out = os.path.join(folder, "reference", name)
        if args.full:
            x = export.make_input(name, spec.chw, FULL_BATCH[name])
            # export.py's <name>.ref holds batch 2: check against it when the input is the same.
            ref = os.path.join(folder, f"{name}.ref")
            expect = None
            if os.path.isfile(os.path.join(ref, "input.npy")) and np.array_equal(
                np.load(os.path.join(ref, "input.npy")), x.numpy()
            ):
                expect = np.load(os.path.join(ref, "logits.npy"))
            reference(name, spec, x, out, folder, write_input=True, expect_logits=expect)
        else:
            ref = os.path.join(HERE, f"{name}.ref")
            x = torch.from_numpy(np.load(os.path.join(ref, "input.npy")))
            if x.shape[0] != TINY_BATCH:
                raise SystemExit(f"{name}: {ref}/input.npy has batch {x.shape[0]}")
            reference(name, spec, x, out, folder, write_input=False,
                      expect_logits=np.load(os.path.join(ref, "logits.npy")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
