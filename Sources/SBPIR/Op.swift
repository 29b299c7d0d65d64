// Op.swift: the IR's operations as one enum, their text names and their attribute payloads.

/// Layout of a `linear` weight: `[out, in]` as PyTorch stores it, or `[in, out]` as exporters
/// often transpose it for MatMul. The parameter keeps its original layout so gradients stay
/// attached to the tensor the user trains.
public enum WeightLayout: String, Sendable, Hashable {
  case outIn = "oi"
  case inOut = "io"
}

/// GELU variant.
public enum GeluApproximation: String, Sendable, Hashable {
  case none
  case tanh
}

/// Static convolution geometry (NCHW, weights OIHW).
public struct ConvGeometry: Sendable, Hashable {
  public var strides: [Int]
  public var pads: [Int]  // begin..., end...
  public var dilations: [Int]
  public var group: Int

  public init(strides: [Int], pads: [Int], dilations: [Int], group: Int) {
    self.strides = strides
    self.pads = pads
    self.dilations = dilations
    self.group = group
  }
}

/// Static 2-D pooling geometry over NCHW: kernel, strides, pads (top, left, bottom, right),
/// dilations and ONNX's ceil_mode.
public struct PoolGeometry: Sendable, Hashable {
  public var kernel: [Int]
  public var strides: [Int]
  public var pads: [Int]
  public var dilations: [Int]
  public var ceilMode: Bool

  public init(kernel: [Int], strides: [Int], pads: [Int], dilations: [Int], ceilMode: Bool) {
    self.kernel = kernel
    self.strides = strides
    self.pads = pads
    self.dilations = dilations
    self.ceilMode = ceilMode
  }

  /// Output size along spatial axis i for an input of `size`, as ONNX and PyTorch define it:
  /// with ceil_mode a last window must still start inside the input or its leading pad.
  public func outputSize(_ size: Int, axis i: Int) -> Int {
    let span = dilations[i] * (kernel[i] - 1) + 1
    let room = size + pads[i] + pads[i + 2] - span
    var out = (ceilMode ? (room + strides[i] - 1) / strides[i] : room / strides[i]) + 1
    if ceilMode, (out - 1) * strides[i] >= size + pads[i] { out -= 1 }
    return out
  }

  var attributes: [String: AttrValue] {
    ["kernel": .ints(kernel), "strides": .ints(strides), "pads": .ints(pads), "dilations": .ints(dilations), "ceil_mode": .int(ceilMode ? 1 : 0)]
  }

  init(_ a: AttrDict) throws {
    self.init(
      kernel: try a.ints("kernel"), strides: try a.ints("strides"), pads: try a.ints("pads"), dilations: try a.ints("dilations"),
      ceilMode: try a.int("ceil_mode") != 0)
  }
}

/// How `pad` fills: with a constant, by mirroring without repeating the edge (reflect), or by
/// repeating the edge.
public enum PadMode: String, Sendable, Hashable {
  case constant, reflect, edge
}

/// Static slice parameters, one entry per sliced axis.
public struct SliceSpec: Sendable, Hashable {
  public var starts: [Int]
  public var ends: [Int]
  public var axes: [Int]
  public var steps: [Int]

  public init(starts: [Int], ends: [Int], axes: [Int], steps: [Int]) {
    self.starts = starts
    self.ends = ends
    self.axes = axes
    self.steps = steps
  }
}

