# Exports the reference ONNX models for sbpc: seeded, perturbed timm models from both PyTorch exporters.
"""Export reference ONNX models for sbpc.

Every model is a timm model with random, seeded weights (pretrained=False: nothing
is ever downloaded).  After construction every parameter is perturbed to distinct
values, because exporters merge initializers whose values are identical (a fresh
model has every LayerNorm weight equal to one) and hide the merge behind Identity
nodes, which would make tests see tied weights.  The script refuses to write a
model with two equal parameters, and reports any duplicate initializer it finds in
the exported files.

Each model is exported up to three ways, all with a symbolic batch dimension
named `batch` on the input `input` and the output `logits`:

  <name>_ts17.onnx        TorchScript exporter (dynamo=False), opset 17, one file
  <name>_ts14.onnx        TorchScript exporter, opset 14 (LayerNorm decomposed)
  <name>_dynamo/model.onnx + model.onnx.data
                          dynamo exporter (torch.export), its default opset,
                          every float initializer in external data (integer
                          shape operands stay inline)

Which ways a model gets is in its Spec: the first tiny models get all three, the
later tiny ones only ts17 (and DeiT the dynamo export too), the full-size ones ts17
and dynamo.  Beside them <name>.ref/input.npy (batch 2,
float32) and <name>.ref/logits.npy (PyTorch eval forward) are written, and each file
is checked with onnx.checker and against the PyTorch logits with onnxruntime, at
batch 2 and at batch 3.

Install the pinned tools with `pip install --no-deps -r models/requirements.txt`.
"""

import argparse
import collections
import glob
import hashlib
import importlib.util
import os
import shutil
import sys
import warnings
import zlib

import numpy as np
import torch


def _torchvision_without_ops():
    """Let torchvision import although its compiled ops cannot load.

    PyPI's torchvision wheels are CUDA builds whose _C.so links libtorch_cuda, which
    the CPU torch wheel lacks.  torchvision then runs without its ops, except that it
    registers fake kernels for nms/qnms unconditionally and fails because those ops
    were never defined.  Define their schemas first (timm only needs torchvision's
    Python parts).  Does nothing when the ops load.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    try:
        if libs:
            torch.ops.load_library(libs[0])
            return
    except OSError:
        pass
    global _TV_LIB  # keep the library object alive
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _TV_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_torchvision_without_ops()

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
from timm.models.convnext import ConvNeXt  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
ATOL = 1e-4
REF_BATCH = 2
CHECK_BATCH = 3  # a second batch size, to prove the batch dimension is symbolic
TWO_GB = 2**31
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


class Spec(collections.namedtuple("Spec", "builder chw ts_opsets dynamo")):
    """How to build a model, its input's [C, H, W], and which files to export:
    a TorchScript file per opset in ts_opsets, and the dynamo export if dynamo."""


# Tiny models, committed to git.
TINY = {
    "vit_p4_d6": Spec(
        lambda: VisionTransformer(
            img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=2, num_classes=10
        ),
        (3, 32, 32),
        (17, 14),
        True,
    ),
    "convnext_t1131": Spec(
        lambda: ConvNeXt(depths=(1, 1, 3, 1), dims=(16, 32, 64, 128), num_classes=10),
        (3, 64, 64),
        (17, 14),
        True,
    ),
    # No class token: the head averages the patch tokens.
    "vit_avg_p4_d4": Spec(
        lambda: VisionTransformer(
            img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=10,
            class_token=False, global_pool="avg",
        ),
        (3, 32, 32),
        (17,),
        False,
    ),
    # DeiT: class and distillation tokens, two heads averaged (the eval path).
    "deit_dist_p4_d4": Spec(
        lambda: VisionTransformerDistilled(
            img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=10
        ),
        (3, 32, 32),
        (17,),
        True,
    ),
    # ConvNeXt whose MLP is 1x1 convolutions on NCHW, with LayerNorm2d.
    "convnext_convmlp_t1131": Spec(
        lambda: ConvNeXt(
            depths=(1, 1, 3, 1), dims=(16, 32, 64, 128), num_classes=10, conv_mlp=True
        ),
        (3, 64, 64),
        (17,),
        False,
    ),
    # ViT with LayerScale after attention and MLP.
    "vit_ls_p4_d2": Spec(
        lambda: VisionTransformer(
            img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10,
            init_values=0.1,
        ),
        (3, 32, 32),
        (17,),
        False,
    ),
}

# Full-size timm models, written by --full to models/full/ (ignored by git).
FULL = {
    name: Spec((lambda n=name: timm.create_model(n, pretrained=False)), (3, 224, 224), (17,), True)
    for name in (
        "vit_tiny_patch16_224",
        "vit_base_patch16_224",
        "convnext_tiny",
        "vit_small_patch16_224",
        "deit_tiny_distilled_patch16_224",
    )
}
# ViT-Tiny with an average-pool head and no class token: SBP's dropped rows stay live there.
FULL["vit_tiny_avg_patch16_224"] = Spec(
    lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", class_token=False),
    (3, 224, 224),
    (17,),
    True,
)

NORMS = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.batchnorm._BatchNorm,
)


def seed_of(name, salt):
    """A seed that depends only on the model's name, so --only changes nothing."""
    return zlib.crc32(f"{name}/{salt}".encode())


