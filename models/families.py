# families.py: tiny and full-size timm families exported for training, and PyTorch's train-mode step on each (sbpc's coverage oracle).
"""Export timm families for training and write PyTorch's reference step.

    python3 models/families.py                 # tiny versions -> models/families/ (committed)
    python3 models/families.py --only swin     # one family
    python3 models/families.py --full          # full size -> models/full/families/ (make check-torch)
    python3 models/families.py --sweep DIR     # tiny, at the other opsets of both exporters

For each family: build the model with seeded random weights, move every parameter and
BatchNorm statistic to distinct values (so no exporter merges two tensors and each
reference belongs to one initializer), export it with models/export_for_training.py
(TorchScript at opset 17, and for some families the dynamo exporter too), and run one
training step in PyTorch train() mode on a fixed batch.  Written per family, in
models/families/<name>/:

    model_ts17.onnx, model_dynamo.onnx(+.data)   the exports
    input.npy labels.npy logits.npy loss.npy    the step (mean cross-entropy)
    grads/<initializer>.npy                     each trainable initializer's gradient, in the
                                                ONNX initializer's layout (matched by value)
    state/<initializer>.npy                     BatchNorm running statistics after the step
    manifest.json                               batch, exports, counts

sbpc's FamilyReferenceTests run every folder; `make check-torch` runs the full-size ones
with models/compare_family.py.
"""

import argparse
import collections
import copy
import functools
import hashlib
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export_for_training as eft  # noqa: E402  (imports export: torchvision without its ops)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

Family = collections.namedtuple("Family", "build chw batch dynamo")


def timm(name, **overrides):
    """timm's model `name` with some of its registered arguments replaced.

    An entry point writes its arguments into a dict together with the caller's kwargs,
    so a kwarg it also sets (depths, dims, patch_size) collides.  Wrap the module's
    `_create_*` functions for the call instead: they receive the registered arguments,
    and the overrides win."""
    def build():
        import timm as t
        try:
            return eft.timm_model(name, 5, **overrides)
        except TypeError as e:
            if "multiple values" not in str(e):
                raise
        entry = t.models.model_entrypoint(name)
        module = sys.modules[entry.__module__]
        originals = {k: v for k, v in vars(module).items() if k.startswith("_create") and callable(v)}

        def wrap(f):
            return lambda *a, **kw: f(*a, **dict(kw, **overrides))
        try:
            for k, f in originals.items():
                setattr(module, k, wrap(f))
            return eft.timm_model(name, 5)
        finally:
            for k, f in originals.items():
                setattr(module, k, f)
    return build


def resnet(block, **kw):
    def build():
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet
        return ResNet({"basic": BasicBlock, "bottleneck": Bottleneck}[block], num_classes=5, **kw)
    return build


def efficientnet(variant, gen, **kw):
    def build():
        from timm.models import efficientnet as e, mobilenetv3 as m
        return {"efficientnet": e._gen_efficientnet, "mobilenetv3": m._gen_mobilenet_v3}[gen](
            variant, num_classes=5, drop_rate=0.0, drop_path_rate=0.0, **kw)
    return build