/// An IR operation. Payloads hold everything static; tensor operands are node inputs.
/// Every pass switches over this exhaustively, so adding a case forces each pass to decide.
public enum Op: Sendable, Hashable {
  // Sources
  case constant(Literal)
  // Elementwise, numpy broadcasting
  case add, sub, mul, div, pow
  case equal
  case select  // ONNX Where(cond, x, y)
  /// An elementwise function of one operand (`Unary` holds the functions and their traits).
  case unary(Unary)
  case cast(DType)
  // Linear algebra
  case matMul
  /// y = x ·contract(axis) W (+ b). Inputs: x, W, optional b.
  case linear(axis: Int, layout: WeightLayout)
  case gemm(transA: Bool, transB: Bool, alpha: Double, beta: Double)
  case conv(ConvGeometry)
  // Normalization and activations
  /// Normalizes over axes [axis, rank). Inputs: x, scale, optional bias.
  case layerNorm(axis: Int, epsilon: Double)
  /// BatchNorm with running statistics (evaluation): per channel (axis 1),
  /// (x − mean) / √(var + ε) · scale + bias. Inputs: x, scale, bias, mean, var.
  case batchNorm(epsilon: Double, momentum: Double)
  /// BatchNorm with the batch's statistics over every axis but the channel (training).
  /// Inputs: x, scale, bias → y, mean, var (biased, what normalizes y).
  case batchNormTraining(epsilon: Double)
  case softmax(axis: Int)
  // Data movement; shapes are static payloads.
  case reshape([Int])
  case transpose([Int])
  case slice(SliceSpec)
  case gather(axis: Int)
  case concat(axis: Int)
  case split(axis: Int, sizes: [Int])
  /// Rows of x along `axis` at i64 indices; index −1 gives a row of zeros. SBP pads its index
  /// vectors with −1 when a step keeps fewer rows than the buffers hold. Inputs: x, indices.
  case gatherRows(axis: Int)
  /// `size` rows along `axis`: row idx_k[i] is row i of data_k. Rows no index names are zero,
  /// and index −1 is skipped. Inputs: data0, idx0, [data1, idx1, …].
  case scatterRows(axis: Int, size: Int)
  case squeeze([Int])
  /// Pads every axis by `pads` (begins, then ends; none negative). Inputs: x.
  case pad(pads: [Int], mode: PadMode, value: Double)
  case unsqueeze([Int])
  case expand([Int])
  // Reductions
  case reduceMean(axes: [Int], keepDims: Bool)
  case reduceSum(axes: [Int], keepDims: Bool)
  case globalAveragePool
  /// 2-D max pooling over NCHW; padding never wins.
  case maxPool(PoolGeometry)
  /// 2-D average pooling over NCHW; without `countIncludePad` a window divides by its
  /// elements inside the input.
  case averagePool(PoolGeometry, countIncludePad: Bool)
  // Training
  /// Identity forward; autodiff treats its result as a constant.
  case stopGradient
  /// Mean softmax cross-entropy over the batch. Inputs: logits [B, C] f32, labels [B] i64 → f32[].
  /// With label smoothing ε the target is (1 − ε)·one-hot + ε/C (timm's `--smoothing`).
  case softmaxCrossEntropy(smoothing: Double)
  // Backward ops that autodiff emits (no gradients of their own).
  /// Inputs: logits, labels, dloss → dlogits.
  case softmaxCrossEntropyGrad(smoothing: Double)
  /// dy·f′(x) for `unary(f)`. Inputs: x, dy → dx. Printed as the function's name + `_grad`.
  case unaryGrad(Unary)
  /// Inputs: y (the softmax output), dy → dx.
  case softmaxGrad(axis: Int)
  /// Inputs: x, scale, dy → dx, dscale, dbias. With four inputs, x̂, scale, dy, rstd: the
  /// gradient from what `layerNormSaving` kept instead of x (epsilon is then unused).
  case layerNormGrad(axis: Int, epsilon: Double)
  /// A bf16 step's layer norm (`mixed-precision`): inputs x, scale, optional bias → y, the
  /// normalized x̂ = (x − mean)·rstd rounded to bf16, and rstd = 1/√(var + ε) in f32, one per
  /// normalized row. Its gradient and its recomputation read x̂ and rstd, so x is not kept.
  case layerNormSaving(axis: Int, epsilon: Double)
  /// Inputs: x̂, scale, optional bias → x̂·scale + bias in f32: a layer norm's result rebuilt
  /// in the backward from the x̂ that `layerNormSaving` kept.
  case layerNormAffine(axis: Int)
  /// Inputs: dy, w → dx, for an input of shape `inputShape`.
  case convGradInput(ConvGeometry, inputShape: [Int])
  /// Inputs: x, dy → dw, for a weight of shape `weightShape`.
  case convGradWeight(ConvGeometry, weightShape: [Int])
  /// Inputs: x, dy → dW of a `linear` with this axis and layout, shaped `weightShape`.
  case linearGradWeight(axis: Int, layout: WeightLayout, weightShape: [Int])
  /// Inputs: dy → dx: dy placed into zeros of `inputShape` where the slice took it.
  case sliceGrad(SliceSpec, inputShape: [Int])
  /// Inputs: indices, dy → ddata of shape `inputShape`, summing repeated indices.
  case gatherGrad(axis: Int, inputShape: [Int])
  /// Inputs: dy → dx of shape `inputShape`: the interior of dy, plus what reflect or edge
  /// padding copied from each element.
  case padGrad(pads: [Int], mode: PadMode, inputShape: [Int])
  /// Inputs: x, scale, mean, var, dy → dx, dscale, dbias of `batchNormTraining`.
  case batchNormGrad(epsilon: Double)
  /// Running statistics, updated in place as PyTorch's training does: mean' = m·mean + (1 − m)·μ,
  /// var' = m·var + (1 − m)·σ²·n/(n − 1) over n = `count` values per channel (ONNX's momentum
  /// m). Inputs: mean, var, μ, σ² → mean', var' (the first two operands' memory).
  case runningStats(momentum: Double, count: Int)
  /// Inputs: x, dy → dx: each window's dy goes to its first maximum, as PyTorch routes it.
  case maxPoolGrad(PoolGeometry)
  /// Inputs: dy → dx of shape `inputShape`: each window's dy spread over what it averaged.
  case averagePoolGrad(PoolGeometry, countIncludePad: Bool, inputShape: [Int])
  // Optimizer updates. They overwrite the parameter and state in place; results alias them.
  /// Inputs: param, grad, velocity → param', velocity'.
  case sgd(lr: Double, momentum: Double, weightDecay: Double)
  /// Inputs: param, grad, m, v, step (f32[]) → param', m', v'.
  case adamw(lr: Double, beta1: Double, beta2: Double, epsilon: Double, weightDecay: Double)

