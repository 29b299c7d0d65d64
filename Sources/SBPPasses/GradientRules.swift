// GradientRules.swift: one gradient rule per op, in one table, as tinygrad keeps its gradient table.
import SBPIR

/// Appends backward nodes to a graph. Rules call these helpers and never touch the graph directly.
struct GradBuilder {
  var graph: Graph
  let name: String
  /// Stamped on every node emitted: the forward node's block, so costs and errors name it.
  var attrs: [String: AttrValue] = [:]

  mutating func emit(_ op: Op, _ inputs: [ValueID], _ suffix: String = "") throws -> [ValueID] {
    try graph.append(op, inputs, name: name + ".grad" + suffix, attrs: attrs)
  }
  mutating func one(_ op: Op, _ inputs: [ValueID]) throws -> ValueID { try emit(op, inputs)[0] }

  /// A scalar f32 constant.
  mutating func scalar(_ v: Double) throws -> ValueID { try one(.constant(Literal(f32: [v], shape: [])), []) }

  func type(_ v: ValueID) -> TensorType { graph.type(of: v) }

  /// Zeros of type `t`.
  mutating func zeros(_ t: TensorType) throws -> ValueID {
    let z = try one(.constant(Literal.make(t.dtype, shape: [], values: [0])), [])
    return t.shape.isEmpty ? z : try one(.expand(t.shape), [z])
  }

  /// Sums `grad` over the axes that broadcasting added or stretched, so it takes `shape`.
  mutating func unbroadcast(_ grad: ValueID, to shape: [Int]) throws -> ValueID {
    let gs = type(grad).shape
    if gs == shape { return grad }
    let pad = gs.count - shape.count
    let axes = gs.indices.filter { $0 < pad || (shape[$0 - pad] == 1 && gs[$0] != 1) }
    var r = grad
    if !axes.isEmpty { r = try one(.reduceSum(axes: axes, keepDims: true), [r]) }
    return type(r).shape == shape ? r : try one(.reshape(shape), [r])
  }

  /// Swaps the last two axes.
  mutating func transposeLast(_ v: ValueID) throws -> ValueID {
    let r = type(v).rank
    var perm = Array(0..<r)
    perm.swapAt(r - 1, r - 2)
    return try one(.transpose(perm), [v])
  }
}

/// Error for an op that has no gradient rule; it names the op and the node.
public struct NoGradientRule: Error, CustomStringConvertible {
  public let description: String
}

