# export_for_training.py: exports a timm model or your own nn.Module to ONNX the way sbpc trains it (train mode, BatchNorm kept).
"""Export an image classifier to ONNX for training with sbpc.

    python3 models/export_for_training.py resnet50 -o resnet50.onnx
    python3 models/export_for_training.py swin_tiny_patch4_window7_224 --num-classes 10 -o swin.onnx
    python3 models/export_for_training.py --module my_model.py:build --img-size 96 -o mine.onnx
    python3 models/export_for_training.py resnet18 --dynamo -o resnet18_dynamo/model.onnx

What it does, and why each step matters for training:

  * The model is put in train() mode and exported with TrainingMode.TRAINING.  An
    eval-mode export folds every BatchNorm into the convolution before it: sbpc would
    then train the folded weights with running-statistics semantics, which is another
    model (the step-0 loss is 0.3-2.3% away from PyTorch's training loss on resnet50,
    efficientnet_b0 and regnety_002).  In train mode BatchNormalization stays a node
    and sbpc normalizes with the batch statistics and updates the running ones.
  * No constant folding: folding would merge parameters with the constants around
    them (a scale multiplied into a weight), and what is trained would no longer be
    the model's parameters.
  * The batch dimension is symbolic (named `batch`), so `sbpc compile --batch N`
    picks any batch.
  * Dropout and drop-path: sbpc has no dropout, and a training-mode export bakes an
    active dropout into the graph (sbpc refuses such a graph, naming the node).  So this
    script sets every dropout and drop-path rate to 0 before exporting, including rates
    a model hard-codes, and says how many it changed.  --keep-dropout exports them as
    they are.
  * Equal-valued parameters: the TorchScript exporter in training mode keeps every
    parameter its own initializer.  sbpc warns if a file shares one initializer between
    two layers (an eval-mode export merges equal tensors, e.g. zero-initialized
    convolutions), and unties it unless you compile with --keep-tied.

The model is checked with onnx.checker and, unless --no-check, against PyTorch's
train-mode forward with onnxruntime at batch 2 and 3 (a BatchNorm model in train
mode normalizes over the batch, so both sides use the same batch).

Install the tools with `pip install --no-deps -r models/requirements.txt`.
"""

import argparse
import importlib.util
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export  # noqa: E402  (makes torchvision importable without its compiled ops)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"

# timm's fused attention calls scaled_dot_product_attention, which the TorchScript
# exporter cannot take from every model (EVA passes a tensor as is_causal).  The explicit
# form computes the same function and exports as MatMul/Softmax everywhere.
import timm.layers  # noqa: E402

timm.layers.set_fused_attn(False)
TIMM_DROP_ARGS = ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate")


def timm_model(name, num_classes=None, no_dropout=True, **kwargs):
    """A timm model with random weights (pretrained=False) and, by default, no dropout."""
    import timm

    if no_dropout:
        for arg in TIMM_DROP_ARGS:
            kwargs.setdefault(arg, 0.0)
        try:
            return timm.create_model(name, pretrained=False, **_with_classes(kwargs, num_classes))
        except TypeError:
            # Not every class takes the attention and projection rates.
            for arg in TIMM_DROP_ARGS[2:]:
                kwargs.pop(arg, None)
    return timm.create_model(name, pretrained=False, **_with_classes(kwargs, num_classes))


def _with_classes(kwargs, num_classes):
    return dict(kwargs, num_classes=num_classes) if num_classes is not None else kwargs


def module_from(spec):
    """FILE.py:FUNCTION -> the nn.Module FUNCTION() returns."""
    path, _, func = spec.partition(":")
    if not func or not path.endswith(".py"):
        raise SystemExit(f"--module {spec}: expected FILE.py:FUNCTION")
    if not os.path.isfile(path):
        raise SystemExit(f"--module {spec}: no file {path}")
    loaded = importlib.util.spec_from_file_location("user_model", path)
    mod = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(mod)
    if not hasattr(mod, func):
        raise SystemExit(f"--module {spec}: {path} has no {func}")
    model = getattr(mod, func)()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"--module {spec}: {func}() returned {type(model).__name__}, not an nn.Module")
    return model


