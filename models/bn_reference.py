# bn_reference.py: a tiny BatchNorm CNN exported for training, and PyTorch's train-mode step on it (BatchNorm's oracle).
"""Write models/reference_bn/cnn_bn.onnx and models/reference_bn/cnn_bn/ for sbpc's BatchNorm tests.

The model is conv 3x3 -> BatchNorm -> ReLU -> MaxPool 2 -> conv 1x1 -> BatchNorm -> ReLU ->
global average pool -> linear, every parameter and running statistic perturbed to a
distinct value (so the exporter merges nothing and each reference belongs to one tensor).
It is exported as DESIGN.md says a model is exported for training: train mode,
TrainingMode.TRAINING, no constant folding, a symbolic batch, opset 17.

The reference is one training step in train() mode on a fixed batch: the logits, the mean
cross-entropy, every parameter's gradient and the running mean and variance after the
step's forward (momentum 0.1, unbiased variance), as .npy files named after the parameters.

    python3 models/bn_reference.py          # needs models/requirements.txt
"""
import os

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "reference_bn", "cnn_bn")
ONNX = os.path.join(HERE, "reference_bn", "cnn_bn.onnx")


class CnnBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build():
    torch.manual_seed(7)
    m = CnnBn()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.rand(t.shape, generator=g) * 0.2
            if name.endswith("running_var"):
                t.copy_(0.5 + noise * 4)  # positive, distinct
            else:
                t.add_(noise - 0.1)
    return m


def main():
    os.makedirs(OUT, exist_ok=True)
    model = build()
    x = torch.tensor(((np.arange(4 * 3 * 8 * 8) * 0.37) % 2.3 - 1.1).reshape(4, 3, 8, 8), dtype=torch.float32)
    labels = torch.tensor([1, 4, 0, 3])
    model.train()
    torch.onnx.export(
        model, (x,), ONNX, opset_version=17, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False)
    # The export traced a forward in train mode, which moved the running statistics: take
    # the state the file holds, so the reference starts where sbpc starts.
    import onnx
    from onnx import numpy_helper
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(ONNX).graph.initializer}
    model = build()
    missing = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, f"the export renamed {missing}"
    model.load_state_dict(state, strict=False)
    model.train()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, labels)
    loss.backward()
    np.save(os.path.join(OUT, "input.npy"), x.numpy())
    np.save(os.path.join(OUT, "labels.npy"), labels.numpy().astype(np.int64))
    np.save(os.path.join(OUT, "logits.npy"), logits.detach().numpy())
    np.save(os.path.join(OUT, "loss.npy"), np.array([loss.item()], dtype=np.float32))
    os.makedirs(os.path.join(OUT, "grads"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "state"), exist_ok=True)
    for name, p in model.named_parameters():
        np.save(os.path.join(OUT, "grads", name + ".npy"), p.grad.numpy())
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            np.save(os.path.join(OUT, "state", name + ".npy"), b.numpy())
    print("wrote", ONNX, "and", OUT)


def groupnorm():
    """TorchScript exports GroupNorm through InstanceNormalization whose scale and bias are
    Constant nodes: models/reference_bn/groupnorm.onnx and its forward on a fixed input."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with torch.no_grad():
        m[1].weight.add_(torch.rand(4))
        m[1].bias.add_(torch.rand(4))
    x = torch.tensor(((np.arange(2 * 3 * 5 * 5) * 0.53) % 1.7 - 0.8).reshape(2, 3, 5, 5), dtype=torch.float32)
    path = os.path.join(HERE, "reference_bn", "groupnorm.onnx")
    torch.onnx.export(
        m, (x,), path, opset_version=17, training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    out = os.path.join(HERE, "reference_bn", "groupnorm")
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "input.npy"), x.numpy())
    np.save(os.path.join(out, "logits.npy"), m(x).detach().numpy())
    print("wrote", path, "and", out)


def dynamo_train():
    """The same CNN through the dynamo exporter in train mode, as it writes it: BatchNormalization
    without training_mode (ONNX's inference form), the training shown only in each node's
    fx metadata.  sbpc must train it with batch statistics and not call it an eval export."""
    model = build()
    model.train()
    x = torch.zeros(4, 3, 8, 8)
    folder = os.path.join(HERE, "reference_bn", "cnn_bn_dynamo")
    os.makedirs(folder, exist_ok=True)
    program = torch.onnx.export(
        model, (x,), dynamo=True, opset_version=18, input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), optimize=False,
        training=torch.onnx.TrainingMode.TRAINING)
    program.save(os.path.join(folder, "model.onnx"), external_data=True)
    import onnx
    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert bns and not any(a.name == "training_mode" for n in bns for a in n.attribute), "dynamo now writes training_mode"
    print("wrote", folder)


if __name__ == "__main__":
    groupnorm()
    main()
    dynamo_train()
