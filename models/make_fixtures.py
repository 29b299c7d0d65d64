# Writes the tiny hand-built ONNX fixtures in Tests/Fixtures/ for sbpc's importer tests (valid and bad inputs).
"""Write the hand-built ONNX fixtures for sbpc's importer tests.

Each file is a few hundred bytes, built directly with onnx.helper (no exporter), and
each bad one has exactly one problem; everything else in it is valid.  Most share a
base graph:

    x: f32[batch, 4]  ->  MatMul(x, W[4,3])  ->  Add(_, B[3])  ->  y: f32[batch, 3]

Opset 17 and IR version 8 unless a fixture says otherwise.  Output is deterministic
(fixed values, no timestamps), so a rerun gives the same bytes.  The script only
touches the entries it writes (Tests/Fixtures/README.md is written by hand and
describes them).

    python3 models/make_fixtures.py            # write into Tests/Fixtures/
    python3 models/make_fixtures.py --check    # write, then check each fixture is
                                               # as valid / as broken as described
"""

import argparse
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "Tests", "Fixtures")

OPSET = 17
IR_VERSION = 8
PRODUCER = "sbpc models/make_fixtures.py"

# Distinct values, exactly representable in f32.
W_VALUES = (np.arange(12, dtype=np.float32).reshape(4, 3) * 0.125 - 0.5).astype(np.float32)
W_VALUES[W_VALUES == 0] = 0.0625  # keep every value distinct and non-zero
B_VALUES = np.array([0.25, -0.75, 1.5], dtype=np.float32)


# ---------------------------------------------------------------------------
# building blocks


def x_input(dims=("batch", 4)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))


def y_output(dims=("batch", 3), name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def init(name, array):
    """Inline initializer with raw_data (little-endian f32)."""
    return helper.make_tensor(name, TensorProto.FLOAT, list(array.shape), array.tobytes(), raw=True)


def raw_tensor(name, dims, data):
    """Initializer built by hand, so that raw_data need not match dims (make_tensor checks)."""
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.raw_data = data
    return t


def external(name, dims, location, offset, length):
    """Initializer whose bytes live in an external file."""
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key = key
        entry.value = value
    return t


def linear_nodes(a="x", w="W", b="B", out="y"):
    return [
        helper.make_node("MatMul", [a, w], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", b], [out], name="add"),
    ]


def model(graph_name, nodes, inputs, outputs, initializers, opset=OPSET, value_info=()):
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializers, value_info=list(value_info))
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=PRODUCER,
        ir_version=IR_VERSION,
    )
    return m


def base(graph_name, opset=OPSET):
    return model(graph_name, linear_nodes(), [x_input()], [y_output()],
                 [init("W", W_VALUES), init("B", B_VALUES)], opset=opset)


def ext_model(graph_name, w_loc, b_loc, w_off=0, b_off=48):
    return model(graph_name, linear_nodes(), [x_input()], [y_output()], [
        external("W", [4, 3], w_loc, w_off, 48),
        external("B", [3], b_loc, b_off, 12),
    ])


# ---------------------------------------------------------------------------
# the fixtures: name -> function(out_dir) that writes it


def flatten_concat(names):
    """Nodes that flatten each of `names` after the batch and concatenate them into y."""
    nodes = [helper.make_node("Flatten", [n], [f"{n}_flat"], name=f"{n}_flatten", axis=1) for n in names]
    return nodes + [helper.make_node("Concat", [f"{n}_flat" for n in names], ["y"], name="concat", axis=1)]


def write_model(path, m):
    # Serialize directly: onnx.save would try to handle external data itself.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))


def fresh_dir(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def ok_linear(out):
    write_model(os.path.join(out, "ok_linear.onnx"), base("ok_linear"))


def ok_activations(out):
    """The base linear, then ReLU6 as Clip(0, 6), HardSwish, HardSigmoid (ONNX's default α)."""
    nodes = linear_nodes(out="lin") + [
        helper.make_node("Clip", ["lin", "lo", "hi"], ["c"], name="relu6"),
        helper.make_node("HardSwish", ["c"], ["hs"], name="hardswish"),
        helper.make_node("HardSigmoid", ["hs"], ["y"], name="hardsigmoid", alpha=0.2, beta=0.5),
    ]
    scalars = [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    m = model("ok_activations", nodes, [x_input()], [y_output()], [init("W", W_VALUES), init("B", B_VALUES)] + scalars)
    write_model(os.path.join(out, "ok_activations.onnx"), m)


NORM_SCALE = np.array([1.5, -0.5], dtype=np.float32)
NORM_BIAS = np.array([0.25, 2.0], dtype=np.float32)


def ok_norms(out):
    """x [batch, 2, 6] -> InstanceNormalization(scale, bias) -> ReduceL2 over the last axis -> y [batch, 2]."""
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["n"], name="instnorm", epsilon=1e-5),
        helper.make_node("ReduceL2", ["n"], ["y"], name="l2", axes=[2], keepdims=0),
    ]
    m = model("ok_norms", nodes, [x_input(("batch", 2, 6))], [y_output(("batch", 2))],
              [init("scale", NORM_SCALE), init("bias", NORM_BIAS)])
    write_model(os.path.join(out, "ok_norms.onnx"), m)


