// PruneBackward.swift: row sparsity: backward ops whose gradient is zero outside SBP's kept rows run on the kept rows only.
import SBPIR

/// Row sparsity over the backward graph (DESIGN.md, "Where the compiler beats the
/// hand-written reference"). A gradient that SBP's reassembly builds from kept rows only
/// (`scatter_rows` of one half) is structurally zero at every other row; the analysis
/// follows that through ops that keep rows apart (elementwise, data movement that keeps the
/// token axis, concatenation along another axis, the input gradient of `linear` and of
/// `layer_norm`). Each consumer that treats rows independently is then rewritten to read the
/// kept rows only: `linear_grad_weight` (dW = Xᵀ·dY over kept rows), the input gradient of
/// `linear`, `layer_norm_grad`, `gelu_grad` and bias sums. The forward activation such a
/// consumer reads is gathered right where the forward makes it, so only its kept rows are
/// saved. With `--print-after prune-backward` the pass lists what it found.
public struct PruneBackward: Pass {
  public init() {}
  public let name = "prune-backward"
  public let summary = "row sparsity: run backward ops whose gradient is zero outside the kept rows on the kept rows only (after autodiff)"

  public func run(_ graph: inout Graph) throws {
    guard graph.lossIndex != nil,
      graph.inputs.contains(where: { $0.name.hasPrefix("sbp.kept.") })
    else { return }
    try mergeForwardHalves(&graph)
    guard let loss = graph.lossIndex else { return }
    var support: [ValueID: (idx: ValueID, axis: Int)] = [:]
    var rewrites = 0
    var i = loss + 1
    while i < graph.nodes.count {
      let n = graph.nodes[i]
      if let s = RowSparsity.outputSupport(n, graph, support) { support[n.outputs[0]] = s }
      if try rewrite(&graph, at: i, support: &support) { rewrites += 1 }
      i += 1
    }
    if rewrites > 0 {
      try graph.sortTopologically()
      var sinker = RowSinker(graph: graph)
      while try sinker.sweep() {}
      graph = sinker.graph
      hoistForwardGathers(&graph)
      graph.moveUpdatesLast()
    }
    // What the analysis finds in the result, for --print-after: each gradient that is still
    // zero outside some rows names them (index input @ axis).
    let names = Dictionary(uniqueKeysWithValues: graph.inputs.map { ($0.value, $0.name) })
    let end = graph.lossIndex ?? 0
    var found: [ValueID: (idx: ValueID, axis: Int)] = [:]
    for k in graph.nodes.indices {
      graph.annotate(node: k, Annotation.sparseRows, nil)
      guard k > end, let s = RowSparsity.outputSupport(graph.nodes[k], graph, found) else { continue }
      found[graph.nodes[k].outputs[0]] = s
      if let name = names[s.idx] { graph.annotate(node: k, Annotation.sparseRows, .string("\(name)@\(s.axis)")) }
    }
  }

  /// Merges the two forward halves of each split computation back into one. After autodiff
  /// the split has done its work: the backward reads only the kept half. Where the dropped
  /// half is a clone of the kept one over other rows (an MLP, a patch downsampler, the
  /// attention core under `query`), their reassembly equals one computation over every row;
  /// that computation replaces both, and what the backward read from the kept half it now
  /// reads as the kept rows of the whole. (Under `qkv` the halves differ and stay split.)
  func mergeForwardHalves(_ g: inout Graph) throws {
    var candidates: [ValueID] = []
    guard let loss = g.lossIndex else { return }
    for n in g.nodes[...loss] where n.inputs.count == 4 {
      if case .scatterRows = n.op { candidates.append(n.outputs[0]) }
    }
    for out in candidates {
      guard let si = g.nodes.firstIndex(where: { $0.outputs.first == out }) else { continue }
      try mergeHalves(&g, scatterAt: si)
    }
  }

