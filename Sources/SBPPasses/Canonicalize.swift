// Canonicalize.swift: raises the forms exporters emit to `linear`, `gelu`, `silu` and `layer_norm`.
import SBPIR

/// Raises MatMul+bias and Gemm to `linear`, 1×1 convs to `linear` on the channel axis, the erf
/// and tanh GELU chains to `gelu`, x·sigmoid(x) to `silu`, decomposed LayerNorm to `layer_norm`, a spatial mean to
/// `global_average_pool`, and removes data movement that does nothing (an identity gather,
/// chained or no-op reshapes), so later passes match one form whichever exporter or opset
/// produced the model.
public struct Canonicalize: Pass {
  public init() {}
  public let name = "canonicalize"
  public let summary =
    "raise MatMul/Gemm/1x1-Conv to linear, GELU chains to gelu, x*sigmoid(x) to silu, x*hard_sigmoid(x) to hard_swish, LayerNorm forms to layer_norm, spatial means to global_average_pool; drop no-op data movement"

  public static let patterns: [any RewritePattern] = [
    LinearFromMatMul(), LinearFromGemm(), LinearFromPointwiseConv(), LinearBias(),
    GeluFromErf(), GeluFromTanh(), SiluFromSigmoid(), LayerNormFromDecomposed(),
    GlobalAveragePoolFromMean(), GatherIdentity(), ReshapeChain(),
  ]

  public func run(_ graph: inout Graph) throws {
    try graph.applyPatterns(Self.patterns)
  }
}

// MARK: Matching helpers

func near(_ a: Double?, _ b: Double, tol: Double = 1e-5) -> Bool {
  guard let a else { return false }
  return abs(a - b) <= tol * max(1, abs(b))
}

extension UseDef {
  /// The defining node of `v` if its op satisfies `is`.
  func def(_ v: ValueID, _ test: (Op) -> Bool) -> Node? {
    guard let n = definingNode(v), test(n.op) else { return nil }
    return n
  }

  /// Leaves of the product tree rooted at `v`, looking through `mul` nodes whose result has
  /// one use (so absorbing them cannot change any other reader).
  func productLeaves(_ v: ValueID, isRoot: Bool = true) -> [ValueID] {
    if let n = def(v, { $0 == .mul }), isRoot || hasSingleUse(v) {
      return productLeaves(n.inputs[0], isRoot: false) + productLeaves(n.inputs[1], isRoot: false)
    }
    return [v]
  }

  /// For `a + b` with one operand the scalar `c`, the other operand.
  func plusConstant(_ v: ValueID, _ c: Double) -> ValueID? {
    guard let n = def(v, { $0 == .add }) else { return nil }
    if near(scalar(n.inputs[1]), c) { return n.inputs[0] }
    if near(scalar(n.inputs[0]), c) { return n.inputs[1] }
    return nil
  }

  /// True when `u` computes `x · k` (or `x / (1/k)`) for the scalar k.
  func isScaled(_ u: ValueID, of x: ValueID, by k: Double, tol: Double = 1e-4) -> Bool {
    if let n = def(u, { $0 == .div }), n.inputs[0] == x, let d = scalar(n.inputs[1]) { return near(1 / d, k, tol: tol) }
    if let n = def(u, { $0 == .mul }) {
      if n.inputs[0] == x { return near(scalar(n.inputs[1]), k, tol: tol) }
      if n.inputs[1] == x { return near(scalar(n.inputs[0]), k, tol: tol) }
    }
    return false
  }

  func trainableParam(_ v: ValueID, rank: Int? = nil) -> Param? {
    guard let p = param(v), p.trainable else { return nil }
    if let rank, graph.type(of: v).rank != rank { return nil }
    return p
  }
}

// MARK: linear

/// `matmul(x, W)` with a rank-2 weight, or with `transpose(W)`, becomes `linear`.
struct LinearFromMatMul: RewritePattern {
  let name = "linear-from-matmul"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard root.op == .matMul else { return nil }
    let x = root.inputs[0], w = root.inputs[1]
    let axis = ud.graph.type(of: x).rank - 1
    if ud.trainableParam(w, rank: 2) != nil {
      return Replacement(
        nodes: [NewNode(.linear(axis: axis, layout: .inOut), [.value(x), .value(w)], name: root.name)],
        results: [.result(node: 0, output: 0)])
    }
    if let t = ud.def(w, { $0 == .transpose([1, 0]) }), ud.hasSingleUse(w), ud.trainableParam(t.inputs[0], rank: 2) != nil {
      return Replacement(
        nodes: [NewNode(.linear(axis: axis, layout: .outIn), [.value(x), .value(t.inputs[0])], name: root.name)],
        results: [.result(node: 0, output: 0)])
    }
    return nil
  }
}