  /// The op's name in the text form.
  public var name: String {
    switch self {
    case .constant: return "constant"
    case .add: return "add"
    case .sub: return "sub"
    case .mul: return "mul"
    case .div: return "div"
    case .pow: return "pow"
    case .equal: return "equal"
    case .select: return "select"
    case .unary(let f): return f.name
    case .cast: return "cast"
    case .matMul: return "matmul"
    case .linear: return "linear"
    case .gemm: return "gemm"
    case .conv: return "conv"
    case .layerNorm: return "layer_norm"
    case .softmax: return "softmax"
    case .reshape: return "reshape"
    case .transpose: return "transpose"
    case .slice: return "slice"
    case .gather: return "gather"
    case .concat: return "concat"
    case .split: return "split"
    case .gatherRows: return "gather_rows"
    case .scatterRows: return "scatter_rows"
    case .squeeze: return "squeeze"
    case .unsqueeze: return "unsqueeze"
    case .expand: return "expand"
    case .reduceMean: return "reduce_mean"
    case .reduceSum: return "reduce_sum"
    case .globalAveragePool: return "global_average_pool"
    case .pad: return "pad"
    case .padGrad: return "pad_grad"
    case .batchNorm: return "batch_norm"
    case .batchNormTraining: return "batch_norm_training"
    case .batchNormGrad: return "batch_norm_grad"
    case .runningStats: return "running_stats"
    case .maxPool: return "max_pool"
    case .averagePool: return "average_pool"
    case .maxPoolGrad: return "max_pool_grad"
    case .averagePoolGrad: return "average_pool_grad"
    case .stopGradient: return "stop_gradient"
    case .softmaxCrossEntropy: return "softmax_cross_entropy"
    case .softmaxCrossEntropyGrad: return "softmax_cross_entropy_grad"
    case .unaryGrad(let f): return f.name + "_grad"
    case .softmaxGrad: return "softmax_grad"
    case .layerNormGrad: return "layer_norm_grad"
    case .layerNormSaving: return "layer_norm_saving"
    case .layerNormAffine: return "layer_norm_affine"
    case .convGradInput: return "conv_grad_input"
    case .convGradWeight: return "conv_grad_weight"
    case .linearGradWeight: return "linear_grad_weight"
    case .sliceGrad: return "slice_grad"
    case .gatherGrad: return "gather_grad"
    case .sgd: return "sgd"
    case .adamw: return "adamw"
    }
  }