def ok_pools(out):
    """x [batch, 2, 6, 6] -> MaxPool(3, s2, p1) -> AveragePool(2, s1, ceil, pad 1, without pads) -> GlobalMaxPool -> Flatten -> y [batch, 2]."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["m"], ["a"], name="avgpool", kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 1, 1],
                         ceil_mode=1, count_include_pad=0),
        helper.make_node("GlobalMaxPool", ["a"], ["g"], name="globalmax"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    m = model("ok_pools", nodes, [x_input(("batch", 2, 6, 6))], [y_output(("batch", 2))], [])
    write_model(os.path.join(out, "ok_pools.onnx"), m)


def ok_resize(out):
    """x [batch, 2, 3, 4] -> five Resizes (nearest asymmetric floor x2, the PyTorch nearest; linear
    half_pixel x1.5 by 2, the bilinear; linear align_corners x2 by 0.5; cubic half_pixel x2;
    nearest round_prefer_floor half_pixel x0.5 by 0.75), ReduceMax over axes 1 and 3 and
    ReduceMin over axis 2, each flattened, concatenated -> y [batch, 297] (opset 18)."""
    f = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [len(v)], v)  # noqa: E731
    i = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    resizes = [
        ("near2", dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 2]),
        ("bilinear", dict(mode="linear", coordinate_transformation_mode="half_pixel"), [1, 1, 1.5, 2]),
        ("corners", dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 2, 0.5]),
        ("cubic", dict(mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75), [1, 1, 2, 2]),
        ("nearhalf", dict(mode="nearest"), [1, 1, 0.5, 0.75]),
    ]
    nodes, inits = [], []
    for name, attrs, scales in resizes:
        # Scales as Constant nodes, as exporters emit them: a float initializer is a weight.
        nodes.append(helper.make_node("Constant", [], [f"{name}_scales"], name=f"{name}_scales", value=f(f"{name}_scales_v", scales)))
        nodes.append(helper.make_node("Resize", ["x", "", f"{name}_scales"], [name], name=name, **attrs))
    nodes += [helper.make_node("ReduceMax", ["x", "max_axes"], ["rmax"], name="reducemax", keepdims=0),
              helper.make_node("ReduceMin", ["x", "min_axes"], ["rmin"], name="reducemin", keepdims=1)]
    inits += [i("max_axes", [1, 3]), i("min_axes", [2])]
    nodes += flatten_concat([r[0] for r in resizes] + ["rmax", "rmin"])
    write_model(os.path.join(out, "ok_resize.onnx"),
                model("ok_resize", nodes, [x_input(("batch", 2, 3, 4))], [y_output(("batch", 297))], inits, opset=18))


def ok_mod(out):
    """y = x + Cast(Mod([5, -7, 9, -4], 3)) + Mod([5.5, -7.5, 9, -4], 2, fmod=1): integer Mod takes the divisor's sign, fmod the dividend's."""
    ints = helper.make_tensor("ai", TensorProto.INT64, [4], [5, -7, 9, -4])
    three = helper.make_tensor("three", TensorProto.INT64, [], [3])
    floats = helper.make_tensor("af", TensorProto.FLOAT, [4], [5.5, -7.5, 9.0, -4.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    # The float operands are Constant nodes, as exporters emit them: a float initializer
    # with several elements is a weight.
    nodes = [
        helper.make_node("Constant", [], ["af"], name="af_const", value=floats),
        helper.make_node("Constant", [], ["two"], name="two_const", value=two),
        helper.make_node("Mod", ["ai", "three"], ["mi"], name="mod_int"),
        helper.make_node("Cast", ["mi"], ["mf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mod", ["af", "two"], ["mo"], name="mod_float", fmod=1),
        helper.make_node("Add", ["x", "mf"], ["s"], name="add1"),
        helper.make_node("Add", ["s", "mo"], ["y"], name="add2"),
    ]
    m = model("ok_mod", nodes, [x_input()], [y_output(("batch", 4))], [ints, three])
    write_model(os.path.join(out, "ok_mod.onnx"), m)


def ok_encodings(out):
    """y = x + Tile(P, [batch, 1]) + e, where P [1, 4] is a weight tiled over the batch (the batch
    read from Shape(x)) and e is a sine encoding computed from constants alone:
    sin(CumSum(Cast(Range(0, 4, 1)))) + cos(Range) + Cast(Not(zeros)) + Ceil(Range/2) − Floor(Range/2)
    = sin([0, 1, 3, 6]) + cos([0, 1, 2, 3]) + 1 + [0, 1, 0, 1]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], name="shape"),
        helper.make_node("Gather", ["xs", "zero"], ["b"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"], name="batch_1d"),
        helper.make_node("Concat", ["b1", "one"], ["reps"], name="repeats", axis=0),
        helper.make_node("Tile", ["P", "reps"], ["pt"], name="tile"),
        helper.make_node("Range", ["start", "limit", "delta"], ["ri"], name="range"),
        helper.make_node("Cast", ["ri"], ["rf"], name="range_f", to=TensorProto.FLOAT),
        helper.make_node("CumSum", ["rf", "zero"], ["cs"], name="cumsum"),
        helper.make_node("Sin", ["cs"], ["sn"], name="sin"),
        helper.make_node("Cos", ["rf"], ["cn"], name="cos"),
        helper.make_node("ConstantOfShape", ["four"], ["zb"], name="zeros",
                         value=helper.make_tensor("v", TensorProto.BOOL, [1], [False])),
        helper.make_node("Not", ["zb"], ["nb"], name="not"),
        helper.make_node("Cast", ["nb"], ["nf"], name="not_f", to=TensorProto.FLOAT),
        helper.make_node("Add", ["sn", "cn"], ["e1"], name="enc1"),
        helper.make_node("Add", ["e1", "nf"], ["e2"], name="enc2"),
        helper.make_node("Div", ["rf", "two_f"], ["half"], name="half"),
        helper.make_node("Ceil", ["half"], ["up"], name="ceil"),
        helper.make_node("Floor", ["half"], ["down"], name="floor"),
        helper.make_node("Sub", ["up", "down"], ["odd"], name="odd"),
        helper.make_node("Add", ["e2", "odd"], ["e"], name="enc"),
        helper.make_node("Add", ["x", "pt"], ["s"], name="add_tile"),
        helper.make_node("Add", ["s", "e"], ["y"], name="add_enc"),
    ]
    ints = [helper.make_tensor(n, TensorProto.INT64, d, v) for n, d, v in
            [("zero", [], [0]), ("axes0", [1], [0]), ("one", [1], [1]), ("start", [], [0]), ("limit", [], [4]),
             ("delta", [], [1]), ("four", [1], [4])]]
    nodes.insert(0, helper.make_node("Constant", [], ["two_f"], name="two_const", value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])))
    m = model("ok_encodings", nodes, [x_input()], [y_output(("batch", 4))],
              [init("P", np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32))] + ints)
    write_model(os.path.join(out, "ok_encodings.onnx"), m)


def bad_tile(out):
    """Tile repeating an axis longer than 1: sbpc reads Tile only as a broadcast."""
    nodes = [helper.make_node("Tile", ["x", "reps"], ["y"], name="tile_rows")]
    m = model("bad_tile", nodes, [x_input()], [y_output(("batch", 8))],
              [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 2])])
    write_model(os.path.join(out, "bad_tile.onnx"), m)


def bad_resize(out):
    """Resize with tf_crop_and_resize coordinates: a crop box sbpc does not read."""
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="crop_resize", mode="linear",
                              coordinate_transformation_mode="tf_crop_and_resize")]
    nodes = [helper.make_node("Constant", [], ["roi"], name="roi", value=helper.make_tensor("roi_v", TensorProto.FLOAT, [8], [0, 0, 0, 0, 1, 1, 1, 1])),
             helper.make_node("Constant", [], ["scales"], name="scales", value=helper.make_tensor("scales_v", TensorProto.FLOAT, [4], [1, 1, 2, 2]))] + nodes
    inits = []
    write_model(os.path.join(out, "bad_resize.onnx"),
                model("bad_resize", nodes, [x_input(("batch", 2, 3, 4))], [y_output(("batch", 2, 6, 8))], inits, opset=18))