  func mergeHalves(_ g: inout Graph, scatterAt si: Int) throws {
    let s = g.nodes[si]
    let (a, ik, sgOut, id) = (s.inputs[0], s.inputs[1], s.inputs[2], s.inputs[3])
    let producer = g.producerIndex(before: si)
    guard let sp = producer[sgOut], g.nodes[sp].op == .stopGradient else { return }
    let b = g.nodes[sp].inputs[0]
    // The kept half starts at a gather of the kept rows; the dropped half must gather the same
    // value on the same axis.
    func sources(from v: ValueID, idx: ValueID) -> [Int] {
      var out: [Int] = []
      var seen = Set<Int>()
      var stack = [v]
      while let x = stack.popLast(), seen.count < 256 {
        guard let p = producer[x], seen.insert(p).inserted else { continue }
        if case .gatherRows = g.nodes[p].op, g.nodes[p].inputs[1] == idx { out.append(p) } else { stack += g.nodes[p].inputs }
      }
      return out
    }
    let ks = sources(from: a, idx: ik), ds = sources(from: b, idx: id)
    guard ks.count == 1, ds.count == 1, case .gatherRows(let t) = g.nodes[ks[0]].op, g.nodes[ds[0]].op == .gatherRows(axis: t),
      g.nodes[ks[0]].inputs[0] == g.nodes[ds[0]].inputs[0]
    else { return }
    let x = g.nodes[ks[0]].inputs[0], gk = g.nodes[ks[0]].outputs[0], gd = g.nodes[ds[0]].outputs[0]
    let rk = g.nodesBetween(sources: [gk], sink: a, producer: producer)
    let rd = g.nodesBetween(sources: [gd], sink: b, producer: producer)
    guard rk.count == rd.count else { return }
    // Clones: the same ops (reshapes up to their row count) reading the same outside values.
    var pos: [ValueID: ValueID] = [gd: gk]
    for (ki, di) in zip(rk, rd) {
      let kn = g.nodes[ki], dn = g.nodes[di]
      let sameOp: Bool
      if case .reshape = kn.op, case .reshape = dn.op { sameOp = true } else { sameOp = kn.op == dn.op }
      guard sameOp, kn.inputs.count == dn.inputs.count, zip(kn.inputs, dn.inputs).allSatisfy({ pos[$1] ?? $1 == $0 }) else { return }
      for (o, p) in zip(kn.outputs, dn.outputs) { pos[p] = o }
    }
    guard pos[b] == a else { return }
    // One computation over every row, with each value's token axis followed through it.
    let sinker = RowSinker(graph: g)
    let rows = g.type(of: x).shape[t]
    var full: [ValueID: ValueID] = [gk: x]
    var axis: [ValueID: Int] = [gk: t]
    let start = g.nodes.count
    for ki in rk {
      let n = g.nodes[ki]
      let rank = g.type(of: n.outputs[0]).rank
      guard
        let out = (0..<rank).first(where: { cand in
          guard let m = sinker.operandAxes(n, t: cand) else { return false }
          return zip(n.inputs, m.axes).allSatisfy { v, ax in axis[v] == nil ? ax == nil : ax == axis[v] }
        })
      else {
        g.nodes.removeSubrange(start...)
        return
      }
      var op = n.op
      if case .reshape(var shape) = op {
        shape[out] = rows
        op = .reshape(shape)
      }
      let base = n.name.hasSuffix(".sbp.kept") ? String(n.name.dropLast(".sbp.kept".count)) : n.name
      let made = try g.append(op, n.inputs.map { full[$0] ?? $0 }, name: base, attrs: n.attrs)
      for (o, m) in zip(n.outputs, made) {
        full[o] = m
        axis[o] = out
      }
    }
    // The backward's reads of the kept half become gathers of the kept rows of the whole.
    let region = Set(rk)
    var gathers: [ValueID: ValueID] = [gk: gk]
    for v in rk.flatMap({ g.nodes[$0].outputs }) {
      let f = full[v]!
      for u in g.nodes.indices where u < start && u != si && !region.contains(u) && g.nodes[u].inputs.contains(v) {
        if gathers[v] == nil {
          // The kept half's block and stage stay with the gather, so `sbpc memory` counts the
          // rows it saves in their block.
          let producer = g.nodes[producerIndex(of: v, g)]
          let attrs = producer.attrs.filter { [Annotation.block, Annotation.stage].contains($0.key) }
          gathers[v] = try g.append(.gatherRows(axis: axis[v]!), [f, ik], name: producer.name, attrs: attrs)[0]
        }
        g.replaceUses(of: v, with: gathers[v]!, inNode: u)
      }
    }
    // Each gather right after the value it reads, so a wide value (fc1's output) can die at
    // its next reader (GELU, which then writes over it) instead of living to the chain's end.
    let chain = Array(g.nodes[start..<(start + rk.count)]), taken = Array(g.nodes[(start + rk.count)...])
    var made: [Node] = taken.filter { !chain.flatMap(\.outputs).contains($0.inputs[0]) }
    for c in chain {
      made.append(c)
      made += taken.filter { c.outputs.contains($0.inputs[0]) }
    }
    g.nodes.removeSubrange(start...)
    g.nodes.insert(contentsOf: made, at: si)
    g.replaceUses(of: s.outputs[0], with: full[a]!)
    g.eliminateDeadCode()
  }

