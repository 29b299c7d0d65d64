// OpTraits.swift: what each op is, in one place: category, in-place, view, recomputation, row locality and FLOPs.

/// What kind of computation an op is. Attention has no op of its own: `mark` finds it as a
/// softmax over q·kᵀ, so its parts are linear algebra and a normalization.
public enum OpCategory: Sendable, Hashable {
  case source
  case unaryElementwise
  case binaryElementwise
  case reduction
  /// Reshapes, transposes, slices, gathers and scatters: data moves, nothing is computed.
  case movement
  case linearAlgebra
  case normalization
  case loss
  case optimizerUpdate
  /// Non-trainable state a training step updates in place (BatchNorm's running statistics).
  case stateUpdate
  /// A backward op autodiff emits, with the name of the forward op it differentiates.
  case backward(of: String)
}

extension Op {
  public var category: OpCategory {
    switch self {
    case .constant: return .source
    case .unary, .cast: return .unaryElementwise
    case .add, .sub, .mul, .div, .pow, .equal, .select: return .binaryElementwise
    case .reduceMean, .reduceSum, .globalAveragePool: return .reduction
    case .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
      .stopGradient:
      return .movement
    case .matMul, .linear, .gemm, .conv: return .linearAlgebra
    case .layerNorm, .softmax: return .normalization
    case .softmaxCrossEntropy: return .loss
    case .sgd, .adamw: return .optimizerUpdate
    case .softmaxCrossEntropyGrad: return .backward(of: "softmax_cross_entropy")
    case .unaryGrad(let f): return .backward(of: f.name)
    case .softmaxGrad: return .backward(of: "softmax")
    case .layerNormGrad, .layerNormAffine: return .backward(of: "layer_norm")
    case .layerNormSaving: return .normalization
    case .convGradInput, .convGradWeight: return .backward(of: "conv")
    case .linearGradWeight: return .backward(of: "linear")
    case .sliceGrad: return .backward(of: "slice")
    case .gatherGrad: return .backward(of: "gather")
    case .maxPool, .averagePool: return .reduction
    case .batchNorm, .batchNormTraining: return .normalization
    case .batchNormGrad: return .backward(of: "batch_norm_training")
    case .runningStats: return .stateUpdate
    case .pad: return .movement
    case .padGrad: return .backward(of: "pad")
    case .maxPoolGrad: return .backward(of: "max_pool")
    case .averagePoolGrad: return .backward(of: "average_pool")
    }
  }

  /// One function per element after broadcasting: each result element reads only the
  /// operand elements at its own (broadcast) position.
  public var isElementwise: Bool {
    switch category {
    case .unaryElementwise, .binaryElementwise: return true
    case .backward: if case .unaryGrad = self { return true } else { return false }
    case .source, .reduction, .movement, .linearAlgebra, .normalization, .loss, .optimizerUpdate, .stateUpdate: return false
    }
  }

  /// The result may overwrite an operand of its own type that dies at this op (the memory
  /// planner's in-place reuse): every element is read before it is written.
  public var isInPlaceable: Bool {
    switch self {
    case .add, .sub, .mul, .div, .pow, .unary, .unaryGrad: return true
    case .equal, .select, .cast, .constant, .matMul, .linear, .gemm, .conv, .layerNorm, .softmax, .reshape, .transpose, .slice,
      .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum,
      .globalAveragePool, .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine,
      .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .maxPool, .averagePool, .maxPoolGrad,
      .averagePoolGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .pad, .padGrad, .sgd, .adamw:
      return false
    }
  }

  /// The result is the operand's bytes under another shape (or another meaning for autodiff):
  /// it shares the operand's memory and costs nothing to run.
  public var isView: Bool {
    switch self {
    case .reshape, .squeeze, .unsqueeze, .stopGradient: return true
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
      .softmax, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .expand, .reduceMean, .reduceSum,
      .globalAveragePool, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine,
      .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .maxPool, .averagePool, .maxPoolGrad,
      .averagePoolGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .pad, .padGrad, .sgd, .adamw:
      return false
    }
  }