extension GradBuilder {
  /// Gradients of `node`'s inputs given the gradients of its outputs (nil where an output has
  /// none). Returns one entry per input; nil means no gradient flows there.
  mutating func gradients(of node: Node, _ dys: [ValueID?]) throws -> [ValueID?] {
    let x = node.inputs
    func none(_ why: String = "") -> NoGradientRule {
      NoGradientRule(description: "no gradient rule for \(node.op.name) at node '\(node.name)'\(why.isEmpty ? "" : " (\(why))")")
    }
    // Split is the one forward op with several results whose gradients all count; batch
    // statistics feed only the running averages, which the loss never reads.
    if case .split = node.op { return try splitGradient(node, dys) }
    if case .batchNormTraining = node.op, dys.dropFirst().contains(where: { $0 != nil }) {
      throw none("the loss reads the batch statistics")
    }
    guard let dy = dys[0] else { return x.map { _ in nil } }
    switch node.op {
    case .constant, .stopGradient, .equal:
      return x.map { _ in nil }
    case .add:
      return [try unbroadcast(dy, to: type(x[0]).shape), try unbroadcast(dy, to: type(x[1]).shape)]
    case .sub:
      return [try unbroadcast(dy, to: type(x[0]).shape), try unbroadcast(try one(.unary(.neg), [dy]), to: type(x[1]).shape)]
    case .mul:
      return [
        try unbroadcast(try one(.mul, [dy, x[1]]), to: type(x[0]).shape),
        try unbroadcast(try one(.mul, [dy, x[0]]), to: type(x[1]).shape),
      ]
    case .div:
      // y = a/b: da = dy/b, db = −dy·y/b.
      let da = try one(.div, [dy, x[1]])
      let db = try one(.unary(.neg), [try one(.div, [try one(.mul, [dy, node.outputs[0]]), x[1]])])
      return [try unbroadcast(da, to: type(x[0]).shape), try unbroadcast(db, to: type(x[1]).shape)]
    case .pow:
      guard let c = graph.index().scalar(x[1]) else { throw none("the exponent must be a constant") }
      let e = try one(.pow, [x[0], try scalar(c - 1)])
      return [try unbroadcast(try one(.mul, [dy, try one(.mul, [e, try scalar(c)])]), to: type(x[0]).shape), nil]
    case .unary(let f):
      return [try unaryGradient(f, node, dy)]
    case .select:
      let z = try zeros(type(dy))
      return [
        nil, try unbroadcast(try one(.select, [x[0], dy, z]), to: type(x[1]).shape),
        try unbroadcast(try one(.select, [x[0], z, dy]), to: type(x[2]).shape),
      ]
    case .cast(let to):
      guard to.isFloat, type(x[0]).dtype == to else { throw none("casts change the dtype") }
      return [dy]
    case .matMul:
      let da = try one(.matMul, [dy, try transposeLast(x[1])])
      let db = try one(.matMul, [try transposeLast(x[0]), dy])
      return [try unbroadcast(da, to: type(x[0]).shape), try unbroadcast(db, to: type(x[1]).shape)]
    case .linear(let axis, let layout):
      let w = type(x[1])
      // dx contracts dy's feature axis with W the other way round.
      let dx = try one(.linear(axis: axis, layout: layout == .outIn ? .inOut : .outIn), [dy, x[1]])
      let dw = try one(.linearGradWeight(axis: axis, layout: layout, weightShape: w.shape), [x[0], dy])
      var out: [ValueID?] = [dx, dw]
      if x.count == 3 {
        let axes = (0..<type(dy).rank).filter { $0 != axis }
        out.append(try reshaped(try one(.reduceSum(axes: axes, keepDims: false), [dy]), type(x[2]).shape))
      }
      return out
    case .gemm(let ta, let tb, let alpha, let beta):
      // y = α·op(A)·op(B) + β·C.
      let a = x[0], b = x[1]
      let scaled = alpha == 1 ? dy : try one(.mul, [dy, try scalar(alpha)])
      let opB = tb ? b : try transposeLast(b)
      var da = try one(.matMul, [scaled, opB])  // dy·op(B)ᵀ
      if ta { da = try transposeLast(da) }
      let opA = ta ? a : try transposeLast(a)
      var db = try one(.matMul, [opA, scaled])  // op(A)ᵀ·dy
      if tb { db = try transposeLast(db) }
      var out: [ValueID?] = [da, db]
      if x.count == 3 {
        let dc = beta == 1 ? dy : try one(.mul, [dy, try scalar(beta)])
        out.append(try unbroadcast(dc, to: type(x[2]).shape))
      }
      return out
    case .conv(let geo):
      let dx = try one(.convGradInput(geo, inputShape: type(x[0]).shape), [dy, x[1]])
      let dw = try one(.convGradWeight(geo, weightShape: type(x[1]).shape), [x[0], dy])
      var out: [ValueID?] = [dx, dw]
      if x.count == 3 {
        let axes = (0..<type(dy).rank).filter { $0 != 1 }
        out.append(try reshaped(try one(.reduceSum(axes: axes, keepDims: false), [dy]), type(x[2]).shape))
      }
      return out
    case .layerNorm(let axis, let eps):
      let g = try emit(.layerNormGrad(axis: axis, epsilon: eps), [x[0], x[1], dy])
      var out: [ValueID?] = [g[0], try reshaped(g[1], type(x[1]).shape)]
      if x.count == 3 { out.append(try reshaped(g[2], type(x[2]).shape)) }
      return out
    case .softmax(let axis):
      return [try one(.softmaxGrad(axis: axis), [node.outputs[0], dy])]
    case .reshape, .squeeze, .unsqueeze:
      return [try one(.reshape(type(x[0]).shape), [dy])]
    case .transpose(let perm):
      var inv = [Int](repeating: 0, count: perm.count)
      for (i, p) in perm.enumerated() { inv[p] = i }
      return [try one(.transpose(inv), [dy])]
    case .slice(let spec):
      return [try one(.sliceGrad(spec, inputShape: type(x[0]).shape), [dy])]
    case .gatherRows(let axis):
      return [try one(.scatterRows(axis: axis, size: type(x[0]).shape[axis]), [dy, x[1]]), nil]
    case .scatterRows(let axis, _):
      return try x.indices.map { k in k % 2 == 1 ? nil : try one(.gatherRows(axis: axis), [dy, x[k + 1]]) }
    case .gather(let axis):
      return [try one(.gatherGrad(axis: axis, inputShape: type(x[0]).shape), [x[1], dy]), nil]
    case .concat(let axis):
      var out: [ValueID?] = []
      var offset = 0
      for v in x {
        let n = type(v).shape[axis]
        out.append(try one(.slice(SliceSpec(starts: [offset], ends: [offset + n], axes: [axis], steps: [1])), [dy]))
        offset += n
      }
      return out
    case .split:
      return try splitGradient(node, dys)  // not reached: handled before the switch
    case .expand:
      return [try unbroadcast(dy, to: type(x[0]).shape)]
    case .reduceMean(let axes, let keep), .reduceSum(let axes, let keep):
      let s = type(x[0]).shape
      let all = axes.isEmpty ? Array(0..<s.count) : axes
      let kept = s.enumerated().map { all.contains($0.offset) ? 1 : $0.element }
      var g = keep ? dy : try one(.reshape(kept), [dy])
      g = try one(.expand(s), [g])
      if case .reduceMean = node.op {
        let n = all.reduce(1) { $0 * s[$1] }
        g = try one(.mul, [g, try scalar(1 / Double(n))])
      }
      return [g]
    case .batchNormTraining(let eps):
      let g = try emit(.batchNormGrad(epsilon: eps), [x[0], x[1], node.outputs[1], node.outputs[2], dy])
      return [g[0], try reshaped(g[1], type(x[1]).shape), try reshaped(g[2], type(x[2]).shape)]
    case .batchNorm:
      throw none("a training step normalizes with the batch's statistics (batch_norm_training), not the running ones")
    case .pad(let pads, let mode, _):
      return [try one(.padGrad(pads: pads, mode: mode, inputShape: type(x[0]).shape), [dy])]
    case .maxPool(let g):
      return [try one(.maxPoolGrad(g), [x[0], dy])]
    case .averagePool(let g, let include):
      return [try one(.averagePoolGrad(g, countIncludePad: include, inputShape: type(x[0]).shape), [dy])]
    case .globalAveragePool:
      let s = type(x[0]).shape
      let n = s.dropFirst(2).reduce(1, *)
      return [try one(.mul, [try one(.expand(s), [dy]), try scalar(1 / Double(n))])]
    case .softmaxCrossEntropy(let e):
      return [try one(.softmaxCrossEntropyGrad(smoothing: e), [x[0], x[1], dy]), nil]
    case .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight,
      .linearGradWeight, .sliceGrad, .gatherGrad, .maxPoolGrad, .averagePoolGrad, .batchNormGrad, .runningStats, .padGrad,
      .sgd, .adamw:
      throw none("backward, optimizer and state-update ops have no gradients of their own")
    }
  }