/// `gemm(A, W, b)` with alpha = beta = 1 and A untransposed becomes `linear` over the last axis.
struct LinearFromGemm: RewritePattern {
  let name = "linear-from-gemm"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .gemm(false, let tb, let alpha, let beta) = root.op, alpha == 1, beta == 1 || root.inputs.count == 2,
      ud.trainableParam(root.inputs[1], rank: 2) != nil
    else { return nil }
    var ins: [Ref] = [.value(root.inputs[0]), .value(root.inputs[1])]
    if root.inputs.count == 3 {
      guard ud.trainableParam(root.inputs[2], rank: 1) != nil else { return nil }
      ins.append(.value(root.inputs[2]))
    }
    return Replacement(
      nodes: [NewNode(.linear(axis: 1, layout: tb ? .outIn : .inOut), ins, name: root.name)], results: [.result(node: 0, output: 0)])
  }
}

/// A 1×1 convolution with unit stride, no padding and one group is exactly `linear` on axis 1.
struct LinearFromPointwiseConv: RewritePattern {
  let name = "linear-from-pointwise-conv"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .conv(let g) = root.op, g.group == 1, g.strides.allSatisfy({ $0 == 1 }), g.pads.allSatisfy({ $0 == 0 }),
      g.dilations.allSatisfy({ $0 == 1 }), ud.graph.type(of: root.inputs[1]).shape.dropFirst(2).allSatisfy({ $0 == 1 })
    else { return nil }
    return Replacement(
      nodes: [NewNode(.linear(axis: 1, layout: .outIn), root.inputs.map { .value($0) }, name: root.name)],
      results: [.result(node: 0, output: 0)])
  }
}

/// `linear(x, W) + b` with a rank-1 bias parameter folds the bias into the `linear`.
struct LinearBias: RewritePattern {
  let name = "linear-bias"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard root.op == .add else { return nil }
    for (l, b) in [(root.inputs[0], root.inputs[1]), (root.inputs[1], root.inputs[0])] {
      guard let lin = ud.def(l, { if case .linear = $0 { return true } else { return false } }), lin.inputs.count == 2,
        ud.hasSingleUse(l), ud.trainableParam(b, rank: 1) != nil,
        ud.graph.type(of: root.outputs[0]) == ud.graph.type(of: l)
      else { continue }
      return Replacement(
        nodes: [NewNode(lin.op, [.value(lin.inputs[0]), .value(lin.inputs[1]), .value(b)], name: lin.name)],
        results: [.result(node: 0, output: 0)])
    }
    return nil
  }
}

// MARK: gelu

/// Finds x in a product {x, 0.5, s} where `s` is `1 + f(x)`; returns x and f(x)'s argument check.
func geluProduct(_ root: Node, _ ud: UseDef, inner: (ValueID, ValueID) -> Bool) -> ValueID? {
  guard root.op == .mul else { return nil }
  let leaves = ud.productLeaves(root.outputs[0])
  guard leaves.count == 3, let half = leaves.firstIndex(where: { near(ud.scalar($0), 0.5) }) else { return nil }
  let rest = leaves.enumerated().filter { $0.offset != half }.map(\.element)
  for (x, s) in [(rest[0], rest[1]), (rest[1], rest[0])] {
    guard let f = ud.plusConstant(s, 1), inner(x, f) else { continue }
    return x
  }
  return nil
}