  /// Cheap enough that the backward recomputes the result from values it saves anyway rather
  /// than keeping it from the forward (`remat`): activations, LayerNorm, data movement.
  public var isCheapToRecompute: Bool {
    switch self {
    case .unary(let f): return f.isCheapToRecompute
    case .layerNorm, .layerNormAffine, .transpose, .reshape, .squeeze, .unsqueeze, .stopGradient, .gatherRows, .slice: return true
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .cast, .matMul, .linear, .gemm, .conv, .softmax, .gather,
      .concat, .split, .scatterRows, .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .softmaxCrossEntropy,
      .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .convGradInput, .convGradWeight, .linearGradWeight,
      .sliceGrad, .gatherGrad, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad, .batchNorm, .batchNormTraining,
      .batchNormGrad, .runningStats, .sgd, .adamw:
      return false
    }
  }

  /// An optimizer update: it overwrites its parameter and state in place.
  public var isUpdate: Bool { category == .optimizerUpdate }

  /// For an op whose results overwrite operands in place (an optimizer update writing its
  /// parameter and state), the operand each result is; nil for every other op.
  public var overwrittenOperands: [Int]? {
    switch self {
    case .sgd: return [0, 2]  // param', velocity'
    case .adamw: return [0, 2, 3]  // param', m', v'
    case .runningStats: return [0, 1]  // mean', var'
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
      .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
      .reduceMean, .reduceSum, .globalAveragePool, .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad,
      .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .maxPool,
      .averagePool, .maxPoolGrad, .averagePoolGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .pad, .padGrad:
      return nil
    }
  }

  /// Pure data movement from one operand: the result is the operand's elements rearranged,
  /// selected or repeated (what `mark` looks through between a block's parts).
  public var isDataMovement: Bool {
    switch self {
    case .transpose, .reshape, .squeeze, .unsqueeze, .split, .slice, .expand: return true
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
      .softmax, .gather, .concat, .gatherRows, .scatterRows, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .stopGradient,
      .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight,
      .linearGradWeight, .sliceGrad, .gatherGrad, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad, .batchNorm,
      .batchNormTraining, .batchNormGrad, .runningStats, .sgd, .adamw:
      return false
    }
  }

  /// A nonlinearity that may sit between the layers of an MLP or PW-Conv branch.
  public var isActivation: Bool {
    if case .unary(let f) = self { return f.isActivation }
    return false
  }

  /// Row locality, the property SBP rests on. For a result whose axis `t` indexes rows
  /// (tokens), the operand axis each result row depends on row by row: entry k is the axis
  /// of operand k whose row i alone feeds result row i, or nil when that operand is read
  /// whole for every row (a weight, a broadcast bias). Returns nil when the op mixes rows
  /// along `t` (attention's products along the token axis, a conv, a reduction over it).
  /// Elementwise operands must be float or bool; integer operands are indices.
  public func rowAxes(along t: Int, inputs: [TensorType], output: TensorType) -> [Int?]? {
    let r = output.rank
    switch self {
    case .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .unaryGrad:
      var axes: [Int?] = []
      for x in inputs {
        guard x.dtype.isFloat || x.dtype == .bool else { return nil }
        let s = x.shape
        let aligned = [Int](repeating: 1, count: r - s.count) + s
        if aligned[t] == 1 && output.shape[t] != 1 {
          axes.append(nil)
        } else if t - (r - s.count) >= 0 {
          axes.append(t - (r - s.count))
        } else {
          return nil
        }
      }
      return axes
    case .stopGradient: return [t]
    case .linear(let a, _) where a != t: return [t] + inputs.dropFirst().map { _ in nil }
    case .layerNorm(let a, _) where t < a: return [t] + inputs.dropFirst().map { _ in nil }
    case .softmax(let a) where a != t: return [t]
    case .transpose(let p): return [p[t]]
    case .split(let a, _) where a != t: return [t]
    case .concat(let a) where a != t: return inputs.map { _ in t }
    case .squeeze(let axes):
      let kept = (0..<inputs[0].rank).filter { !axes.contains($0) }
      return [kept[t]]
    case .unsqueeze(let axes):
      guard !axes.contains(t) else { return nil }
      return [t - axes.filter { $0 < t }.count]
    case .reshape(let shape):
      let s = inputs[0].shape
      let before = shape[..<t].reduce(1, *)
      var acc = 1
      for (i, d) in s.enumerated() {
        if acc == before && d == shape[t] { return [i] }
        acc *= d
        if acc > before { break }
      }
      return nil
    case .matMul:
      let ra = inputs[0].rank, rb = inputs[1].rank
      if t == r - 2, ra >= 2, inputs[0].shape[ra - 2] == output.shape[t] { return [ra - 2, nil] }
      if t == r - 1, rb >= 2, inputs[1].shape[rb - 1] == output.shape[t] { return [nil, rb - 1] }
      return nil
    case .linear, .layerNorm, .softmax, .split, .concat:
      return nil  // the op acts along the row axis itself
    case .constant, .gemm, .conv, .slice, .gather, .gatherRows, .scatterRows, .expand, .reduceMean, .reduceSum,
      .globalAveragePool, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput,
      .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
      .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .pad, .padGrad, .sgd, .adamw:
      return nil
    }
  }
}