def ok_lstm(out):
    """x [batch, 3, 4] -> an LSTM with layout 1 (batch first), reverse, hidden 3, both biases
    and an initial h, all three outputs read; and an LSTM with layout 0 on x transposed,
    forward, hidden 2, no bias and an initial c; every output flattened and concatenated ->
    y [batch, 9 + 3 + 3 + 6 + 2 + 2] (the paths the Sequencer family does not take)."""
    rng = np.random.default_rng(7)
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    inits = [init("Wa", f32(1, 12, 4)), init("Ra", f32(1, 12, 3)), init("Ba", f32(1, 24)), init("Ha", f32(2, 1, 3)),
             init("Wb", f32(1, 8, 4)), init("Rb", f32(1, 8, 2)), init("Cb", f32(1, 2, 2))]
    nodes = [helper.make_node("LSTM", ["x", "Wa", "Ra", "Ba", "", "Ha"], ["ya", "ha", "ca"], name="lstm_a",
                              hidden_size=3, direction="reverse", layout=1),
             helper.make_node("Transpose", ["x"], ["xt"], name="to_time_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "Wb", "Rb", "", "", "", "Cb"], ["yb", "hb", "cb"], name="lstm_b", hidden_size=2),
             helper.make_node("Transpose", ["yb"], ["yb_t"], name="yb_batch_first", perm=[2, 0, 1, 3]),
             helper.make_node("Transpose", ["hb"], ["hb_t"], name="hb_batch_first", perm=[1, 0, 2]),
             helper.make_node("Transpose", ["cb"], ["cb_t"], name="cb_batch_first", perm=[1, 0, 2])]
    nodes += flatten_concat(["ya", "ha", "ca", "yb_t", "hb_t", "cb_t"])
    write_model(os.path.join(out, "ok_lstm.onnx"), model("ok_lstm", nodes, [x_input(("batch", 3, 4))], [y_output(("batch", 25))], inits))


def ok_einsum(out):
    """x [batch, 2, 3, 4] -> Einsum in the shapes exporters write (a relative-position table
    read per row, an ellipsis, a single operand summed and permuted, three operands, two
    labels contracted at once, an implicit output), ScatterND into a computed tensor (a
    partial write with a repeated index: the last one wins, the rest keeps the data) and in
    order over all of it, and ScatterND with reduction add on constants (folded) -> y
    [batch, 30 + 36 + 8 + 2 + 14 + 30 + 24 + 24 + 12]."""
    rng = np.random.default_rng(11)
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    inits = [init("T", f32(2, 5, 4)), init("W", f32(6, 4)), init("V", f32(4)), init("O", f32(7, 4, 3)), init("K", f32(5, 4)),
             init("U", f32(4, 2, 3)), init("U6", f32(6, 2, 3)),
             helper.make_tensor("idx", TensorProto.INT64, [4, 2], [0, 1, 1, 2, 0, 0, 1, 2]),
             helper.make_tensor("idx6", TensorProto.INT64, [6, 2], [0, 0, 0, 1, 0, 2, 1, 0, 1, 1, 1, 2]),
             helper.make_tensor("cidx", TensorProto.INT64, [3, 1], [1, 2, 1]),
             helper.make_tensor("cshape", TensorProto.INT64, [2], [3, 4]),
             helper.make_tensor("zero_idx", TensorProto.INT64, [], [0])]
    E = lambda eq, ins, o: helper.make_node("Einsum", ins, [o], name=o, equation=eq)  # noqa: E731
    nodes = [E("bhwc,hkc->bhwk", ["x", "T"], "e1"), E("...c,dc->...d", ["x", "W"], "e2"), E("bhwc->bch", ["x"], "e3"),
             E("bhwc,bhwc,c->bh", ["x", "x", "V"], "e4"), E("bhwc,ocw->bho", ["x", "O"], "e5"), E("bhwc,kc", ["x", "K"], "e6"),
             helper.make_node("Transpose", ["x"], ["xt"], name="hw_first", perm=[1, 2, 0, 3]),
             E("bhwc,uhw->ubc", ["x", "U"], "upd"), E("bhwc,uhw->ubc", ["x", "U6"], "upd6"),
             helper.make_node("ScatterND", ["xt", "idx", "upd"], ["s1t"], name="scatter_partial"),
             helper.make_node("ScatterND", ["xt", "idx6", "upd6"], ["s2t"], name="scatter_all"),
             helper.make_node("Transpose", ["s1t"], ["s1"], name="s1_batch_first", perm=[2, 0, 1, 3]),
             helper.make_node("Transpose", ["s2t"], ["s2"], name="s2_batch_first", perm=[2, 0, 1, 3]),
             helper.make_node("ConstantOfShape", ["cshape"], ["zeros"], name="zeros",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
             helper.make_node("Constant", [], ["cupd"], name="cupd", value=helper.make_tensor(
                 "cupd_v", TensorProto.FLOAT, [3, 4], [1, 2, 3, 4, -1, -2, -3, -4, 0.5, 0.5, 0.5, 0.5])),
             helper.make_node("ScatterND", ["zeros", "cidx", "cupd"], ["table"], name="scatter_const", reduction="add"),
             helper.make_node("Gather", ["x", "zero_idx"], ["x0"], name="row0", axis=1),
             helper.make_node("Add", ["x0", "table"], ["s3"], name="add_table")]
    nodes += flatten_concat(["e1", "e2", "e3", "e4", "e5", "e6", "s1", "s2", "s3"])
    write_model(os.path.join(out, "ok_einsum.onnx"),
                model("ok_einsum", nodes, [x_input(("batch", 2, 3, 4))], [y_output(("batch", 180))], inits, opset=18))


def ok_conv_nd(out):
    """x [batch, 3, 4] (NCL) -> 1-D convolutions (strided with a bias; grouped and dilated),
    1-D average and max pools, and a 3-D convolution whose middle axis has kernel 1 (the
    lambda layer's shape) on x reshaped to [batch, 1, 3, 2, 2] -> y [batch, 10 + 12 + 6 + 12 + 24]."""
    rng = np.random.default_rng(5)
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    inits = [init("W1", f32(5, 3, 3)), init("B1", f32(5)), init("W2", f32(3, 1, 3)), init("W3", f32(2, 1, 3, 1, 2)),
             helper.make_tensor("to5d", TensorProto.INT64, [5], [0, 1, 3, 2, 2])]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1d", pads=[1, 1], strides=[2]),
             helper.make_node("Conv", ["x", "W2"], ["c2"], name="conv1d_grouped", pads=[2, 2], dilations=[2], group=3),
             helper.make_node("AveragePool", ["x"], ["p1"], name="avgpool1d", kernel_shape=[2], strides=[2]),
             helper.make_node("MaxPool", ["x"], ["p2"], name="maxpool1d", kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Reshape", ["x", "to5d"], ["x5"], name="to_5d"),
             helper.make_node("Conv", ["x5", "W3"], ["c3"], name="conv3d_flat_axis", pads=[1, 0, 0, 1, 0, 1])]
    nodes += flatten_concat(["c1", "c2", "p1", "p2", "c3"])
    write_model(os.path.join(out, "ok_conv_nd.onnx"),
                model("ok_conv_nd", nodes, [x_input(("batch", 3, 4))], [y_output(("batch", 64))], inits))


def ok_scatter_slice(out):
    """x [batch, 1030, 1024] -> y = x with rows 1.. of axis 1 doubled, written as TorchScript
    writes `y[:, 1:, :] = 2 * x[:, 1:, :]`: a ScatterND whose indices are built in the graph
    from Shape, Range, Expand and Concat, one index triple per element (over 6 million
    integers at batch 2, past what the importer folds as it reads the graph)."""
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)] if isinstance(v, list) else [], v if isinstance(v, list) else [v])  # noqa: E731
    inits = [i64("zero", 0), i64("one", 1), i64("ax0", [0]), i64("ax1", [1]), i64("ax2", [2]), i64("last", [-1]),
             i64("big", [1 << 40]), helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])]
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["x", "ax1", "big", "ax1"], ["tail"], name="tail"),
             helper.make_node("Mul", ["tail", "two"], ["upd"], name="double"),
             helper.make_node("Shape", ["upd"], ["us"], name="upd_shape")]
    parts = []
    for a, start in [(0, "zero"), (1, "one"), (2, "zero")]:
        shape_1 = [1, 1, 1]
        shape_1[a] = -1
        nodes += [helper.make_node("Gather", ["s", f"ax{a}"], [f"d{a}v"], name=f"dim{a}", axis=0),
                  helper.make_node("Squeeze", [f"d{a}v", "ax0"], [f"d{a}"], name=f"dim{a}_scalar"),
                  helper.make_node("Range", [start, f"d{a}", "one"], [f"r{a}"], name=f"range{a}"),
                  helper.make_node("Constant", [], [f"shape{a}"], name=f"shape{a}", value=helper.make_tensor(f"shape{a}_v", TensorProto.INT64, [3], shape_1)),
                  helper.make_node("Reshape", [f"r{a}", f"shape{a}"], [f"r{a}_b"], name=f"place{a}"),
                  helper.make_node("Expand", [f"r{a}_b", "us"], [f"e{a}"], name=f"expand{a}"),
                  helper.make_node("Unsqueeze", [f"e{a}", "last"], [f"u{a}"], name=f"coord{a}")]
        parts.append(f"u{a}")
    nodes += [helper.make_node("Concat", parts, ["idx"], name="indices", axis=-1),
              helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="slice_assign")]
    write_model(os.path.join(out, "ok_scatter_slice.onnx"),
                model("ok_scatter_slice", nodes, [x_input(("batch", 1030, 1024))], [y_output(("batch", 1030, 1024))], inits))


