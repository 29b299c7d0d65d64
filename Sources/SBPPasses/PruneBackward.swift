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
    guard let loss = graph.nodes.lastIndex(where: { $0.op == .softmaxCrossEntropy }),
      graph.inputs.contains(where: { $0.name.hasPrefix("sbp.kept.") })
    else { return }
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
    let end = graph.nodes.lastIndex(where: { $0.op == .softmaxCrossEntropy }) ?? 0
    var found: [ValueID: (idx: ValueID, axis: Int)] = [:]
    for k in graph.nodes.indices {
      graph.annotate(node: k, "sbp.sparse_rows", nil)
      guard k > end, let s = RowSparsity.outputSupport(graph.nodes[k], graph, found) else { continue }
      found[graph.nodes[k].outputs[0]] = s
      if let name = names[s.idx] { graph.annotate(node: k, "sbp.sparse_rows", .string("\(name)@\(s.axis)")) }
    }
  }

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
    func redirect(_ old: ValueID, _ new: ValueID) {
      for k in g.nodes.indices where k != i {
        for j in g.nodes[k].inputs.indices where g.nodes[k].inputs[j] == old { g.nodes[k].inputs[j] = new }
      }
      for k in g.outputs.indices where g.outputs[k].value == old { g.outputs[k].value = new }
    }
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
      guard let s = support[n.inputs[2]], s.axis < axis else { return false }
      let outs = try g.append(n.op, [try gather(n.inputs[0], s), n.inputs[1], try gather(n.inputs[2], s)], name: n.name, attrs: n.attrs)
      redirect(n.outputs[0], try scatter(outs[0], like: n.outputs[0], s))
      redirect(n.outputs[1], outs[1])
      redirect(n.outputs[2], outs[2])
      return true
    case .geluGrad:
      guard let s = support[n.inputs[1]], g.type(of: n.inputs[0]) == g.type(of: n.inputs[1]) else { return false }
      let y = try g.append(n.op, [try gather(n.inputs[0], s), try gather(n.inputs[1], s)], name: n.name, attrs: n.attrs)[0]
      redirect(n.outputs[0], try scatter(y, like: n.outputs[0], s))
      return true
    case .reduceSum(let axes, _):
      guard let s = support[n.inputs[0]], axes.contains(s.axis) else { return false }
      g.nodes[i].inputs = [try gather(n.inputs[0], s)]
      return true
    default:
      return false
    }
  }

  /// Moves each gather of a forward value to just after that value is made, so the forward
  /// saves the kept rows rather than the whole value.
  func hoistForwardGathers(_ g: inout Graph) {
    guard let loss = g.nodes.lastIndex(where: { $0.op == .softmaxCrossEntropy }) else { return }
    var producer: [ValueID: Int] = [:]
    for (i, n) in g.nodes.enumerated() where i <= loss { for o in n.outputs { producer[o] = i } }
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
    case .mul, .geluGrad, .reluGrad, .neg, .div:
      // Zero times anything finite is zero: one sparse factor (of the result's shape) is enough.
      let factors: [ValueID] = n.op == .div || n.op == .neg ? [n.inputs[0]] : (n.op == .mul ? n.inputs : [n.inputs[1]])
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
      guard let s = support[n.inputs[2]], s.axis < axis else { return nil }
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
    default:
      return nil
    }
  }
}