/// `0.5 · x · (1 + erf(x / √2))`, in any association, becomes `gelu`.
struct GeluFromErf: RewritePattern {
  let name = "gelu-from-erf"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    let x = geluProduct(root, ud) { x, f in
      guard let e = ud.def(f, { $0 == .unary(.erf) }) else { return false }
      return ud.isScaled(e.inputs[0], of: x, by: 0.5.squareRoot())
    }
    guard let x else { return nil }
    return Replacement(nodes: [NewNode(.unary(.gelu(.none)), [.value(x)], name: root.name)], results: [.result(node: 0, output: 0)])
  }
}

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` becomes `gelu` with the tanh approximation.
struct GeluFromTanh: RewritePattern {
  let name = "gelu-from-tanh"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    let x = geluProduct(root, ud) { x, f in
      guard let t = ud.def(f, { $0 == .unary(.tanh) }) else { return false }
      let outer = ud.productLeaves(t.inputs[0])
      guard outer.count == 2, let c = outer.firstIndex(where: { near(ud.scalar($0), (2 / Double.pi).squareRoot(), tol: 1e-4) }),
        let sum = ud.def(outer[1 - c], { $0 == .add })
      else { return false }
      for (a, cube) in [(sum.inputs[0], sum.inputs[1]), (sum.inputs[1], sum.inputs[0])] where a == x {
        let leaves = ud.productLeaves(cube)
        guard let k = leaves.firstIndex(where: { near(ud.scalar($0), 0.044715, tol: 1e-4) }) else { continue }
        let rest = leaves.enumerated().filter { $0.offset != k }.map(\.element)
        if rest.count == 3, rest.allSatisfy({ $0 == x }) { return true }
        if rest.count == 1, let p = ud.def(rest[0], { $0 == .pow }), p.inputs[0] == x, near(ud.scalar(p.inputs[1]), 3) { return true }
      }
      return false
    }
    guard let x else { return nil }
    return Replacement(nodes: [NewNode(.unary(.gelu(.tanh)), [.value(x)], name: root.name)], results: [.result(node: 0, output: 0)])
  }
}

/// `x · sigmoid(x)`, either way round, becomes `silu` (PyTorch exports SiLU this way), and
/// `x · hard_sigmoid(x)` with PyTorch's α = 1/6, β = 1/2 becomes `hard_swish` (older opsets
/// export hardswish this way). A gate `x · sigmoid(g)` with g ≠ x (squeeze-and-excitation)
/// stays a product.
struct SiluFromSigmoid: RewritePattern {
  let name = "silu-from-sigmoid"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard root.op == .mul else { return nil }
    for (x, s) in [(root.inputs[0], root.inputs[1]), (root.inputs[1], root.inputs[0])] {
      guard let gate = ud.definingNode(s), gate.inputs.first == x, ud.graph.type(of: x) == ud.graph.type(of: root.outputs[0])
      else { continue }
      let f: Unary
      switch gate.op {
      case .unary(.sigmoid): f = .silu
      case .unary(.hardSigmoid(let alpha, let beta)) where near(alpha, 1.0 / 6) && near(beta, 0.5): f = .hardSwish
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
        .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
        .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
        .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
        .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
        .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad,
        .sgd, .adamw:
        continue
      }
      return Replacement(nodes: [NewNode(.unary(f), [.value(x)], name: root.name)], results: [.result(node: 0, output: 0)])
    }
    return nil
  }
}

// MARK: layer_norm

/// `(x − mean(x)) / sqrt(mean((x − mean(x))²) + ε) · w + b`, reduced over trailing axes, becomes `layer_norm`.
struct LayerNormFromDecomposed: RewritePattern {
  let name = "layer-norm-from-decomposed"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    // Root: add(mul(n, w), b), with either operand order at each step.
    guard root.op == .add else { return nil }
    for (scaled, b) in [(root.inputs[0], root.inputs[1]), (root.inputs[1], root.inputs[0])] {
      guard ud.trainableParam(b, rank: 1) != nil, let m = ud.def(scaled, { $0 == .mul }) else { continue }
      for (n, w) in [(m.inputs[0], m.inputs[1]), (m.inputs[1], m.inputs[0])] {
        guard ud.trainableParam(w, rank: 1) != nil, let (x, axis, eps) = normalized(n, ud) else { continue }
        return Replacement(
          nodes: [NewNode(.layerNorm(axis: axis, epsilon: eps), [.value(x), .value(w), .value(b)], name: root.name)],
          results: [.result(node: 0, output: 0)])
      }
    }
    return nil
  }

  /// Matches `d / sqrt(var + ε)` with d = x − mean(x); returns x, the first normalized axis and ε.
  func normalized(_ n: ValueID, _ ud: UseDef) -> (ValueID, Int, Double)? {
    guard let div = ud.def(n, { $0 == .div }), let sq = ud.def(div.inputs[1], { $0 == .unary(.sqrt) }),
      let addEps = ud.def(sq.inputs[0], { $0 == .add })
    else { return nil }
    let d = div.inputs[0]
    guard let sub = ud.def(d, { $0 == .sub }),
      let mean = ud.def(sub.inputs[1], { if case .reduceMean = $0 { return true } else { return false } }),
      mean.inputs[0] == sub.inputs[0], case .reduceMean(let axes, true) = mean.op
    else { return nil }
    let x = sub.inputs[0]
    let rank = ud.graph.type(of: x).rank
    guard let first = axes.first, axes == Array(first..<rank) else { return nil }
    for (v, e) in [(addEps.inputs[0], addEps.inputs[1]), (addEps.inputs[1], addEps.inputs[0])] {
      guard let eps = ud.scalar(e), let varN = ud.def(v, { $0 == .reduceMean(axes: axes, keepDims: true) }) else { continue }
      let sqIn = varN.inputs[0]
      let squares =
        (ud.def(sqIn, { $0 == .pow }).map { $0.inputs[0] == d && near(ud.scalar($0.inputs[1]), 2) } ?? false)
        || (ud.def(sqIn, { $0 == .mul }).map { $0.inputs[0] == d && $0.inputs[1] == d } ?? false)
      if squares { return (x, first, eps) }
    }
    return nil
  }
}

// MARK: pooling and data movement

/// A mean over every spatial axis of an N,C,… tensor, keeping dims, is `global_average_pool`.
struct GlobalAveragePoolFromMean: RewritePattern {
  let name = "global-average-pool-from-mean"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .reduceMean = root.op else { return nil }
    let rank = ud.graph.type(of: root.inputs[0]).rank
    guard rank >= 3, root.op == .reduceMean(axes: Array(2..<rank), keepDims: true) else { return nil }
    return Replacement(
      nodes: [NewNode(.globalAveragePool, [.value(root.inputs[0])], name: root.name)], results: [.result(node: 0, output: 0)])
  }
}

/// `gather(x, I)` on axis 0 of a 1-D x, where I lists 0, 1, …, n−1 in order, only reshapes x.
/// (The dynamo exporter lowers a no-op `as_strided` this way.)
struct GatherIdentity: RewritePattern {
  let name = "gather-identity"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .gather(0) = root.op else { return nil }
    let x = ud.graph.type(of: root.inputs[0])
    guard x.rank == 1, let idx = ud.integerValues(root.inputs[1]), idx.count == x.shape[0],
      idx.enumerated().allSatisfy({ Int64($0.offset) == $0.element })
    else { return nil }
    return Replacement(
      nodes: [NewNode(.reshape(ud.graph.type(of: root.outputs[0]).shape), [.value(root.inputs[0])], name: root.name)],
      results: [.result(node: 0, output: 0)])
  }
}

/// `reshape(reshape(x))` is one reshape, and a reshape to the shape x already has is x.
struct ReshapeChain: RewritePattern {
  let name = "reshape-chain"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .reshape(let shape) = root.op else { return nil }
    let x = root.inputs[0]
    if ud.graph.type(of: x).shape == shape { return .forward(x) }
    if let inner = ud.def(x, { if case .reshape = $0 { return true } else { return false } }), ud.hasSingleUse(x) {
      return Replacement(
        nodes: [NewNode(.reshape(shape), [.value(inner.inputs[0])], name: root.name)], results: [.result(node: 0, output: 0)])
    }
    return nil
  }
}

extension UseDef {
  /// Integer elements of a constant: an inline literal or a non-trainable i64/i32 parameter with data.
  func integerValues(_ v: ValueID) -> [Int64]? {
    if let l = literal(v), case .ints(let xs) = l.elements { return xs }
    guard let p = param(v), !p.trainable, let d = p.data else { return nil }
    let t = graph.type(of: v)
    switch t.dtype {
    case .i64: return (0..<t.elementCount).map { d.buffer.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) }
    case .i32: return (0..<t.elementCount).map { Int64(d.buffer.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
    default: return nil
    }
  }
}
