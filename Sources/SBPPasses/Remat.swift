// Remat.swift: recomputes cheap forward results in the backward instead of saving them.
import SBPIR

/// Rematerialization. A forward value the backward reads is recomputed in the backward when
/// it comes from cheap ops (GELU, LayerNorm, data movement, an element-wise op of one
/// activation by small broadcast operands) whose operands the backward saves anyway: GELU's
/// input is kept for its own gradient, LayerNorm's for its gradient, a residual stream for
/// the depthwise conv reading it, a decomposed norm's x − mean for its division. The value
/// then no longer lives from the forward to the backward. PyTorch's compiler partitioner
/// makes the same trade (DESIGN.md): a few FLOPs per element buy 4·n·C (GELU) and n·C
/// (LayerNorm) bytes per block.
public struct Rematerialize: Pass {
  public init() {}
  public let name = "remat"
  public let summary = "recompute cheap forward values (GELU, LayerNorm, data movement, broadcast scale/shift) in the backward from values it saves anyway"

  public func run(_ graph: inout Graph) throws {
    guard let loss = graph.lossIndex else { return }
    let producer = graph.producerIndex(before: loss + 1)
    var readers: [ValueID: [Int]] = [:]
    for i in graph.nodes.indices where i > loss {
      for v in graph.nodes[i].inputs where producer[v] != nil { readers[v, default: []].append(i) }
    }
    var saved = Set(readers.keys)
    // The kept rows of u saved beside a full value rebuilt cheaply from u alone (an SBP split's
    // fc1 output u: its gelu is read whole by GRN's backward, its kept rows by gelu's gradient):
    // keeping u instead rebuilds both, and the kept rows' copy is no longer held.
    for g in saved {
      guard let p = producer[g], case .gatherRows = graph.nodes[p].op else { continue }
      let u = graph.nodes[p].inputs[0], size = graph.type(of: u).elementCount
      // u itself rebuilt from what is saved (a norm's output) needs no keeping.
      guard let pu = producer[u], !saved.contains(u), !graph.isCheapToRecompute(graph.nodes[pu]) else { continue }
      // v = f(…(u)), through cheap ops each of one full-size operand (a gelu, then a view).
      func fromU(_ v: ValueID, _ depth: Int) -> Bool {
        if v == u { return true }
        guard depth < 4, let q = producer[v], graph.type(of: v).elementCount == size, graph.isCheapToRecompute(graph.nodes[q]) else { return false }
        let full = graph.nodes[q].inputs.filter { graph.type(of: $0).elementCount * 8 > size }
        return full.count == 1 && fromU(full[0], depth + 1)
      }
      let rebuilt = saved.contains { $0 != g && fromU($0, 0) }
      if rebuilt { saved.insert(u) }
    }
    var clones: [ValueID: ValueID] = [:]
    var failed = Set<ValueID>()
    // The saved full-size values each recomputed value is rebuilt from.
    var sources: [ValueID: Set<ValueID>] = [:]
    // Gathers the forward already makes, by (value, indices, axis): the kept rows of a value.
    var gathered: [String: ValueID] = [:]
    for n in graph.nodes[...loss] {
      if case .gatherRows(let a) = n.op { gathered["\(n.inputs[0].raw):\(n.inputs[1].raw):\(a)"] = n.outputs[0] }
    }
    let sinker = RowSinker(graph: graph)

    /// Rows `idx` (axis `t`) of forward value `x`, recomputed: a gather the forward keeps, or a
    /// cheap row-wise op applied to those rows of its operands (a gather commutes with it).
    func rows(of x: ValueID, _ idx: ValueID, _ t: Int, depth: Int, top: Bool = false) throws -> ValueID? {
      if !top, let k = gathered["\(x.raw):\(idx.raw):\(t)"], saved.contains(k) || clones[k] != nil { return clones[k] ?? k }
      // The backward keeps all of x anyway (a ReLU's output before a split 1×1 conv): its kept
      // rows are a gather of it, not a second saved copy.
      if saved.contains(x) || (producer[x].map { graph.nodes[$0].op.isDataMovement } ?? false && viewOfSaved(x)) {
        guard let whole = try recompute(x, depth: depth + 1, root: false) else { return nil }
        return try graph.append(.gatherRows(axis: t), [whole, idx], name: (producer[x].map { graph.nodes[$0].name } ?? "") + ".remat")[0]
      }
      // Kept rows of a merged view of f(a), f element-wise on one operand (a ReLU before an
      // NCHW 1×1 conv): f of the kept rows of the same view of a, when a is saved. Recomputing
      // f(a) whole first would hold a full-size result in the backward for half of it.
      if let q = producer[x], case .reshape(let shape) = graph.nodes[q].op, let r = producer[graph.nodes[q].inputs[0]],
        case .unary = graph.nodes[r].op, graph.nodes[r].inputs.count == 1, saved.contains(graph.nodes[r].inputs[0])
      {
        let a = graph.nodes[r].inputs[0]
        let view = try graph.append(.reshape(shape), [a], name: graph.nodes[q].name + ".remat", attrs: graph.nodes[q].attrs)[0]
        let g = try graph.append(.gatherRows(axis: t), [view, idx], name: graph.nodes[q].name + ".remat")[0]
        return try graph.append(graph.nodes[r].op, [g], name: graph.nodes[r].name + ".remat", attrs: graph.nodes[r].attrs)[0]
      }
      guard depth <= 6, let q = producer[x], graph.isCheapToRecompute(graph.nodes[q]), graph.nodes[q].outputs.count == 1,
        let m = sinker.operandAxes(graph.nodes[q], t: t)
      else {
        // Not row by row (GRN's output, merged from H and W before fc2): the kept rows of x
        // rebuilt whole, for a moment in the backward, rather than kept through it.
        guard top, let whole = try recompute(x, depth: depth + 1, root: false), whole != x else { return nil }
        return try graph.append(.gatherRows(axis: t), [whole, idx], name: (producer[x].map { graph.nodes[$0].name } ?? "") + ".remat")[0]
      }
      let f = graph.nodes[q]
      var ins: [ValueID] = []
      for (y, a) in zip(f.inputs, m.axes) {
        if let a {
          guard let c = try rows(of: y, idx, a, depth: depth + 1) else { return nil }
          ins.append(c)
        } else {
          ins.append(y)
        }
      }
      var op = m.op
      if case .reshape(var shape) = op {
        shape[t] = graph.type(of: idx).shape[0]
        op = .reshape(shape)
      }
      return try graph.append(op, ins, name: f.name + ".remat", attrs: f.attrs)[0]
    }

    /// Whether `v` is data movement (a reshape that merges the token axes, say) of a value
    /// the backward saves: recomputing it costs no arithmetic.
    func viewOfSaved(_ v: ValueID) -> Bool {
      var v = v
      while !saved.contains(v) {
        guard let p = producer[v], graph.nodes[p].op.isDataMovement, graph.nodes[p].inputs.count == 1 else { return false }
        v = graph.nodes[p].inputs[0]
      }
      return true
    }

    /// The backward's version of forward value `v`: a saved original, or a recomputation
    /// from saved values; nil when that would need a value that is neither.
    func recompute(_ v: ValueID, depth: Int, root: Bool) throws -> ValueID? {
      if let c = clones[v] { return c }
      guard let p = producer[v] else { return v }  // inputs, parameters
      if saved.contains(v) && !root { return v }
      if failed.contains(v) || depth > 8 { return nil }
      let n = graph.nodes[p]
      // Kept rows of a row-wise result: recomputed from the kept rows of its operands.
      if case .gatherRows(let t) = n.op, let c = try rows(of: n.inputs[0], n.inputs[1], t, depth: depth, top: true) {
        clones[v] = c
        return c
      }
      guard graph.isCheapToRecompute(n), n.outputs.count == 1 else {
        failed.insert(v)
        return nil
      }
      var ins: [ValueID] = []
      for x in n.inputs {
        guard let c = try recompute(x, depth: depth + 1, root: false) else {
          failed.insert(v)
          return nil
        }
        ins.append(c)
      }
      // A rebuild reads one saved activation, as an activation function does: a sum of two
      // (a residual x + γ·y from saved x and y) would keep both alive for it, where saving it
      // kept one. PoolFormer's pool(n) − n reads n's one saved x − mean, twice.
      let size = graph.type(of: v).elementCount
      let full = n.inputs.filter { graph.type(of: $0).elementCount == size }
      let from = full.reduce(into: Set<ValueID>()) { $0.formUnion(producer[$1] == nil ? [] : sources[$1] ?? [$1]) }
      guard full.count < 2 || from.count < 2 else {
        failed.insert(v)
        return nil
      }
      sources[v] = from
      let c = try graph.append(n.op, ins, name: n.name + ".remat", attrs: n.attrs)[0]
      clones[v] = c
      return c
    }

    // In forward order, so a recomputed value's operands are decided before it.
    for v in saved.filter({ readers[$0] != nil }).sorted(by: { (producer[$0]!, $0.raw) < (producer[$1]!, $1.raw) }) {
      guard let c = try recompute(v, depth: 0, root: true), c != v else { continue }
      for u in readers[v]! {
        graph.replaceUses(of: v, with: c, inNode: u)
      }
    }
    try graph.sortTopologically()
    graph.eliminateDeadCode()
    graph.moveUpdatesLast()
  }
}