def zero_dropout(model):
    """Set every dropout and drop-path rate to 0, including those a model hard-codes
    (timm's relative-position MLP has a fixed dropout of 0.125); returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p:
            m.p, n = 0.0, n + 1
        elif getattr(m, "drop_prob", None):
            m.drop_prob, n = 0.0, n + 1
    return n


def export_for_training(model, path, chw, opset=17, dynamo=False, check=True, keep_dropout=False, fixed_batch=None):
    """Write `path` (and, with dynamo, path + '.data' for the weights) for sbpc to train.
    With fixed_batch the batch is not symbolic (what many exports do; sbpc re-batches them).
    Returns how many dropout rates were set to 0."""
    zeroed = 0 if keep_dropout else zero_dropout(model)
    model.train()
    x = torch.randn((fixed_batch or 2, *chw), generator=torch.Generator().manual_seed(0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Exporting runs the model in train mode, which moves BatchNorm's running statistics.
    # Export a copy of the state and restore it, so the file holds the model as given.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=max(opset, 18),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=None if fixed_batch else ({0: torch.export.Dim(BATCH_DIM, min=1, max=4096)},),
                optimize=False, training=torch.onnx.TrainingMode.TRAINING)
            model.load_state_dict(state)
            program.apply_weights({k: v for k, v in state.items()})
            program.save(path, external_data=True)
            _mark_training_batchnorm(path)
        else:
            torch.onnx.export(
                model, (x,), path, dynamo=False, opset_version=opset,
                training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes=None if fixed_batch else {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}})
            model.load_state_dict(state)
            _restore_state(path, model)
    onnx.checker.check_model(path if not dynamo else path, full_check=False)
    if check:
        check_against_torch(model, path, chw, (fixed_batch,) if fixed_batch else (2, 3))
    return zeroed


def _mark_training_batchnorm(path):
    """The dynamo exporter writes a train-mode BatchNorm (aten's
    _native_batch_norm_legit_functional with training=True) as BatchNormalization without
    training_mode, which ONNX reads as inference.  Set training_mode=1 on those nodes so
    onnxruntime computes what PyTorch does (sbpc reads the node's metadata either way)."""
    m = onnx.load(path, load_external_data=False)
    changed = 0
    for n in m.graph.node:
        if n.op_type != "BatchNormalization" or any(a.name == "training_mode" for a in n.attribute):
            continue
        fx = next((p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        if "_native_batch_norm_legit_functional" in fx and ", True, " in fx:
            n.attribute.append(onnx.helper.make_attribute("training_mode", 1))
            # ONNX's training form has the updated running statistics as outputs 2 and 3.
            while len(n.output) < 3:
                n.output.append(f"{n.name}_running_{'mean' if len(n.output) == 1 else 'var'}")
            changed += 1
    if changed:
        onnx.save(m, path)


def _restore_state(path, model):
    """Write the model's state (before the export's forward moved BatchNorm's running
    statistics) into the file's initializers of the same name."""
    from onnx import numpy_helper

    m = onnx.load(path)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    changed = False
    for i, t in enumerate(m.graph.initializer):
        if t.name in state and t.name.endswith(("running_mean", "running_var")):
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(state[t.name].astype(np.float32), t.name))
            changed = True
    if changed:
        onnx.save(m, path)


def check_against_torch(model, path, chw, batches=(2, 3)):
    """onnxruntime runs the file in train-mode semantics; compare with PyTorch's forward."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for batch in batches:
        x = torch.randn((batch, *chw), generator=torch.Generator().manual_seed(batch))
        model.train()
        with torch.no_grad():
            want = model(x).numpy()
        model.load_state_dict(state)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        if err > 1e-3:
            raise SystemExit(f"{path}: onnxruntime's logits differ from PyTorch's at batch {batch} "
                             f"(relative error {err:.2e})")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export a timm model or an nn.Module to ONNX for sbpc training.",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="a timm model name (random weights; nothing is downloaded)")
    ap.add_argument("--module", metavar="FILE.py:FUNCTION", help="export FUNCTION()'s nn.Module instead")
    ap.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    ap.add_argument("--img-size", type=int, default=None, help="input height and width (default: the model's, else 224)")
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=None, help="replace the classifier (timm models)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset, 13 to 21 (default 17)")
    ap.add_argument("--dynamo", action="store_true", help="use the dynamo exporter; weights go to OUTPUT.data")
    ap.add_argument("--keep-dropout", action="store_true",
                    help="keep the model's dropout rates (sbpc then refuses the export)")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = ap.parse_args(argv)
    if (args.name is None) == (args.module is None):
        ap.error("give a timm model name or --module FILE.py:FUNCTION")
    if not 13 <= args.opset <= 21:
        ap.error(f"--opset {args.opset}: sbpc reads opsets 13 to 21")
    if args.module:
        model = module_from(args.module)
        size = args.img_size or 224
    else:
        kwargs = {}
        if args.img_size:
            kwargs["img_size"] = args.img_size
        try:
            model = timm_model(args.name, args.num_classes, no_dropout=not args.keep_dropout, **kwargs)
        except TypeError:
            kwargs.pop("img_size", None)  # CNNs take any size and no img_size argument
            model = timm_model(args.name, args.num_classes, no_dropout=not args.keep_dropout, **kwargs)
        except RuntimeError as e:
            raise SystemExit(f"{args.name}: {e}")
        size = args.img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    zeroed = export_for_training(model, args.output, (args.in_chans, size, size), args.opset, args.dynamo,
                                 not args.no_check, args.keep_dropout)
    print(f"wrote {args.output}: train mode, BatchNorm kept, no constant folding, batch symbolic "
          f"({sum(p.numel() for p in model.parameters())} parameters)")
    if zeroed:
        print(f"note: set {zeroed} dropout / drop-path rates to 0 (sbpc has no dropout; --keep-dropout keeps them)")


if __name__ == "__main__":
    main()