  /// The payload as attributes, sorted by key when printed.
  public var attributes: [String: AttrValue] {
    switch self {
    case .constant(let lit):
      switch lit.elements {
      case .floats(let v): return ["value": .floats(v)]
      case .ints(let v): return ["value": .ints(v.map { Int($0) })]
      }
    case .add, .sub, .mul, .div, .pow, .equal, .select, .matMul, .globalAveragePool, .stopGradient:
      return [:]
    // Printed only when set, so plans without smoothing read as before.
    case .softmaxCrossEntropy(let e), .softmaxCrossEntropyGrad(let e): return e == 0 ? [:] : ["smoothing": .float(e)]
    case .unary(let f), .unaryGrad(let f): return f.attributes
    case .softmaxGrad(let axis): return ["axis": .int(axis)]
    case .layerNormGrad(let axis, let eps), .layerNormSaving(let axis, let eps): return ["axis": .int(axis), "epsilon": .float(eps)]
    case .layerNormAffine(let axis): return ["axis": .int(axis)]
    case .convGradInput(let g, let shape):
      return [
        "strides": .ints(g.strides), "pads": .ints(g.pads), "dilations": .ints(g.dilations), "group": .int(g.group),
        "input_shape": .ints(shape),
      ]
    case .convGradWeight(let g, let shape):
      return [
        "strides": .ints(g.strides), "pads": .ints(g.pads), "dilations": .ints(g.dilations), "group": .int(g.group),
        "weight_shape": .ints(shape),
      ]
    case .linearGradWeight(let axis, let layout, let shape):
      return ["axis": .int(axis), "layout": .string(layout.rawValue), "weight_shape": .ints(shape)]
    case .sliceGrad(let s, let shape):
      return [
        "starts": .ints(s.starts), "ends": .ints(s.ends), "axes": .ints(s.axes), "steps": .ints(s.steps), "input_shape": .ints(shape),
      ]
    case .gatherGrad(let axis, let shape): return ["axis": .int(axis), "input_shape": .ints(shape)]
    case .pad(let pads, let mode, let value): return ["pads": .ints(pads), "mode": .string(mode.rawValue), "value": .float(value)]
    case .padGrad(let pads, let mode, let shape): return ["pads": .ints(pads), "mode": .string(mode.rawValue), "input_shape": .ints(shape)]
    case .batchNorm(let eps, let m): return ["epsilon": .float(eps), "momentum": .float(m)]
    case .batchNormTraining(let eps), .batchNormGrad(let eps): return ["epsilon": .float(eps)]
    case .runningStats(let m, let n): return ["momentum": .float(m), "count": .int(n)]
    case .maxPool(let g), .maxPoolGrad(let g): return g.attributes
    case .averagePool(let g, let include): return g.attributes.merging(["count_include_pad": .int(include ? 1 : 0)]) { a, _ in a }
    case .averagePoolGrad(let g, let include, let shape):
      return g.attributes.merging(["count_include_pad": .int(include ? 1 : 0), "input_shape": .ints(shape)]) { a, _ in a }
    case .sgd(let lr, let m, let wd): return ["lr": .float(lr), "momentum": .float(m), "weight_decay": .float(wd)]
    case .adamw(let lr, let b1, let b2, let eps, let wd):
      return ["lr": .float(lr), "beta1": .float(b1), "beta2": .float(b2), "epsilon": .float(eps), "weight_decay": .float(wd)]
    case .cast(let t): return ["to": .string(t.rawValue)]
    case .linear(let axis, let layout): return ["axis": .int(axis), "layout": .string(layout.rawValue)]
    case .gemm(let ta, let tb, let alpha, let beta):
      return ["trans_a": .int(ta ? 1 : 0), "trans_b": .int(tb ? 1 : 0), "alpha": .float(alpha), "beta": .float(beta)]
    case .conv(let g):
      return ["strides": .ints(g.strides), "pads": .ints(g.pads), "dilations": .ints(g.dilations), "group": .int(g.group)]
    case .layerNorm(let axis, let eps): return ["axis": .int(axis), "epsilon": .float(eps)]
    case .softmax(let axis): return ["axis": .int(axis)]
    case .reshape(let s): return ["shape": .ints(s)]
    case .transpose(let p): return ["perm": .ints(p)]
    case .slice(let s): return ["starts": .ints(s.starts), "ends": .ints(s.ends), "axes": .ints(s.axes), "steps": .ints(s.steps)]
    case .gather(let axis): return ["axis": .int(axis)]
    case .concat(let axis): return ["axis": .int(axis)]
    case .split(let axis, let sizes): return ["axis": .int(axis), "sizes": .ints(sizes)]
    case .gatherRows(let axis): return ["axis": .int(axis)]
    case .scatterRows(let axis, let size): return ["axis": .int(axis), "size": .int(size)]
    case .squeeze(let a): return ["axes": .ints(a)]
    case .unsqueeze(let a): return ["axes": .ints(a)]
    case .expand(let s): return ["shape": .ints(s)]
    case .reduceMean(let axes, let k): return ["axes": .ints(axes), "keepdims": .int(k ? 1 : 0)]
    case .reduceSum(let axes, let k): return ["axes": .ints(axes), "keepdims": .int(k ? 1 : 0)]
    }
  }