@torch.no_grad()
def perturb(model, seed):
    """Move every parameter to distinct, non-degenerate values.

    Norm weights become 1 + 0.1*randn, layer-scale gammas (1e-6 in ConvNeXt, which
    would switch the residual branches off; one constant in ViT's LayerScale)
    0.5 + 0.1*randn, and everything else,
    zero biases included, gets + 0.02*randn.
    """
    g = torch.Generator().manual_seed(seed)
    norm_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, NORMS) and m.weight is not None
    }
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        if id(p) in norm_weights:
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith("gamma"):
            p.copy_(0.5 + 0.1 * noise)
        else:
            p.add_(0.02 * noise)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            raise SystemExit(f"float buffer {name}: perturb() does not handle buffers")
    seen = {}
    for name, p in model.named_parameters():
        digest = hashlib.sha256(p.detach().cpu().numpy().tobytes()).hexdigest()
        if digest in seen:
            raise SystemExit(f"parameters {seen[digest]} and {name} are equal")
        seen[digest] = name
        flat = p.detach().flatten()
        if flat.numel() > 1 and bool((flat == flat[0]).all()):
            raise SystemExit(f"parameter {name} is constant")


def build(name, spec):
    torch.manual_seed(seed_of(name, "init"))
    model = spec.builder()
    perturb(model, seed_of(name, "perturb"))
    model.eval()
    return model, spec.chw


def make_input(name, chw, batch):
    g = torch.Generator().manual_seed(seed_of(name, f"input{batch}"))
    return torch.randn((batch, *chw), generator=g, dtype=torch.float32)


def export_ts(model, x, path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )


def export_dynamo(model, x, folder):
    """Dynamo export, saved with every initializer in one external data file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
            verbose=False,
        )
    proto = program.model_proto
    # Stack traces hold this machine's file paths and triple the file's size.
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    path = os.path.join(folder, "model.onnx")
    # The exporter's own save keeps tensors under ~512 bytes inline (LayerNorm weights
    # of the tiny models among them).  Move every floating-point initializer out; keep
    # integer ones (Reshape/Slice/Squeeze operands) inline, because neither
    # onnxruntime nor onnx shape inference reads shape operands from external data.
    for t in proto.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            if not t.HasField("raw_data"):
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
            onnx.external_data_helper.set_external_data(t, "model.onnx.data")
    onnx.save_model(proto, path)
    left = [
        t.name
        for t in onnx.load(path, load_external_data=False).graph.initializer
        if t.data_type in FLOAT_TYPES and t.data_location != onnx.TensorProto.EXTERNAL
    ]
    if left:
        raise SystemExit(f"{path}: initializers left inline: {left}")
    os.chmod(os.path.join(folder, "model.onnx.data"), 0o644)  # onnx writes it 0600
    return path


def duplicate_initializers(path):
    """Groups of initializers (more than one element) with equal type, shape and data."""
    model = onnx.load(path)
    groups = collections.defaultdict(list)
    for t in model.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        if a.size > 1:
            groups[(a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())].append(t.name)
    return [names for names in groups.values() if len(names) > 1]


def check(path, model, name, chw, ref_x, ref_y):
    onnx.checker.check_model(path)
    # Shape inference on a path cannot read external data: run it on the loaded model.
    onnx.shape_inference.infer_shapes(onnx.load(path), check_type=True, strict_mode=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x, y in ((ref_x, ref_y), (make_input(name, chw, CHECK_BATCH), None)):
        if y is None:
            with torch.no_grad():
                y = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != y.shape:
            raise SystemExit(f"{path}: shape {got.shape}, expected {y.shape}")
        worst = max(worst, float(np.abs(got - y).max()))
    dups = duplicate_initializers(path)
    ok = worst <= ATOL and not dups
    opset = {o.domain or "ai.onnx": o.version for o in onnx.load(path, load_external_data=False).opset_import}
    print(
        f"  {'ok  ' if ok else 'FAIL'} {os.path.relpath(path, os.getcwd())}: opset {opset.get('ai.onnx')}, "
        f"max |onnxruntime - torch| = {worst:.2e} (atol {ATOL:g}), batch {REF_BATCH} and {CHECK_BATCH}"
        + (f", duplicate initializers {dups}" if dups else "")
    )
    return ok


def export_model(name, spec, out):
    print(f"{name}:")
    model, chw = build(name, spec)
    x = make_input(name, chw, REF_BATCH)
    with torch.no_grad():
        y = model(x).numpy()
    ref = os.path.join(out, f"{name}.ref")
    os.makedirs(ref, exist_ok=True)
    np.save(os.path.join(ref, "input.npy"), x.numpy())
    np.save(os.path.join(ref, "logits.npy"), y)

    paths = []
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for opset in spec.ts_opsets:
        if nbytes >= TWO_GB:
            print(f"  skip {name}_ts{opset}.onnx: weights over 2 GB")
            continue
        path = os.path.join(out, f"{name}_ts{opset}.onnx")
        export_ts(model, x, path, opset)
        paths.append(path)
    if spec.dynamo:
        paths.append(export_dynamo(model, x, os.path.join(out, f"{name}_dynamo")))

    ok = True
    for path in paths:
        ok &= check(path, model, name, chw, x, y)
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Export sbpc's reference ONNX models (seeded, perturbed timm models; "
        "TorchScript opset 17 (and 14) exports and a dynamo export with external data), "
        "with input/logits references, checked with onnxruntime.",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="export the full-size models (%s) instead of the tiny ones" % ", ".join(FULL),
    )
    parser.add_argument(
        "--out",
        help="output folder (default: models/ for the tiny models, models/full/ with --full)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="export only this model (repeatable); tiny: %s" % ", ".join(TINY),
    )
    args = parser.parse_args(argv)

    specs = FULL if args.full else TINY
    out = args.out or (os.path.join(HERE, "full") if args.full else HERE)
    names = args.only or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(specs)}")
    os.makedirs(out, exist_ok=True)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, timm {timm.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}")
    ok = True
    for name in names:
        ok &= export_model(name, specs[name], out)
    if not ok:
        print("some checks failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