def normfree():
    """A small normalizer-free net (NF-ResNet's parts): weight-standardized convs
    (timm's ScaledStdConv2d, which calls batch_norm on its weight), LeakyReLU, and a residual
    unit of two 1×1 convs on a 8×8 grid."""
    def build():
        import torch.nn as nn
        from timm.layers import ScaledStdConv2d

        class Unit(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.conv1, self.act, self.conv2 = ScaledStdConv2d(c, 2 * c, 1), nn.LeakyReLU(0.1), ScaledStdConv2d(2 * c, c, 1)

            def forward(self, x):
                return x + self.conv2(self.act(self.conv1(x)))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem, self.act = ScaledStdConv2d(3, 16, 3, stride=4, padding=1), nn.LeakyReLU(0.1)
                self.blocks = nn.Sequential(Unit(16), Unit(16), Unit(16))
                self.head = nn.Linear(16, 5)

            def forward(self, x):
                return self.head(self.blocks(self.act(self.stem(x))).mean((2, 3)))
        return Net()
    return build


def regnet(**cfg):
    def build():
        from timm.models.regnet import RegNet, RegNetCfg
        return RegNet(RegNetCfg(**cfg), num_classes=5)
    return build


def mvitv2(**cfg):
    def build():
        from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg
        return MultiScaleVit(MultiScaleVitCfg(**cfg), img_size=(32, 32), num_classes=5)
    return build


# Tiny versions of each family: the same blocks, ops and exporter artefacts as the
# named model, at a width and depth whose files and references stay small.
TINY = {
    "resnet18": Family(resnet("basic", layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8),
                       (3, 32, 32), 4, True),
    "resnet50": Family(resnet("bottleneck", layers=(1, 1, 1, 1), channels=(4, 8, 12, 16), stem_width=8),
                       (3, 32, 32), 4, False),
    "efficientnet_b0": Family(efficientnet("efficientnet_b0", "efficientnet", channel_multiplier=0.25,
                                           depth_multiplier=0.3), (3, 64, 64), 4, True),
    "mobilenetv3_small_100": Family(efficientnet("mobilenetv3_small_100", "mobilenetv3", channel_multiplier=0.25),
                          (3, 64, 64), 4, False),
    "regnety_002": Family(regnet(depth=6, w0=8, wa=8.0, wm=2.0, group_size=4, se_ratio=0.25, stem_width=8),
                          (3, 32, 32), 4, False),
    "swin_tiny_patch4_window7_224": Family(
        timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4, embed_dim=16,
             depths=(2, 2), num_heads=(1, 2)), (3, 32, 32), 2, True),
    "poolformer_s12": Family(timm("poolformer_s12", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), (3, 32, 32), 2, False),
    "caformer_s18": Family(timm("caformer_s18", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), (3, 64, 64), 2, False),
    "convformer_s18": Family(timm("convformer_s18", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), (3, 32, 32), 2, False),
    "levit_128s": Family(timm("levit_128s", img_size=128, embed_dim=(16, 24, 32), key_dim=8, depth=(1, 1, 1),
                              num_heads=(2, 2, 2)), (3, 128, 128), 4, True),
    "convnextv2_atto": Family(timm("convnextv2_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), (3, 32, 32), 2, False),
    "deit3_small_patch16_224": Family(timm("deit3_small_patch16_224", img_size=32, patch_size=4, embed_dim=32,
                                           depth=2, num_heads=2), (3, 32, 32), 2, False),
    "beit_base_patch16_224": Family(timm("beit_base_patch16_224", img_size=32, patch_size=4, embed_dim=32,
                                         depth=2, num_heads=2), (3, 32, 32), 2, False),
    "eva02_tiny_patch14_224": Family(timm("eva02_tiny_patch14_224", img_size=28, patch_size=7, embed_dim=32,
                                          depth=2, num_heads=2), (3, 28, 28), 2, True),
    "cait_xxs24_224": Family(timm("cait_xxs24_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                                  depth_token_only=1, num_heads=2), (3, 32, 32), 2, False),
    "pvt_v2_b0": Family(timm("pvt_v2_b0", depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 2, 2)),
                        (3, 64, 64), 2, False),
    "mixer_b16_224": Family(timm("mixer_b16_224", img_size=32, patch_size=4, embed_dim=32, num_blocks=2),
                            (3, 32, 32), 2, False),
    "resmlp_12_224": Family(timm("resmlp_12_224", img_size=32, patch_size=4, embed_dim=32, num_blocks=2),
                            (3, 32, 32), 2, False),
    "vit_relpos_small_patch16_224": Family(timm("vit_relpos_small_patch16_224", img_size=32, patch_size=4,
                                                embed_dim=32, depth=2, num_heads=2), (3, 32, 32), 2, True),
    # Families no issue names, for coverage: XCiT's cross-covariance attention and class
    # attention, EdgeNeXt's XCA with depthwise convs, Twins' windowed and subsampled attention.
    "xcit_nano_12_p16_224": Family(timm("xcit_nano_12_p16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                        num_heads=2), (3, 32, 32), 2, False),
    "edgenext_xx_small": Family(timm("edgenext_xx_small", depths=(1, 1, 1, 1), dims=(16, 24, 32, 40)), (3, 64, 64), 2, False),
    "twins_svt_small": Family(timm("twins_svt_small", img_size=64, embed_dims=(16, 24, 32, 48), depths=(1, 1, 1, 1),
                                   num_heads=(1, 1, 2, 2), wss=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1)), (3, 64, 64), 2, False),
    # NF-ResNet's parts: weights standardized by batch_norm in the forward, LeakyReLU.
    "normfree_tiny": Family(normfree(), (3, 32, 32), 2, False),
    # CoaT: a class token in every stage, behind a stride = kernel patch embed; DaViT: channel
    # and windowed attention, its MLP's x a transpose of a reshaped NCHW map.
    "coat_lite_tiny": Family(timm("coat_lite_tiny", img_size=64, embed_dims=(32, 48, 64, 80), serial_depths=(1, 1, 1, 1),
                                  num_heads=8), (3, 64, 64), 2, False),
    "davit_tiny": Family(timm("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
                         (3, 64, 64), 2, False),
    # Sequencer: bidirectional LSTMs along the rows and the columns of the grid as the token
    # mixer (ONNX LSTM, which sbpc unrolls).
    "sequencer2d_s": Family(timm("sequencer2d_s", layers=(1, 1, 1, 1), embed_dims=(16, 24, 24, 24),
                                 hidden_sizes=(8, 8, 8, 8)), (3, 32, 32), 2, True),
    # Families the second sweep found refused (BENCHMARKS, "Families no issue names"). MViTv2
    # with a class token: Einsum relative positions and a slice assignment into part of the
    # attention (ScatterND with indices built from shapes). ConViT: relative indices written
    # by ScatterND on constants, and a class token joining on the same grid (a second stage).
    "mvitv2_cls": Family(mvitv2(depths=(1, 1, 1, 1), embed_dim=8, num_heads=1, use_cls_token=True), (3, 32, 32), 2, True),
    "convit_tiny": Family(timm("convit_tiny", img_size=32, patch_size=4, depth=3, local_up_to_layer=2, embed_dim=8), (3, 32, 32), 2, False),
}

# Families also exported at a fixed batch: (stem, dynamo?, batch). sbpc re-batches them to
# the reference's batch. (A BatchNorm net in train mode cannot run at batch 1.)
FIXED_BATCH = {
    "resnet18": (("ts17_b2", False, 2), ("dynamo_b2", True, 2)),
    "deit3_small_patch16_224": (("ts17_b1", False, 1), ("dynamo_b1", True, 1)),
}

FIXED_BATCH_REFUSED = {"swin_tiny_patch4_window7_224"}

FULL_DYNAMO = {"resnet50", "swin_tiny_patch4_window7_224", "efficientnet_b0"}
# Batch 8 for the ResNets: at batch 2 PyTorch's own float32 step misses the bars against
# float64 on 115 of resnet50's 161 gradients (a deep random-init BatchNorm net at 2 samples).
FULL_BATCH = {"resnet18": 8, "resnet50": 8}
FULL = {name: Family(functools.partial(eft.timm_model, name), (3, 224, 224), FULL_BATCH.get(name, 2), name in FULL_DYNAMO)
        for name in ("resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_small_100", "regnety_002",
                     "swin_tiny_patch4_window7_224", "poolformer_s12", "caformer_s18", "convformer_s18",
                     "levit_128s", "convnextv2_atto", "deit3_small_patch16_224", "beit_base_patch16_224",
                     "eva02_tiny_patch14_224", "cait_xxs24_224", "pvt_v2_b0", "mixer_b16_224",
                     "resmlp_12_224", "vit_relpos_small_patch16_224", "xcit_nano_12_p16_224", "edgenext_xx_small",
                     "twins_svt_small", "sequencer2d_s", "mvitv2_tiny", "convit_tiny")}


def seed(name, salt):
    import zlib
    return zlib.crc32(f"{name}/{salt}".encode())


@torch.no_grad()
def perturb(model, name):
    """Distinct values everywhere: norm weights near 1, running variances positive,
    layer-scale-like tiny parameters lifted so their branches matter."""
    g = torch.Generator().manual_seed(seed(name, "perturb"))
    for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
        if not p.is_floating_point() or p.numel() == 0:
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if pname.endswith("running_var"):
            p.copy_(0.5 + noise.abs())
        elif pname.endswith("running_mean"):
            p.copy_(0.1 * noise)
        elif isinstance(p, torch.nn.Parameter):
            small = float(p.abs().max()) < 1e-3 if p.numel() else False
            p.add_((0.2 if small else 0.02) * noise)
    seen = {}
    for pname, p in model.named_parameters():
        d = hashlib.sha256(p.detach().numpy().tobytes()).hexdigest()
        if d in seen:
            raise SystemExit(f"{name}: parameters {seen[d]} and {pname} are equal")
        seen[d] = pname


def build(name, fam):
    torch.manual_seed(seed(name, "init"))
    model = fam.build()
    perturb(model, name)
    return model


def initializer_map(path, model):
    """{initializer: (param, transpose, shape)} by value, with every trainable parameter
    found exactly once; BatchNorm statistics by value too, as ('buffer', name)."""
    params = {k: v.detach().numpy() for k, v in model.named_parameters()}
    buffers = {k: v.detach().numpy() for k, v in model.named_buffers()
               if k.endswith(("running_mean", "running_var"))}
    by_bytes = collections.defaultdict(list)
    for kind, table in (("param", params), ("buffer", buffers)):
        for k, v in table.items():
            by_bytes[np.ascontiguousarray(v).tobytes()].append((kind, k, False))
            if v.ndim == 2 and v.shape[0] != v.shape[1] and 1 not in v.shape:
                by_bytes[np.ascontiguousarray(v.T).tobytes()].append((kind, k, True))
    m = onnx.load(path)
    mapping, used = {}, collections.Counter()
    for t in m.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t, base_dir=os.path.dirname(path))
        hits = by_bytes.get(np.ascontiguousarray(a).tobytes(), [])
        if len(hits) > 1:
            raise SystemExit(f"{path}: {t.name} matches {hits}")
        if hits:
            kind, k, tr = hits[0]
            mapping[t.name] = (kind, k, tr, list(a.shape))
            used[k] += 1
    missing = [k for k in params if used[k] != 1]
    if missing:
        raise SystemExit(f"{path}: parameters not one-to-one with initializers: "
                         f"{[(k, used[k]) for k in missing]}")
    return mapping


def write_reference(name, fam, out, dynamo_too, control_float32=False):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model = build(name, fam)
    exports = {"ts17": os.path.join(out, "model_ts17.onnx")}
    eft.export_for_training(model, exports["ts17"], fam.chw, 17, False, check=True)
    if dynamo_too:
        exports["dynamo"] = os.path.join(out, "model_dynamo.onnx")
        eft.export_for_training(model, exports["dynamo"], fam.chw, 18, True, check=True)
    for stem, dyn, b in FIXED_BATCH.get(name, ()):
        exports[stem] = os.path.join(out, f"model_{stem}.onnx")
        eft.export_for_training(model, exports[stem], fam.chw, 18 if dyn else 17, dyn, check=True, fixed_batch=b)
    refused = []
    if name in FIXED_BATCH_REFUSED:
        # Swin merges the batch into its windows ([B·nW, …]): sbpc refuses to re-batch it.
        refused.append("model_ts17_b1.onnx")
        eft.export_for_training(model, os.path.join(out, refused[0]), fam.chw, 17, False, check=True, fixed_batch=1)
    maps = {stem: initializer_map(p, model) for stem, p in exports.items()}
    x = torch.randn((fam.batch, *fam.chw), generator=torch.Generator().manual_seed(seed(name, "input")))
    labels = torch.arange(fam.batch) % 5
    # The step runs in float64, and its results are rounded to float32: the reference is
    # then the exact step up to one rounding, and a PyTorch float32 step is compared with
    # it like sbpc is.  (On a BatchNorm net at a small batch, PyTorch's own float32 step is
    # up to 5e-3 away from float64 in max-relative terms: a float32 reference would measure
    # PyTorch's rounding as much as sbpc's.)
    # A control for the full-size models: PyTorch's own float32 step from the same state,
    # which compare_family.py measures against the float64 one with the same bars.
    control = None
    if control_float32:
        twin = copy.deepcopy(model).train()
        torch.nn.functional.cross_entropy(twin(x), labels).backward()
        control = dict(twin.named_parameters())
    model.double().train()
    model.zero_grad()
    logits = model(x.double())
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    np.save(os.path.join(out, "input.npy"), x.numpy())
    np.save(os.path.join(out, "labels.npy"), labels.numpy().astype(np.int64))
    np.save(os.path.join(out, "logits.npy"), logits.detach().float().numpy())
    np.save(os.path.join(out, "loss.npy"), np.array([loss.item()], dtype=np.float32))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    manifest = {"family": name, "batch": fam.batch, "input": list(fam.chw), "exports": {}, "rebatch_refused": refused}
    for stem, mapping in maps.items():
        gdir, sdir = os.path.join(out, stem, "grads"), os.path.join(out, stem, "state")
        os.makedirs(gdir)
        os.makedirs(sdir)
        trainable, state = [], []
        for init, (kind, k, tr, shape) in sorted(mapping.items()):
            fname = init.replace("/", "_") + ".npy"
            if kind == "param":
                g = params[k].grad
                g = torch.zeros_like(params[k]) if g is None else g
                g = g.detach().float().numpy()
                np.save(os.path.join(gdir, fname), (g.T if tr else g).reshape(shape))
                trainable.append(init)
                if control is not None:
                    os.makedirs(os.path.join(out, stem, "grads_torch32"), exist_ok=True)
                    c = control[k].grad.detach().numpy()
                    np.save(os.path.join(out, stem, "grads_torch32", fname), (c.T if tr else c).reshape(shape))
            else:
                np.save(os.path.join(sdir, fname), buffers[k].detach().float().numpy().reshape(shape))
                state.append(init)
        manifest["exports"][stem] = {"file": os.path.basename(exports[stem]), "trainable": trainable, "state": state}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


SWEEP_TS = (13, 14, 15, 16, 18, 19, 20)
SWEEP_DYNAMO = (18, 20, 21)


def align_names(path, ref):
    """Rename `path`'s float initializers to the names `ref` gives the same values. The
    exporter names a module shared by several blocks (CoaT's convolutional position encodings)
    after whichever use it meets first, and that differs between opsets; the references are
    keyed by the ts17 export's names."""
    names = collections.defaultdict(list)
    for t in onnx.load(ref).graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            names[numpy_helper.to_array(t, base_dir=os.path.dirname(ref)).tobytes()].append(t.name)
    m = onnx.load(path)
    taken = {t.name for t in m.graph.initializer}
    renamed = {}
    for t in m.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        hits = names.get(numpy_helper.to_array(t).tobytes(), [])
        if len(hits) == 1 and hits[0] != t.name and hits[0] not in taken:
            renamed[t.name] = hits[0]
            taken.add(hits[0])
            t.name = hits[0]
    if not renamed:
        return
    for n in m.graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    for i in m.graph.input:
        i.name = renamed.get(i.name, i.name)
    onnx.save(m, path)


def sweep(out, only=()):
    """Export every tiny family at the other opsets, TorchScript and dynamo, into `out`, as
    <family>__ts<opset>.onnx / <family>__dy<opset>.onnx, same weights as models/families/."""
    os.makedirs(out, exist_ok=True)
    for name, fam in TINY.items():
        if only and not any(o in name for o in only):
            continue
        model = build(name, fam)
        for dyn, opsets in ((False, SWEEP_TS), (True, SWEEP_DYNAMO)):
            for opset in opsets:
                path = os.path.join(out, f"{name}__{'dy' if dyn else 'ts'}{opset}.onnx")
                eft.export_for_training(model, path, fam.chw, opset, dyn, check=False)
                align_names(path, os.path.join(HERE, "families", name, "model_ts17.onnx"))
                print("wrote", path, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size models into models/full/families/")
    ap.add_argument("--only", action="append", default=[], help="families whose name contains this")
    ap.add_argument("--sweep", metavar="DIR", help="only export the tiny families at opsets "
                    f"{SWEEP_TS} (TorchScript) and {SWEEP_DYNAMO} (dynamo) into DIR")
    args = ap.parse_args(argv)
    if args.sweep:
        sweep(args.sweep, args.only)
        return 0
    table = FULL if args.full else TINY
    root = os.path.join(HERE, "full", "families") if args.full else os.path.join(HERE, "families")
    failed = []
    for name, fam in table.items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.time()
        try:
            m = write_reference(name, fam, os.path.join(root, name), fam.dynamo, control_float32=args.full)
            n = len(m["exports"]["ts17"]["trainable"])
            print(f"{name}: {n} trainable initializers, exports {sorted(m['exports'])} ({time.time() - t0:.1f} s)")
        except (SystemExit, Exception) as e:  # keep going: report every family
            failed.append(name)
            print(f"{name}: FAILED: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if failed:
        print("failed:", " ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