  /// Every op name the text form accepts.
  public static let allNames: [String] =
    [
      "constant", "add", "sub", "mul", "div", "pow", "equal", "select", "cast", "matmul", "linear", "gemm", "conv", "layer_norm",
      "softmax", "reshape", "transpose", "slice", "gather", "concat", "split", "gather_rows", "scatter_rows", "squeeze", "unsqueeze",
      "expand", "reduce_mean", "reduce_sum", "global_average_pool", "stop_gradient", "softmax_cross_entropy",
      "softmax_cross_entropy_grad", "softmax_grad", "layer_norm_grad", "layer_norm_saving", "layer_norm_affine", "conv_grad_input", "conv_grad_weight", "linear_grad_weight",
      "slice_grad", "gather_grad", "sgd", "adamw", "max_pool", "average_pool", "max_pool_grad", "average_pool_grad",
      "batch_norm", "batch_norm_training", "batch_norm_grad", "running_stats", "pad", "pad_grad",
    ] + Unary.all.map(\.name).uniqued() + Unary.all.map { $0.name + "_grad" }.uniqued()

  /// Rebuilds an op from its text name and payload attributes. `resultType` is needed by
  /// `constant`, whose dtype and shape are given by its type annotation.
  public init(name: String, attributes a: AttrDict, resultType: TensorType?) throws {
    switch name {
    case "constant":
      guard let t = resultType else { throw IRError.attribute("constant needs a result type") }
      let lit: Literal
      if t.dtype.isFloat {
        lit = Literal.make(t.dtype, shape: t.shape, values: try a.floats("value"))
      } else {
        lit = Literal(type: t, elements: .ints(try a.ints("value").map { Int64($0) }))
      }
      guard let n = checkedElementCount(t.shape), n == lit.count else {
        throw IRError.attribute("constant: \(lit.count) values do not fill \(t)")
      }
      self = .constant(lit)
    case "add": self = .add
    case "sub": self = .sub
    case "mul": self = .mul
    case "div": self = .div
    case "pow": self = .pow
    case "equal": self = .equal
    case "select": self = .select
    case "cast":
      let s = try a.string("to")
      guard let t = DType(rawValue: s) else { throw IRError.attribute("cast: unknown dtype '\(s)'") }
      self = .cast(t)
    case "matmul": self = .matMul
    case "linear":
      let s = try a.string("layout")
      guard let l = WeightLayout(rawValue: s) else { throw IRError.attribute("linear: layout must be \"oi\" or \"io\", got '\(s)'") }
      self = .linear(axis: try a.int("axis"), layout: l)
    case "gemm":
      self = .gemm(
        transA: try a.int("trans_a") != 0, transB: try a.int("trans_b") != 0, alpha: try a.float("alpha"), beta: try a.float("beta"))
    case "conv":
      self = .conv(
        ConvGeometry(
          strides: try a.ints("strides"), pads: try a.ints("pads"), dilations: try a.ints("dilations"), group: try a.int("group")))
    case "layer_norm": self = .layerNorm(axis: try a.int("axis"), epsilon: try a.float("epsilon"))
    case "softmax": self = .softmax(axis: try a.int("axis"))
    case "reshape": self = .reshape(try a.ints("shape"))
    case "transpose": self = .transpose(try a.ints("perm"))
    case "slice":
      self = .slice(SliceSpec(starts: try a.ints("starts"), ends: try a.ints("ends"), axes: try a.ints("axes"), steps: try a.ints("steps")))
    case "gather": self = .gather(axis: try a.int("axis"))
    case "concat": self = .concat(axis: try a.int("axis"))
    case "split": self = .split(axis: try a.int("axis"), sizes: try a.ints("sizes"))
    case "gather_rows": self = .gatherRows(axis: try a.int("axis"))
    case "scatter_rows": self = .scatterRows(axis: try a.int("axis"), size: try a.int("size"))
    case "squeeze": self = .squeeze(try a.ints("axes"))
    case "unsqueeze": self = .unsqueeze(try a.ints("axes"))
    case "expand": self = .expand(try a.ints("shape"))
    case "reduce_mean": self = .reduceMean(axes: try a.ints("axes"), keepDims: try a.int("keepdims") != 0)
    case "reduce_sum": self = .reduceSum(axes: try a.ints("axes"), keepDims: try a.int("keepdims") != 0)
    case "global_average_pool": self = .globalAveragePool
    case "stop_gradient": self = .stopGradient
    case "softmax_cross_entropy", "softmax_cross_entropy_grad":
      let e = a.entries["smoothing"] == nil ? 0 : try a.float("smoothing")
      guard e >= 0, e < 1 else { throw IRError.attribute("\(name): smoothing must be in [0, 1), got \(e)") }
      self = name == "softmax_cross_entropy" ? .softmaxCrossEntropy(smoothing: e) : .softmaxCrossEntropyGrad(smoothing: e)
    case "softmax_grad": self = .softmaxGrad(axis: try a.int("axis"))
    case "layer_norm_grad": self = .layerNormGrad(axis: try a.int("axis"), epsilon: try a.float("epsilon"))
    case "layer_norm_saving": self = .layerNormSaving(axis: try a.int("axis"), epsilon: try a.float("epsilon"))
    case "layer_norm_affine": self = .layerNormAffine(axis: try a.int("axis"))
    case "conv_grad_input", "conv_grad_weight":
      let g = ConvGeometry(
        strides: try a.ints("strides"), pads: try a.ints("pads"), dilations: try a.ints("dilations"), group: try a.int("group"))
      self =
        name == "conv_grad_input"
        ? .convGradInput(g, inputShape: try a.ints("input_shape")) : .convGradWeight(g, weightShape: try a.ints("weight_shape"))
    case "linear_grad_weight":
      let s = try a.string("layout")
      guard let l = WeightLayout(rawValue: s) else {
        throw IRError.attribute("linear_grad_weight: layout must be \"oi\" or \"io\", got '\(s)'")
      }
      self = .linearGradWeight(axis: try a.int("axis"), layout: l, weightShape: try a.ints("weight_shape"))
    case "slice_grad":
      self = .sliceGrad(
        SliceSpec(starts: try a.ints("starts"), ends: try a.ints("ends"), axes: try a.ints("axes"), steps: try a.ints("steps")),
        inputShape: try a.ints("input_shape"))
    case "gather_grad": self = .gatherGrad(axis: try a.int("axis"), inputShape: try a.ints("input_shape"))
    case "pad", "pad_grad":
      let s = try a.string("mode")
      guard let mode = PadMode(rawValue: s) else { throw IRError.attribute("\(name): mode must be constant, reflect or edge, got '\(s)'") }
      self =
        name == "pad"
        ? .pad(pads: try a.ints("pads"), mode: mode, value: try a.float("value"))
        : .padGrad(pads: try a.ints("pads"), mode: mode, inputShape: try a.ints("input_shape"))
    case "batch_norm": self = .batchNorm(epsilon: try a.float("epsilon"), momentum: try a.float("momentum"))
    case "batch_norm_training": self = .batchNormTraining(epsilon: try a.float("epsilon"))
    case "batch_norm_grad": self = .batchNormGrad(epsilon: try a.float("epsilon"))
    case "running_stats": self = .runningStats(momentum: try a.float("momentum"), count: try a.int("count"))
    case "max_pool": self = .maxPool(try PoolGeometry(a))
    case "max_pool_grad": self = .maxPoolGrad(try PoolGeometry(a))
    case "average_pool": self = .averagePool(try PoolGeometry(a), countIncludePad: try a.int("count_include_pad") != 0)
    case "average_pool_grad":
      self = .averagePoolGrad(
        try PoolGeometry(a), countIncludePad: try a.int("count_include_pad") != 0, inputShape: try a.ints("input_shape"))
    case "sgd": self = .sgd(lr: try a.float("lr"), momentum: try a.float("momentum"), weightDecay: try a.float("weight_decay"))
    case "adamw":
      self = .adamw(
        lr: try a.float("lr"), beta1: try a.float("beta1"), beta2: try a.float("beta2"), epsilon: try a.float("epsilon"),
        weightDecay: try a.float("weight_decay"))
    default:
      if let f = try Unary(name: name, attributes: a) {
        self = .unary(f)
      } else if name.hasSuffix("_grad"), let f = try Unary(name: String(name.dropLast("_grad".count)), attributes: a) {
        self = .unaryGrad(f)
      } else {
        throw IRError.attribute("unknown op '\(name)'")
      }
    }
  }
}

extension Array where Element: Hashable {
  /// The elements in order, each once.
  func uniqued() -> [Element] {
    var seen = Set<Element>()
    return filter { seen.insert($0).inserted }
  }
}