def ok_bn_computed_stats(out):
    """x [batch, 3, 4] -> an inference-mode BatchNormalization whose mean and variance the graph
    computes from x (dynamo's decomposition of a batch_norm without running statistics, as
    NF-Net's weight standardization calls it) -> y [batch, 3, 4]."""
    c = np.array([0.5, 1.5, -1.0], dtype=np.float32)
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean", keepdims=0),
             helper.make_node("ReduceMean", ["x", "axes"], ["mk"], name="mean_kept", keepdims=1),
             helper.make_node("Sub", ["x", "mk"], ["d"], name="center"),
             helper.make_node("Mul", ["d", "d"], ["d2"], name="square"),
             helper.make_node("ReduceMean", ["d2", "axes"], ["v"], name="variance", keepdims=0),
             helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn", momentum=1.0, epsilon=1e-5)]
    write_model(os.path.join(out, "ok_bn_computed_stats.onnx"),
                model("ok_bn_computed_stats", nodes, [x_input(("batch", 3, 4))], [y_output(("batch", 3, 4))],
                      [init("s", c), init("b", c[::-1].copy()), helper.make_tensor("axes", TensorProto.INT64, [2], [0, 2])], opset=18))


def ok_resize_aa(out):
    """x [batch, 2, 8, 12] -> antialiased Resizes, each flattened, concatenated: linear at
    scales (0.5, 0.25) and cubic (a = -0.5) at (3/8, 1/2), both excluding taps outside (as
    dynamo exports PyTorch's antialias), linear upsampling at (1.25, 1), where antialiasing
    changes nothing, and cubic (a = -0.75) at (3/8, 1/2) reading the edge past the ends ->
    y [batch, 24 + 36 + 240 + 36] (opset 18)."""
    f = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [len(v)], v)  # noqa: E731
    nodes = []
    for name, attrs, scales in [("lin", dict(mode="linear", exclude_outside=1), [1, 1, 0.5, 0.25]),
                                ("cub", dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1), [1, 1, 3 / 8, 1 / 2]),
                                ("up", dict(mode="linear"), [1, 1, 1.25, 1]),
                                ("edge", dict(mode="cubic"), [1, 1, 3 / 8, 1 / 2])]:
        nodes.append(helper.make_node("Constant", [], [f"{name}_scales"], name=f"{name}_scales", value=f(f"{name}_scales_v", scales)))
        nodes.append(helper.make_node("Resize", ["x", "", f"{name}_scales"], [name], name=name, antialias=1, **attrs))
    nodes += flatten_concat(["lin", "cub", "up", "edge"])
    write_model(os.path.join(out, "ok_resize_aa.onnx"),
                model("ok_resize_aa", nodes, [x_input(("batch", 2, 8, 12))], [y_output(("batch", 336))], [], opset=18))


def bad_bn_stats_elsewhere(out):
    """An inference-mode BatchNormalization whose mean and variance are computed, but not
    from its input (running statistics scaled by 1): normalizing with them would be eval
    mode's semantics in the training step, so it is refused."""
    c = np.array([0.5, 1.5, -1.0], dtype=np.float32)
    nodes = [helper.make_node("Mul", ["m0", "one"], ["m"], name="mean_copy"),
             helper.make_node("Mul", ["v0", "one"], ["v"], name="var_copy"),
             helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")]
    write_model(os.path.join(out, "bad_bn_stats_elsewhere.onnx"),
                model("bad_bn_stats_elsewhere", nodes, [x_input(("batch", 3, 4))], [y_output(("batch", 3, 4))],
                      [init("s", c), init("b", c), init("m0", c), init("v0", c + 2), init("one", np.array([1.0], dtype=np.float32))]))


def bad_einsum_diagonal(out):
    """Einsum reading a diagonal (a label twice in one operand): sbpc lowers Einsum to
    transposes and matmuls, which have no diagonal."""
    nodes = [helper.make_node("Einsum", ["x"], ["y"], name="trace_like", equation="bii->bi")]
    write_model(os.path.join(out, "bad_einsum_diagonal.onnx"),
                model("bad_einsum_diagonal", nodes, [x_input(("batch", 3, 3))], [y_output(("batch", 3))], []))


def bad_lstm_peephole(out):
    """An LSTM with peephole weights (input P): sbpc unrolls the spec's default cell only."""
    rng = np.random.default_rng(3)
    hidden, inp = 2, 4
    inits = [init("W", rng.standard_normal((1, 4 * hidden, inp)).astype(np.float32)),
             init("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
             init("P", rng.standard_normal((1, 3 * hidden)).astype(np.float32))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "", "", "", "", "P"], ["y"], name="peephole_lstm", hidden_size=hidden)]
    write_model(os.path.join(out, "bad_lstm_peephole.onnx"),
                model("bad_lstm_peephole", nodes, [x_input((3, 2, inp))], [y_output((3, 1, 2, hidden))], inits))


def bn_model(out, name, shared, training_mode):
    """x [batch, 2, 3] -> BatchNormalization -> BatchNormalization -> mean over the last axis -> y [batch, 2]."""
    c = np.array([0.5, 1.5], dtype=np.float32)
    inits = [init("s1", c), init("b1", c + 0.25), init("m1", c - 0.3), init("v1", c + 0.7),
             init("s2", c + 1), init("b2", c - 1), init("m2", c + 0.1), init("v2", c + 0.9)]
    stats2 = ["m1", "v1"] if shared else ["m2", "v2"]
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s1", "b1", "m1", "v1"], ["n1"], name="bn1", training_mode=training_mode),
        helper.make_node("BatchNormalization", ["n1", "s2", "b2"] + stats2, ["n2"], name="bn2", training_mode=training_mode),
        helper.make_node("ReduceMean", ["n2"], ["y"], name="mean", axes=[2], keepdims=0),
    ]
    write_model(os.path.join(out, name + ".onnx"),
                model(name, nodes, [x_input(("batch", 2, 3))], [y_output(("batch", 2))], inits, opset=15))