  /// dx of `y = f(x)`: a fused `unary_grad` where the runtime has one, otherwise the
  /// formula in ops that read y where that saves keeping x.
  mutating func unaryGradient(_ f: Unary, _ node: Node, _ dy: ValueID) throws -> ValueID {
    let x = node.inputs[0], y = node.outputs[0]
    switch f {
    case .sqrt:
      return try one(.div, [try one(.mul, [dy, try scalar(0.5)]), y])
    case .erf:
      // d erf(x) = 2/√π · exp(−x²).
      let sq = try one(.mul, [x, x])
      let e = try one(.unary(.exp), [try one(.unary(.neg), [sq])])
      return try one(.mul, [dy, try one(.mul, [e, try scalar(2 / Double.pi.squareRoot())])])
    case .tanh:
      return try one(.mul, [dy, try one(.sub, [try scalar(1), try one(.mul, [y, y])])])
    case .exp:
      return try one(.mul, [dy, y])
    case .neg:
      return try one(.unary(.neg), [dy])
    case .sigmoid:
      return try one(.mul, [dy, try one(.mul, [y, try one(.sub, [try scalar(1), y])])])
    case .reciprocal:
      return try one(.unary(.neg), [try one(.mul, [dy, try one(.mul, [y, y])])])
    case .relu, .silu, .gelu, .hardSigmoid, .hardSwish, .clip:
      return try one(.unaryGrad(f), [x, dy])
    }
  }

  mutating func reshaped(_ v: ValueID, _ shape: [Int]) throws -> ValueID {
    type(v).shape == shape ? v : try one(.reshape(shape), [v])
  }

  /// Split: concatenate the outputs' gradients, zeros where an output has none.
  mutating func splitGradient(_ node: Node, _ dys: [ValueID?]) throws -> [ValueID?] {
    guard case .split(let axis, _) = node.op else { return node.inputs.map { _ in nil } }
    var parts: [ValueID] = []
    for (o, d) in zip(node.outputs, dys) { parts.append(try d ?? zeros(type(o))) }
    return [try one(.concat(axis: axis), parts)]
  }
}