  private func producerIndex(of v: ValueID, _ g: Graph) -> Int { g.nodes.firstIndex { $0.outputs.contains(v) } ?? 0 }

  /// Rewrites the node at `i` to read kept rows when its gradient operand is row-sparse.
  /// New nodes are appended; the graph is re-sorted by the caller's final sweep.
  func rewrite(_ g: inout Graph, at i: Int, support: inout [ValueID: (idx: ValueID, axis: Int)]) throws -> Bool {
    let n = g.nodes[i]
    func gather(_ v: ValueID, _ s: (idx: ValueID, axis: Int)) throws -> ValueID {
      try g.append(.gatherRows(axis: s.axis), [v, s.idx], name: n.name + ".rows", attrs: n.attrs)[0]
    }
    func scatter(_ v: ValueID, like old: ValueID, _ s: (idx: ValueID, axis: Int)) throws -> ValueID {
      let size = g.type(of: old).shape[s.axis]
      let out = try g.append(.scatterRows(axis: s.axis, size: size), [v, s.idx], name: n.name + ".rows", attrs: n.attrs)[0]
      support[out] = s
      return out
    }
    func redirect(_ old: ValueID, _ new: ValueID) { g.replaceUses(of: old, with: new, except: [i]) }
    switch n.op {
    case .linearGradWeight(let axis, _, _):
      guard let s = support[n.inputs[1]], s.axis != axis, g.type(of: n.inputs[0]).rank == g.type(of: n.inputs[1]).rank else {
        return false
      }
      let x = try gather(n.inputs[0], s), dy = try gather(n.inputs[1], s)
      g.nodes[i].inputs = [x, dy]
      return true
    case .linear(let axis, _):
      guard let s = support[n.inputs[0]], s.axis != axis else { return false }
      let dy = try gather(n.inputs[0], s)
      let y = try g.append(n.op, [dy] + Array(n.inputs.dropFirst()), name: n.name, attrs: n.attrs)[0]
      redirect(n.outputs[0], try scatter(y, like: n.outputs[0], s))
      return true
    case .layerNormGrad(let axis, _):
      guard n.inputs.count == 3, let s = support[n.inputs[2]], s.axis < axis else { return false }
      let outs = try g.append(n.op, [try gather(n.inputs[0], s), n.inputs[1], try gather(n.inputs[2], s)], name: n.name, attrs: n.attrs)
      redirect(n.outputs[0], try scatter(outs[0], like: n.outputs[0], s))
      redirect(n.outputs[1], outs[1])
      redirect(n.outputs[2], outs[2])
      return true
    case .unaryGrad:
      guard let s = support[n.inputs[1]], g.type(of: n.inputs[0]) == g.type(of: n.inputs[1]) else { return false }
      let y = try g.append(n.op, [try gather(n.inputs[0], s), try gather(n.inputs[1], s)], name: n.name, attrs: n.attrs)[0]
      redirect(n.outputs[0], try scatter(y, like: n.outputs[0], s))
      return true
    // The gradient through a product of two rows (SwiGLU's silu(g)·x): zero wherever the
    // incoming gradient is, so only the kept rows of the other factor are read (and saved).
    case .mul:
      let t = g.type(of: n.outputs[0])
      guard n.inputs.count == 2, n.inputs.allSatisfy({ g.type(of: $0) == t }),
        let k = n.inputs.firstIndex(where: { support[$0] != nil }), let s = support[n.inputs[k]],
        support[n.inputs[1 - k]] == nil
      else { return false }
      let y = try g.append(n.op, [try gather(n.inputs[0], s), try gather(n.inputs[1], s)], name: n.name, attrs: n.attrs)[0]
      redirect(n.outputs[0], try scatter(y, like: n.outputs[0], s))
      return true
    case .reduceSum(let axes, _):
      guard let s = support[n.inputs[0]], axes.contains(s.axis) else { return false }
      g.nodes[i].inputs = [try gather(n.inputs[0], s)]
      return true
    case .constant, .add, .sub, .div, .pow, .equal, .select, .unary, .cast, .matMul, .gemm, .conv, .layerNorm, .softmax,
      .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
      .reduceMean, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .maxPool,
      .averagePool,
      .maxPoolGrad, .averagePoolGrad, .stopGradient,
      .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .softmaxGrad,
      .convGradInput, .convGradWeight, .sliceGrad, .gatherGrad, .layerNormSaving, .layerNormAffine, .sgd, .adamw:
      return false
    }
  }