extension Graph {
  /// Whether `remat` may rebuild node `n`'s result in the backward from its operands, and
  /// `schedule` treats it as such a rebuild: an op cheap to recompute, a small literal (a
  /// norm's ε, an exported unit scale), an element-wise op of full-size activations and small
  /// broadcast operands (a decomposed norm's (x − mean) / σ, its per-channel scale and
  /// shift; StarReLU's s·relu² + b; PoolFormer's pool(n) − n), one pass like an activation,
  /// or a small window's average (PoolFormer's token mixer). `remat` itself rebuilds an op of
  /// several full-size operands only when they all come from one saved activation.
  public func isCheapToRecompute(_ n: Node) -> Bool {
    if n.op.isCheapToRecompute { return true }
    if case .constant = n.op { return type(of: n.outputs[0]).elementCount <= 1024 }
    if case .averagePool(let g, _) = n.op { return g.kernel.reduce(1, *) <= 9 }
    guard [Op.add, .sub, .mul, .div].contains(n.op) else { return false }
    let out = type(of: n.outputs[0])
    let full = n.inputs.filter { type(of: $0).shape == out.shape }
    return out.dtype == .f32 && !full.isEmpty
      && n.inputs.allSatisfy { type(of: $0).elementCount * 8 <= out.elementCount || type(of: $0).shape == out.shape }
  }