def bad_bn_statistics(out):
    """Two BatchNorms, each with one bad statistic: bad_bn_stat_size's running variance has 3
    values for 2 channels; bad_bn_stat_dtype's running mean is int64."""
    c = np.array([0.5, 1.5], dtype=np.float32)
    for name, mean, var in (("bad_bn_stat_size", init("m", c), init("v", np.array([1, 2, 3], dtype=np.float32))),
                            ("bad_bn_stat_dtype", helper.make_tensor("m", TensorProto.INT64, [2], [0, 1]), init("v", c + 1))):
        nodes = [
            helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], name="bn", training_mode=1),
            helper.make_node("ReduceMean", ["n"], ["y"], name="mean", axes=[2], keepdims=0),
        ]
        write_model(os.path.join(out, name + ".onnx"),
                    model(name, nodes, [x_input(("batch", 2, 3))], [y_output(("batch", 2))],
                          [init("s", c), init("b", c), mean, var], opset=15))


def ok_bn_eval_mode(out):
    bn_model(out, "ok_bn_eval_mode", shared=False, training_mode=0)


def bad_bn_shared(out):
    bn_model(out, "bad_bn_shared", shared=True, training_mode=1)


def ok_scalar_params(out):
    """StarReLU's form, then a ReLU: y = relu(act.scale · relu(x·W + B)·onnx::Mul_7 + act.bias),
    with one-element parameters `act.scale` and `act.bias` and an exporter-named scalar
    constant. The last ReLU gives act.bias a gradient: a bias added alike to every logit has
    none (the softmax does not see it)."""
    nodes = linear_nodes(out="lin") + [
        helper.make_node("Relu", ["lin"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "onnx::Mul_7"], ["r2"], name="const_mul"),
        helper.make_node("Mul", ["r2", "act.scale"], ["s"], name="scale"),
        helper.make_node("Add", ["s", "act.bias"], ["b"], name="bias"),
        helper.make_node("Relu", ["b"], ["y"], name="out_relu"),
    ]
    scalars = [helper.make_tensor("act.scale", TensorProto.FLOAT, [1], [0.8944]),
               helper.make_tensor("act.bias", TensorProto.FLOAT, [1], [-0.4472]),
               helper.make_tensor("onnx::Mul_7", TensorProto.FLOAT, [], [2.0])]
    m = model("ok_scalar_params", nodes, [x_input()], [y_output()], [init("W", W_VALUES), init("B", B_VALUES)] + scalars)
    write_model(os.path.join(out, "ok_scalar_params.onnx"), m)


def ok_groupnorm(out):
    """x [batch, 4, 3] -> GroupNormalization(num_groups 2, opset 18: scale and bias per group) -> mean over the last axis."""
    nodes = [
        helper.make_node("GroupNormalization", ["x", "gscale", "gbias"], ["n"], name="groupnorm", num_groups=2, epsilon=1e-5),
        helper.make_node("ReduceMean", ["n", "axes"], ["y"], name="mean", keepdims=0),
    ]
    inits = [init("gscale", np.array([1.5, -0.5], dtype=np.float32)), init("gbias", np.array([0.25, 2.0], dtype=np.float32)),
             helper.make_tensor("axes", TensorProto.INT64, [1], [2])]
    write_model(os.path.join(out, "ok_groupnorm.onnx"),
                model("ok_groupnorm", nodes, [x_input(("batch", 4, 3))], [y_output(("batch", 4))], inits, opset=18))


def ok_pad(out):
    """x [batch, 2, 3] -> Pad(reflect, last axis 2 and 1) -> Pad(constant 0.5, axis 1: 1 and 0, via opset 18's axes) -> Pad(edge, axis 2 begin 1, axis 1 end 2) -> mean -> y [batch, 5]."""
    nodes = [
        helper.make_node("Pad", ["x", "p1"], ["a"], name="reflect", mode="reflect"),
        helper.make_node("Pad", ["a", "p2", "cv", "ax"], ["b"], name="constant", mode="constant"),
        helper.make_node("Pad", ["b", "p3"], ["c"], name="edge", mode="edge"),
        helper.make_node("ReduceMean", ["c", "mx"], ["y"], name="mean", keepdims=0),
    ]
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    inits = [ints("p1", [0, 0, 2, 0, 0, 1]), ints("p2", [1, 0]), ints("ax", [1]), ints("p3", [0, 0, 1, 0, 2, 0]),
             ints("mx", [2]), helper.make_tensor("cv", TensorProto.FLOAT, [], [0.5])]
    write_model(os.path.join(out, "ok_pad.onnx"),
                model("ok_pad", nodes, [x_input(("batch", 2, 3))], [y_output(("batch", 5))], inits, opset=18))


def ok_scalar_with_constant(out):
    """y = (x·W + B) · (act.shift · 2): the product of a named scalar and a constant must not fold away."""
    nodes = linear_nodes(out="lin") + [
        helper.make_node("Mul", ["act.shift", "onnx::Mul_3"], ["m"], name="scaled_shift"),
        helper.make_node("Mul", ["lin", "m"], ["y"], name="shift"),
    ]
    scalars = [helper.make_tensor("act.shift", TensorProto.FLOAT, [1], [0.3]),
               helper.make_tensor("onnx::Mul_3", TensorProto.FLOAT, [], [2.0])]
    write_model(os.path.join(out, "ok_scalar_with_constant.onnx"),
                model("ok_scalar_with_constant", nodes, [x_input()], [y_output()], [init("W", W_VALUES), init("B", B_VALUES)] + scalars))


def bad_scalar_bound_and_weight(out):
    """`act.lo` is both Clip's lower bound (a constant) and a factor computation reads (a parameter)."""
    nodes = linear_nodes(out="lin") + [
        helper.make_node("Clip", ["lin", "act.lo", ""], ["c"], name="clip"),
        helper.make_node("Mul", ["c", "act.lo"], ["y"], name="scale"),
    ]
    scalars = [helper.make_tensor("act.lo", TensorProto.FLOAT, [], [0.5])]
    write_model(os.path.join(out, "bad_scalar_bound_and_weight.onnx"),
                model("bad_scalar_bound_and_weight", nodes, [x_input()], [y_output()], [init("W", W_VALUES), init("B", B_VALUES)] + scalars))


def bad_dropout_training(out):
    """The base linear, then Dropout(ratio 0.1, training_mode true), as a training-mode export of nn.Dropout(0.1)."""
    nodes = linear_nodes(out="lin") + [helper.make_node("Dropout", ["lin", "ratio", "train"], ["y"], name="dropout")]
    extra = [helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("train", TensorProto.BOOL, [], [True])]
    write_model(os.path.join(out, "bad_dropout_training.onnx"),
                model("bad_dropout_training", nodes, [x_input()], [y_output()], [init("W", W_VALUES), init("B", B_VALUES)] + extra))


def ok_shared_identity(out):
    nodes = [
        helper.make_node("Identity", ["W"], ["W_alias"], name="alias"),
        helper.make_node("MatMul", ["x", "W"], ["y1"], name="matmul1"),
        helper.make_node("MatMul", ["x", "W_alias"], ["y2"], name="matmul2"),
        helper.make_node("Add", ["y1", "y2"], ["sum"], name="sum"),
        helper.make_node("Add", ["sum", "B"], ["y"], name="bias"),
    ]
    m = model("ok_shared_identity", nodes, [x_input()], [y_output()],
              [init("W", W_VALUES), init("B", B_VALUES)])
    write_model(os.path.join(out, "ok_shared_identity.onnx"), m)