  /// Moves each gather of a forward value to just after that value is made, so the forward
  /// saves the kept rows rather than the whole value.
  func hoistForwardGathers(_ g: inout Graph) {
    guard let loss = g.lossIndex else { return }
    let producer = g.producerIndex(before: loss + 1)
    let inputs = Set(g.inputs.map(\.value))
    var after: [Int: [Node]] = [:]
    var moved = Set<Int>()
    for (i, n) in g.nodes.enumerated() where i > loss {
      guard case .gatherRows = n.op, inputs.contains(n.inputs[1]), let p = producer[n.inputs[0]] else { continue }
      after[p, default: []].append(n)
      moved.insert(i)
    }
    guard !moved.isEmpty else { return }
    var out: [Node] = []
    for (i, n) in g.nodes.enumerated() where !moved.contains(i) {
      out.append(n)
      out += after[i] ?? []
    }
    g.nodes = out
  }
}

/// Which rows of a backward value can be nonzero.
enum RowSparsity {
  /// The support of `n`'s first result given its operands' supports, or nil when dense.
  static func outputSupport(_ n: Node, _ g: Graph, _ support: [ValueID: (idx: ValueID, axis: Int)]) -> (idx: ValueID, axis: Int)? {
    guard n.outputs.count >= 1 else { return nil }
    let out = g.type(of: n.outputs[0])
    switch n.op {
    case .scatterRows(let axis, _) where n.inputs.count == 2:
      return (n.inputs[1], axis)
    case .mul, .unaryGrad, .unary(.neg), .div:
      // Zero times anything finite is zero: one sparse factor (of the result's shape) is enough.
      // A unary gradient is dy·f′(x), zero where dy is.
      let factors: [ValueID]
      switch n.op {
      case .div, .unary(.neg): factors = [n.inputs[0]]
      case .mul: factors = n.inputs
      case .constant, .add, .sub, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm, .softmax,
        .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
        .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad,
        .runningStats, .maxPool,
        .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient,
        .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad,
        .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd,
        .adamw: factors = [n.inputs[1]]
      }
      return factors.lazy.compactMap { v in g.type(of: v) == out ? support[v] : nil }.first
    case .add, .sub:
      guard let a = support[n.inputs[0]], let b = support[n.inputs[1]], a.idx == b.idx, a.axis == b.axis,
        g.type(of: n.inputs[0]) == out, g.type(of: n.inputs[1]) == out
      else { return nil }
      return a
    case .linear(let axis, _):
      guard let s = support[n.inputs[0]], s.axis != axis else { return nil }
      return s
    case .layerNormGrad(let axis, _):
      guard n.inputs.count == 3, let s = support[n.inputs[2]], s.axis < axis else { return nil }
      return s
    case .transpose(let p):
      guard let s = support[n.inputs[0]], let a = p.firstIndex(of: s.axis) else { return nil }
      return (s.idx, a)
    case .reshape(let shape):
      guard let s = support[n.inputs[0]] else { return nil }
      let ins = g.type(of: n.inputs[0]).shape
      let before = ins[..<s.axis].reduce(1, *)
      var acc = 1
      for (a, d) in shape.enumerated() {
        if acc == before && d == ins[s.axis] { return (s.idx, a) }
        acc *= d
        if acc > before { break }
      }
      return nil
    case .squeeze(let axes):
      guard let s = support[n.inputs[0]], !axes.contains(s.axis) else { return nil }
      return (s.idx, s.axis - axes.filter { $0 < s.axis }.count)
    case .unsqueeze(let axes):
      guard let s = support[n.inputs[0]] else { return nil }
      var a = s.axis
      for x in axes.sorted() where x <= a { a += 1 }
      return (s.idx, a)
    case .concat(let axis):
      guard let s = support[n.inputs[0]], s.axis != axis,
        n.inputs.allSatisfy({ v in support[v].map { $0.idx == s.idx && $0.axis == s.axis } ?? false })
      else { return nil }
      return s
    case .constant, .pow, .equal, .select, .unary, .cast, .matMul, .gemm, .conv, .layerNorm, .softmax, .slice, .gather, .split,
      .gatherRows, .scatterRows, .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining,
      .batchNormGrad, .runningStats, .maxPool, .averagePool, .maxPoolGrad,
      .averagePoolGrad, .stopGradient, .softmaxCrossEntropy,
      .softmaxCrossEntropyGrad, .softmaxGrad, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad,
      .layerNormSaving, .layerNormAffine, .sgd, .adamw:
      return nil
    }
  }
}