  /// Floating-point operations node `n` performs. `gemm` is what its matrix multiplies cost
  /// (2·M·N·K, the runtime's sgemm calls); `other` is the runtime's own kernels: one per
  /// result element for elementwise ops, a few per element for normalizations (constants
  /// below), and none for data movement.
  public func flops(_ n: Node) -> (gemm: Int, other: Int) {
    let out = n.outputs.first.map { type(of: $0).elementCount } ?? 0
    func count(_ i: Int) -> Int { type(of: n.inputs[i]).elementCount }
    func shape(_ i: Int) -> [Int] { type(of: n.inputs[i]).shape }
    func convCost(_ g: ConvGeometry, out y: Int, weight w: [Int], input x: [Int]) -> (Int, Int) {
      let perOutput = 2 * w.dropFirst().reduce(1, *)
      // Depthwise convolutions run in a direct kernel, everything else as im2col + sgemm.
      let depthwise = g.group > 1 && w.count > 1 && w[1] == 1
      return depthwise ? (0, y * perOutput) : (y * perOutput, 0)
    }
    switch n.op {
    case .linear(let axis, _):
      let rows = count(0) / max(shape(0)[axis], 1)
      return (2 * count(0) * (out / max(rows, 1)), n.inputs.count > 2 ? out : 0)
    case .linearGradWeight(let axis, _, let ws):
      let fin = shape(0)[axis]
      let fout = ws.reduce(1, *) / max(fin, 1)
      return (2 * count(0) * fout, 0)
    case .matMul:
      return (2 * out * (shape(0).last ?? 1), 0)
    case .gemm(let ta, _, _, _):
      let a = shape(0)
      return (2 * out * (ta ? a[0] : a[1]), n.inputs.count > 2 ? out : 0)
    case .conv(let g):
      let (m, o) = convCost(g, out: out, weight: shape(1), input: shape(0))
      return (m, o + (n.inputs.count > 2 ? out : 0))
    case .convGradInput(let g, _):
      return convCost(g, out: count(0), weight: shape(1), input: [])
    case .convGradWeight(let g, let ws):
      return convCost(g, out: count(1), weight: ws, input: shape(0))
    case .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .unaryGrad:
      return (0, out)
    case .layerNorm: return (0, 5 * out)
    case .layerNormGrad: return (0, 8 * count(0))
    case .layerNormSaving: return (0, 6 * out)
    case .layerNormAffine: return (0, 2 * out)
    case .softmax: return (0, 3 * out)
    case .softmaxGrad: return (0, 3 * out)
    case .softmaxCrossEntropy, .softmaxCrossEntropyGrad: return (0, 3 * count(0))
    case .reduceMean, .reduceSum, .globalAveragePool: return (0, count(0))
    case .gatherGrad: return (0, count(1))
    // A compare or add per window element (the gradients scan the same windows).
    case .maxPool(let g), .averagePool(let g, _): return (0, out * g.kernel.reduce(1, *))
    case .maxPoolGrad(let g): return (0, count(1) * g.kernel.reduce(1, *))
    case .batchNorm: return (0, 2 * out)
    case .batchNormTraining: return (0, 5 * out)
    case .batchNormGrad: return (0, 8 * count(0))
    case .runningStats: return (0, 6 * count(0))
    case .pad, .padGrad: return (0, 0)
    case .averagePoolGrad(let g, _, _): return (0, count(0) * g.kernel.reduce(1, *))
    case .sgd: return (0, 4 * count(0))
    case .adamw: return (0, 10 * count(0))
    case .constant, .cast, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
      .expand, .stopGradient, .sliceGrad:
      return (0, 0)
    }
  }
}

extension Op {
  /// The operand positions of a product (matmul, linear, gemm, linear's weight gradient): the
  /// matrices it multiplies, which `mixed-precision` makes bf16. Empty for other ops.
  public var productOperands: [Int] {
    switch self {
    case .matMul, .linear, .gemm, .linearGradWeight: return [0, 1]
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .conv, .layerNorm, .softmax, .reshape, .transpose,
      .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum,
      .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .maxPool, .averagePool,
      .maxPoolGrad, .averagePoolGrad, .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad,
      .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw:
      return []
    }
  }
}

/// How PyTorch's CPU autocast types an op's result in a bf16 region, which decides what a
/// bf16 step may keep for its backward in bf16 (`mixed-precision`).
public enum AutocastRule: Sendable, Equatable {
  /// On autocast's lower-precision list (products and convolutions): the result is bf16.
  case lower
  /// On its fp32 list (losses), or outside the step's forward: the result is fp32.
  case float32
  /// The first result has the dtype of operand 0 (norms, whose fp32 weights do not promote
  /// it); any other result, a statistic, is fp32.
  case followsInput
  /// Type promotion: bf16 when every floating operand that carries data is bf16. Literals, a
  /// one-element operand (a Python number, as the exporters write it) and values computed
  /// from those alone (a mask's bias) do not promote.
  case promote
  /// A literal: it takes the precision of what it is combined with.
  case literal
}

extension Op {
  public var autocast: AutocastRule {
    switch self {
    case .matMul, .linear, .gemm, .conv: return .lower
    case .layerNorm, .layerNormSaving, .batchNorm, .batchNormTraining: return .followsInput
    case .add, .sub, .mul, .div, .pow, .select, .unary, .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows,
      .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .maxPool, .averagePool,
      .stopGradient:
      return .promote
    case .cast(let to): return to == .bf16 ? .lower : .float32
    case .constant: return .literal
    case .equal, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormAffine,
      .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .padGrad, .batchNormGrad, .runningStats,
      .maxPoolGrad, .averagePoolGrad, .sgd, .adamw:
      return .float32
    }
  }
}