def warn_attention_bias(out):
    """Attention over 3 tokens of width 4 whose scores get a dense f32[1,3,3] `rel_bias`, as an
    export that folded Swin's relative-position gather leaves it: q = x·Wq, k = x·Wk,
    softmax(q·kᵀ + rel_bias)·x, mean over tokens -> y [batch, 4]."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Add", ["s", "rel_bias"], ["sb"], name="add_bias"),
        helper.make_node("Softmax", ["sb"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["o"], name="av"),
        helper.make_node("ReduceMean", ["o", "ax"], ["y"], name="mean", keepdims=0),
    ]
    inits = [init("Wq", rng.standard_normal((4, 4)).astype(np.float32)),
             init("Wk", rng.standard_normal((4, 4)).astype(np.float32)),
             init("rel_bias", rng.standard_normal((1, 3, 3)).astype(np.float32)),
             helper.make_tensor("ax", TensorProto.INT64, [1], [1])]
    write_model(os.path.join(out, "warn_attention_bias.onnx"),
                model("warn_attention_bias", nodes, [x_input(("batch", 3, 4))], [y_output(("batch", 4))], inits, opset=18))


def warn_qkv_bias(out):
    """x·Wqkv + qkv_bias with qkv_bias = [q_bias, 0, 0, v_bias] over 2+2+2 outputs: BEiT's
    cat(q_bias, zeros, v_bias) folded by the exporter -> y [batch, 6]."""
    bias = np.array([0.5, -0.25, 0.0, 0.0, 0.75, 1.25], dtype=np.float32)
    w = (np.arange(24, dtype=np.float32).reshape(4, 6) * 0.0625 - 0.5).astype(np.float32)
    nodes = linear_nodes(w="Wqkv", b="qkv_bias")
    write_model(os.path.join(out, "warn_qkv_bias.onnx"),
                model("warn_qkv_bias", nodes, [x_input()], [y_output(("batch", 6))], [init("Wqkv", w), init("qkv_bias", bias)]))


def ok_external(out):
    d = os.path.join(out, "ok_external")
    fresh_dir(d)
    with open(os.path.join(d, "weights.bin"), "wb") as f:
        f.write(W_VALUES.tobytes() + B_VALUES.tobytes())  # W at 0 (48 bytes), B at 48 (12 bytes)
    write_model(os.path.join(d, "model.onnx"), ext_model("ok_external", "weights.bin", "weights.bin"))


def ext_missing(out):
    d = os.path.join(out, "ext_missing")
    fresh_dir(d)  # and no weights.bin
    write_model(os.path.join(d, "model.onnx"), ext_model("ext_missing", "weights.bin", "weights.bin"))


def ext_absolute(out):
    # Only W points outside; B stays inline so that W's location is the one problem.
    d = os.path.join(out, "ext_absolute")
    fresh_dir(d)
    m = model("ext_absolute", linear_nodes(), [x_input()], [y_output()],
              [external("W", [4, 3], "/etc/hostname", 0, 48), init("B", B_VALUES)])
    write_model(os.path.join(d, "model.onnx"), m)


def ext_escape(out):
    d = os.path.join(out, "ext_escape")
    fresh_dir(d)
    m = model("ext_escape", linear_nodes(), [x_input()], [y_output()],
              [external("W", [4, 3], "../ok_external/weights.bin", 0, 48), init("B", B_VALUES)])
    write_model(os.path.join(d, "model.onnx"), m)


def ext_past_end(out):
    d = os.path.join(out, "ext_past_end")
    fresh_dir(d)
    with open(os.path.join(d, "weights.bin"), "wb") as f:
        f.write(W_VALUES.tobytes())  # 48 bytes: B's 48 + 12 runs past the end
    write_model(os.path.join(d, "model.onnx"), ext_model("ext_past_end", "weights.bin", "weights.bin"))


def ext_symlink(out):
    d = os.path.join(out, "ext_symlink")
    fresh_dir(d)
    os.symlink("../ok_external/weights.bin", os.path.join(d, "weights.bin"))
    write_model(os.path.join(d, "model.onnx"), ext_model("ext_symlink", "weights.bin", "weights.bin"))


def bad_size(out):
    w = raw_tensor("W", [4, 3], W_VALUES.tobytes()[:40])
    m = model("bad_size", linear_nodes(), [x_input()], [y_output()], [w, init("B", B_VALUES)])
    write_model(os.path.join(out, "bad_size.onnx"), m)


def unknown_op(out):
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
        helper.make_node("FancyOp", ["xw"], ["fancy"], name="fancy_node"),
        helper.make_node("Add", ["fancy", "B"], ["y"], name="add"),
    ]
    m = model("unknown_op", nodes, [x_input()], [y_output()],
              [init("W", W_VALUES), init("B", B_VALUES)],
              value_info=[helper.make_tensor_value_info("fancy", TensorProto.FLOAT, ["batch", 3])])
    write_model(os.path.join(out, "unknown_op.onnx"), m)


def symbolic_dim(out):
    m = model("symbolic_dim", linear_nodes(), [x_input(("batch", "features"))], [y_output()],
              [init("W", W_VALUES), init("B", B_VALUES)])
    write_model(os.path.join(out, "symbolic_dim.onnx"), m)


def cycle(out):
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["x_w"], name="matmul"),
        helper.make_node("Add", ["x_w", "c"], ["a"], name="n1"),
        helper.make_node("Relu", ["a"], ["c"], name="n2"),
        helper.make_node("Add", ["a", "B"], ["y"], name="add"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("x_w", "a", "c")]
    m = model("cycle", nodes, [x_input()], [y_output()],
              [init("W", W_VALUES), init("B", B_VALUES)], value_info=vi)
    write_model(os.path.join(out, "cycle.onnx"), m)


def huge_tensor(out):
    # 2^40 f32 elements (4 TiB) declared, 16 bytes present.  Used by its own Add so the
    # rest of the graph is the ordinary base model.
    n = 1 << 20
    h = raw_tensor("H", [n, n], np.arange(4, dtype=np.float32).tobytes())
    nodes = linear_nodes() + [helper.make_node("Add", ["H", "H"], ["h"], name="huge_add")]
    m = model("huge_tensor", nodes, [x_input()], [y_output(), y_output((n, n), name="h")],
              [init("W", W_VALUES), init("B", B_VALUES), h])
    write_model(os.path.join(out, "huge_tensor.onnx"), m)


def opset_12(out):
    write_model(os.path.join(out, "opset_12.onnx"), base("opset_12", opset=12))


def no_graph(out):
    m = onnx.ModelProto()
    m.ir_version = IR_VERSION
    m.producer_name = PRODUCER
    m.opset_import.append(helper.make_opsetid("", OPSET))
    assert not m.HasField("graph")
    write_model(os.path.join(out, "no_graph.onnx"), m)


def dangling_input(out):
    m = model("dangling_input", linear_nodes(b="ghost"), [x_input()], [y_output()],
              [init("W", W_VALUES)])
    write_model(os.path.join(out, "dangling_input.onnx"), m)


FIXTURES = [
    ok_linear, ok_activations, ok_norms, ok_groupnorm, ok_pools, ok_resize, ok_mod, ok_encodings, bad_tile, bad_resize, ok_lstm, ok_einsum, ok_conv_nd, ok_scatter_slice, ok_bn_computed_stats, bad_bn_stats_elsewhere, ok_resize_aa, bad_einsum_diagonal, bad_lstm_peephole, ok_scalar_params, ok_scalar_with_constant, bad_scalar_bound_and_weight, bad_dropout_training, ok_pad, ok_bn_eval_mode, bad_bn_shared, bad_bn_statistics, ok_shared_identity, warn_attention_bias, warn_qkv_bias, ok_external,
    ext_missing, ext_absolute, ext_escape, ext_past_end, ext_symlink,
    bad_size, unknown_op, symbolic_dim, cycle, huge_tensor, opset_12, no_graph, dangling_input,
]


# ---------------------------------------------------------------------------
# --check: each fixture is as valid / as broken as described


def check(out):
    import onnxruntime as ort

    failures = []

    def expect(cond, what):
        print(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            failures.append(what)

    def raises(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return str(e).splitlines()[0][:100] or type(e).__name__
        return None

    p = lambda *a: os.path.join(out, *a)  # noqa: E731
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5
    ref = x @ W_VALUES + B_VALUES

    def run(path, want):
        onnx.checker.check_model(onnx.load(path), full_check=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        y = sess.run(["y"], {"x": x})[0]
        expect(np.allclose(y, want, atol=1e-6), f"{os.path.relpath(path, out)}: checker + onnxruntime match numpy")

    run(p("ok_linear.onnx"), ref)
    run(p("ok_scalar_params.onnx"), 0.8944 * np.maximum(ref, 0) * 2 - 0.4472)
    run(p("ok_scalar_with_constant.onnx"), ref * 0.6)
    run(p("bad_scalar_bound_and_weight.onnx"), np.maximum(ref, 0.5) * 0.5)
    c = np.clip(ref, 0, 6)
    run(p("ok_activations.onnx"), np.clip(0.2 * (c * np.clip(c / 6 + 0.5, 0, 1)) + 0.5, 0, 1))
    xn = (np.arange(24, dtype=np.float32).reshape(2, 2, 6) * 0.37 % 1.9) - 0.8
    mean, var = xn.mean(axis=2, keepdims=True), xn.var(axis=2, keepdims=True)
    want = np.sqrt((((xn - mean) / np.sqrt(var + 1e-5) * NORM_SCALE[:, None] + NORM_BIAS[:, None]) ** 2).sum(axis=2))
    sess = ort.InferenceSession(p("ok_norms.onnx"), providers=["CPUExecutionProvider"])
    expect(np.allclose(sess.run(["y"], {"x": xn})[0], want, atol=1e-5), "ok_norms.onnx: onnxruntime matches numpy")
    sess = ort.InferenceSession(p("ok_encodings.onnx"), providers=["CPUExecutionProvider"])
    enc = np.sin([0.0, 1.0, 3.0, 6.0]) + np.cos([0.0, 1.0, 2.0, 3.0]) + 1 + np.array([0.0, 1.0, 0.0, 1.0])
    expect(np.allclose(sess.run(["y"], {"x": x})[0], x + np.array([0.5, -1.0, 2.0, 0.25]) + enc, atol=1e-6),
           "ok_encodings.onnx: onnxruntime matches numpy")
    sess = ort.InferenceSession(p("ok_mod.onnx"), providers=["CPUExecutionProvider"])
    expect(np.allclose(sess.run(["y"], {"x": x})[0], x + np.array([2, 2, 0, 2]) + np.array([1.5, -1.5, 1.0, 0.0])),
           "ok_mod.onnx: onnxruntime gives Python's % for integers and fmod for floats")
    xg = (np.cos(np.arange(24, dtype=np.float32) * 0.9) * 2).reshape(2, 4, 3).astype(np.float32)
    grp = xg.reshape(2, 2, 6)
    ng = ((grp - grp.mean(axis=2, keepdims=True)) / np.sqrt(grp.var(axis=2, keepdims=True) + 1e-5)).reshape(2, 4, 3)
    want = (ng * np.repeat([1.5, -0.5], 2)[:, None] + np.repeat([0.25, 2.0], 2)[:, None]).mean(axis=2)
    sess = ort.InferenceSession(p("ok_groupnorm.onnx"), providers=["CPUExecutionProvider"])
    expect(np.allclose(sess.run(["y"], {"x": xg})[0], want, atol=1e-5), "ok_groupnorm.onnx: onnxruntime matches numpy")
    xq = (np.arange(12, dtype=np.float32).reshape(2, 2, 3) * 0.7 - 3).astype(np.float32)
    a = np.pad(xq, [(0, 0), (0, 0), (2, 1)], mode="reflect")
    b = np.pad(a, [(0, 0), (1, 0), (0, 0)], mode="constant", constant_values=0.5)
    c = np.pad(b, [(0, 0), (0, 2), (1, 0)], mode="edge")
    sess = ort.InferenceSession(p("ok_pad.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": xq})[0]
    np.save(p("ok_pad.expected.npy"), got)
    expect(np.allclose(got, c.mean(axis=2)), "ok_pad.onnx: onnxruntime matches numpy's pad (reflect, constant, edge)")
    xp = (np.sin(np.arange(144, dtype=np.float32) * 0.37) * 3).reshape(2, 2, 6, 6).astype(np.float32)
    sess = ort.InferenceSession(p("ok_pools.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": xp})[0]
    np.save(p("ok_pools.expected.npy"), got)
    sess = ort.InferenceSession(p("ok_resize.onnx"), providers=["CPUExecutionProvider"])
    xr = np.sin(np.arange(48, dtype=np.float32) * 0.37).reshape(2, 2, 3, 4) * 3
    got_r = sess.run(["y"], {"x": xr})[0]
    np.save(p("ok_resize.expected.npy"), got_r)
    expect(got_r.shape == (2, 297), f"ok_resize.onnx: onnxruntime runs it, y {got_r.shape} written to ok_resize.expected.npy")
    # onnxruntime refuses layout 1 ("batchwise recurrent operations"): onnx's reference
    # evaluator runs the spec (it agrees with onnxruntime to 1e-7 on the layout-0 form).
    from onnx.reference import ReferenceEvaluator
    got_l = ReferenceEvaluator(p("ok_lstm.onnx")).run(None, {"x": np.sin(np.arange(24, dtype=np.float32) * 0.37).reshape(2, 3, 4) * 3})[0]
    np.save(p("ok_lstm.expected.npy"), got_l)
    xin = (np.sin(np.arange(48, dtype=np.float32) * 0.37) * 3).reshape(2, 2, 3, 4).astype(np.float32)
    got_e = ort.InferenceSession(p("ok_einsum.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xin})[0]
    np.save(p("ok_einsum.expected.npy"), got_e)
    expect(np.allclose(got_e, ReferenceEvaluator(p("ok_einsum.onnx")).run(None, {"x": xin})[0], atol=1e-5),
           f"ok_einsum.onnx: onnxruntime and onnx's reference evaluator agree, y {got_e.shape} written to ok_einsum.expected.npy")
    xs = np.random.default_rng(2).standard_normal((2, 1030, 1024)).astype(np.float32)
    got_s = ort.InferenceSession(p("ok_scatter_slice.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    want_s = xs.copy()
    want_s[:, 1:, :] *= 2
    expect(np.array_equal(got_s, want_s), "ok_scatter_slice.onnx: onnxruntime doubles rows 1.. of axis 1 and keeps row 0")
    xb = (np.sin(np.arange(24, dtype=np.float32) * 0.37) * 3).reshape(2, 3, 4).astype(np.float32)
    got_b = ort.InferenceSession(p("ok_bn_computed_stats.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xb})[0]
    np.save(p("ok_bn_computed_stats.expected.npy"), got_b)
    nb = (xb - xb.mean(axis=(0, 2), keepdims=True)) / np.sqrt(xb.var(axis=(0, 2), keepdims=True) + 1e-5)
    expect(np.allclose(got_b, nb * np.array([0.5, 1.5, -1.0])[:, None] + np.array([-1.0, 1.5, 0.5])[:, None], atol=1e-5),
           "ok_bn_computed_stats.onnx: onnxruntime normalizes with the computed batch statistics, as numpy does")
    xa = (np.sin(np.arange(384, dtype=np.float32) * 0.37) * 3).reshape(2, 2, 8, 12).astype(np.float32)
    got_a = ort.InferenceSession(p("ok_resize_aa.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xa})[0]
    np.save(p("ok_resize_aa.expected.npy"), got_a)
    import torch
    ta, F_ = torch.from_numpy(xa), torch.nn.functional
    want_a = torch.cat([t.reshape(2, -1) for t in [
        F_.interpolate(ta, size=(4, 3), mode="bilinear", antialias=True, align_corners=False),
        F_.interpolate(ta, size=(3, 6), mode="bicubic", antialias=True, align_corners=False),
        F_.interpolate(ta, size=(10, 12), mode="bilinear", antialias=True, align_corners=False)]], dim=1).numpy()
    expect(np.allclose(got_a[:, :300], want_a, atol=1e-5) and np.allclose(got_a, ReferenceEvaluator(p("ok_resize_aa.onnx")).run(None, {"x": xa})[0], atol=1e-5),
           f"ok_resize_aa.onnx: onnxruntime and onnx's reference evaluator agree, and with PyTorch's antialiased interpolate where taps outside are excluded; y {got_a.shape} written to ok_resize_aa.expected.npy")
    # (The reference evaluator's 1-D MaxPool with pads fails; PyTorch is the second opinion.)
    import torch
    xin = (np.sin(np.arange(24, dtype=np.float32) * 0.37) * 3).reshape(2, 3, 4).astype(np.float32)
    got_c = ort.InferenceSession(p("ok_conv_nd.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": xin})[0]
    np.save(p("ok_conv_nd.expected.npy"), got_c)
    w = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in onnx.load(p("ok_conv_nd.onnx")).graph.initializer}
    tx, F = torch.from_numpy(xin), torch.nn.functional
    parts = [F.conv1d(tx, w["W1"], w["B1"], stride=2, padding=1), F.conv1d(tx, w["W2"], padding=2, dilation=2, groups=3),
             F.avg_pool1d(tx, 2), F.max_pool1d(tx, 3, stride=1, padding=1),
             F.conv3d(F.pad(tx.reshape(2, 1, 3, 2, 2), (0, 1, 0, 0, 1, 1)), w["W3"])]
    want_c = torch.cat([t.reshape(2, -1) for t in parts], dim=1).numpy()
    expect(np.allclose(got_c, want_c, atol=1e-5), f"ok_conv_nd.onnx: onnxruntime matches PyTorch, y {got_c.shape} written to ok_conv_nd.expected.npy")
    expect(got_l.shape == (2, 25), f"ok_lstm.onnx: onnxruntime runs it, y {got_l.shape} written to ok_lstm.expected.npy")
    import torch
    t = torch.from_numpy(xr)
    torch_parts = [torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest"),
                   torch.nn.functional.interpolate(t, scale_factor=(1.5, 2), mode="bilinear", align_corners=False)]
    expect(np.allclose(got_r[:, :96 + 64], np.concatenate([a.reshape(2, -1).numpy() for a in torch_parts], axis=1), atol=1e-5),
           "ok_resize.onnx: its nearest and bilinear Resizes are PyTorch's interpolate")
    expect(got.shape == (2, 2), f"ok_pools.onnx: onnxruntime runs it, y {got.shape} written to ok_pools.expected.npy")
    run(p("ok_shared_identity.onnx"), 2 * (x @ W_VALUES) + B_VALUES)
    m = onnx.load(p("ok_shared_identity.onnx"))
    expect([i.name for i in m.graph.initializer] == ["W", "B"], "ok_shared_identity: one W initializer")
    run(p("ok_external", "model.onnx"), ref)
    run(p("opset_12.onnx"), ref)  # valid ONNX; only sbpc refuses opset 12

    def ext_fails(sub):
        path = p(sub, "model.onnx")
        err = raises(lambda: onnx.load(path))  # load_external_data=True by default
        if err is None:
            err = raises(lambda: ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
        expect(err is not None, f"{sub}: external data load fails ({err})")

    ext_fails("ext_missing")
    expect(not os.path.lexists(p("ext_missing", "weights.bin")), "ext_missing: no weights.bin")
    ext_fails("ext_absolute")
    ext_fails("ext_escape")
    expect(os.path.getsize(p("ext_past_end", "weights.bin")) == 48, "ext_past_end: weights.bin is 48 bytes")
    ext_fails("ext_past_end")
    link = p("ext_symlink", "weights.bin")
    expect(os.path.islink(link) and os.readlink(link) == "../ok_external/weights.bin",
           "ext_symlink: weights.bin -> ../ok_external/weights.bin")
    expect(os.path.isfile(link), "ext_symlink: link resolves")
    err = raises(lambda: onnx.load(p("ext_symlink", "model.onnx")))
    expect(err is not None, f"ext_symlink: onnx refuses the link too ({err})")

    def checker_fails(name, full=False):
        err = raises(lambda: onnx.checker.check_model(onnx.load(p(name)), full_check=full))
        expect(err is not None, f"{name}: checker rejects ({err})")

    checker_fails("bad_size.onnx")
    expect(len(onnx.load(p("bad_size.onnx")).graph.initializer[0].raw_data) == 40, "bad_size: W raw_data 40 bytes")
    checker_fails("unknown_op.onnx")
    checker_fails("cycle.onnx")
    checker_fails("huge_tensor.onnx")
    checker_fails("no_graph.onnx")
    expect(not onnx.load(p("no_graph.onnx")).HasField("graph"), "no_graph: no graph field")
    checker_fails("dangling_input.onnx")

    # symbolic_dim is valid ONNX; it only fails when MatMul needs features == 4.
    onnx.checker.check_model(onnx.load(p("symbolic_dim.onnx")), full_check=True)
    sess = ort.InferenceSession(p("symbolic_dim.onnx"), providers=["CPUExecutionProvider"])
    expect(np.allclose(sess.run(["y"], {"x": x})[0], ref, atol=1e-6), "symbolic_dim: valid, runs with features=4")
    dims = [d.dim_param or d.dim_value for d in onnx.load(p("symbolic_dim.onnx")).graph.input[0].type.tensor_type.shape.dim]
    expect(dims == ["batch", "features"], "symbolic_dim: x is [batch, features]")
    expect(onnx.load(p("opset_12.onnx")).opset_import[0].version == 12, "opset_12: default opset 12")

    for root, dirs, files in os.walk(out):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            if not os.path.islink(path):
                expect(os.path.getsize(path) < 4096, f"{os.path.relpath(path, out)}: {os.path.getsize(path)} bytes")

    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: Tests/Fixtures/ in the repo)")
    ap.add_argument("--check", action="store_true",
                    help="after writing, check each fixture with onnx / onnxruntime")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    for fn in FIXTURES:
        fn(args.out)
    print(f"wrote {len(FIXTURES)} fixtures into {args.out}")
    if args.check:
        failures = check(args.out)
        if failures:
            print(f"{len(failures)} check(s) failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
