// DeadRows.swift: row liveness on the forward graph: token rows that cannot reach the loss are never computed.
import SBPIR

/// Generalises dead-code elimination to token rows (DESIGN.md, "Dead rows"). A `gather_rows`
/// says that only those rows of its operand are read. When every reader of a value gathers
/// the same rows, the value's producer can compute just those rows: the gather sinks through
/// it to the producer's own operands, as long as the producer treats rows independently
/// (elementwise ops, `linear`, `layer_norm` and `softmax` over other axes, data movement that
/// keeps the token axis, the row operand of a `matmul`). A gather of SBP's own reassembly
/// takes the half it names, so the other half dies. The class-token head seeds the analysis:
/// it reads only prefix rows, which every kept-index vector lists first.
///
/// With a class-token head and `--attention qkv`, every dropped row of the SBP blocks dies,
/// and so do the dropped rows of the queries and MLP of the block before them. With an
/// average-pool head or `--attention query` the rows stay live and nothing changes. Runs on
/// the forward graph, after insert-sbp and before autodiff, so the dead rows' backward is never built.
public struct DeadRows: Pass {
  public init() {}
  public let name = "dead-rows"
  public let summary = "row liveness: compute only the token rows that can reach the loss (after insert-sbp, before autodiff)"

  public func run(_ graph: inout Graph) throws {
    let stages = graph.inputs.compactMap { i -> (kept: ValueID, rows: Int)? in
      i.name.hasPrefix("sbp.kept.") ? (i.value, graph.type(of: i.value).shape[0]) : nil
    }
    guard !stages.isEmpty else { return }
    var r = RowSinker(graph: graph)
    try r.seedHead(stages: stages)
    while try r.sweep() {}
    graph = r.graph
  }
}

struct RowSinker {
  var graph: Graph

  /// Prefix tokens per kept-index input: how many leading entries are fixed (0, 1, …).
  func prefix(of kept: ValueID) -> Int {
    guard let name = graph.inputs.first(where: { $0.value == kept })?.name,
      let stage = Int(name.dropFirst("sbp.kept.".count))
    else { return 0 }
    for n in graph.nodes where n.attrs[Annotation.kind] != nil && n.attrs[Annotation.stage] == .int(stage) {
      if case .int(let p)? = n.attrs[Annotation.prefix] { return p }
    }
    return 0
  }

  /// A slice (or constant gather) of prefix rows on the token axis of a [B, N, C] value reads
  /// the same rows from the kept rows, so it reads a gather of them instead.
  mutating func seedHead(stages: [(kept: ValueID, rows: Int)]) throws {
    let ud = graph.index()
    let producer = graph.producerIndex()
    for i in graph.nodes.indices {
      let n = graph.nodes[i]
      let v = n.inputs.first
      guard let v, graph.type(of: v).rank == 3 else { continue }
      let tokens = graph.type(of: v).shape[1]
      var end: Int?
      switch n.op {
      case .slice(let s) where s.axes == [1] && s.steps == [1]: end = s.ends[0]
      case .gather(1):
        if let lit = ud.literal(n.inputs[1]), case .ints(let idx) = lit.elements, idx.allSatisfy({ $0 >= 0 }) {
          end = Int(idx.max() ?? 0) + 1
        }
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
        .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
        .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
        .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
        .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
        .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad,
        .sgd, .adamw: break
      }
      guard let end else { continue }
      if let p = producer[v], case .gatherRows = graph.nodes[p].op { continue }
      // The stage whose token count this is, with enough prefix tokens to cover the rows read.
      for st in stages {
        let pre = prefix(of: st.kept)
        guard end <= pre, stageTokens(st.kept) == tokens else { continue }
        let g = try graph.append(.gatherRows(axis: 1), [v, st.kept], name: n.name + ".sbp.live")[0]
        graph.nodes[i].inputs[0] = g
        break
      }
    }
    try graph.sortTopologically()
  }

  /// Tokens (prefix + patches) of the stage whose kept indices `kept` holds.
  func stageTokens(_ kept: ValueID) -> Int? {
    for n in graph.nodes {
      if case .scatterRows(_, let size) = n.op, n.inputs.count > 1, n.inputs[1] == kept { return size }
    }
    return nil
  }

  /// For `n`, producing token axis `t` on output, the axis to gather on each operand (nil:
  /// the operand is read whole); nil when the op does not treat rows independently
  /// (`Op.rowAxes`, the row-wise trait).
  func operandAxes(_ n: Node, t: Int) -> (axes: [Int?], op: Op)? {
    n.op.rowAxes(along: t, inputs: n.inputs.map { graph.type(of: $0) }, output: graph.type(of: n.outputs[0])).map { ($0, n.op) }
  }

  /// One pass over the gathers: merges duplicates and takes halves of reassemblies (local
  /// patterns), then sinks gathers through producers whose every reader gathers the same rows
  /// (which looks at all of a producer's readers at once). Returns whether anything changed.
  mutating func sweep() throws -> Bool {
    // The local rewrites go through the rewrite API: matched on a read-only view, then applied.
    var changed = try graph.applyPatterns([MergeDuplicateGathers(), GatherOfReassemblyHalf()]) > 0
    let ud = graph.index()
    let producer = graph.producerIndex()
    var done = Set<Int>()
    var touched = Set<ValueID>()
    let snapshot = graph.nodes
    for n in snapshot {
      guard case .gatherRows(let t) = n.op, let p = producer[n.inputs[0]], !done.contains(p), !touched.contains(n.inputs[0]) else {
        continue
      }
      let idx = n.inputs[1]
      let src = snapshot[p]
      // Every reader of every result must gather these rows on this axis.
      let readers = src.outputs.map { ud.users($0) }
      let allGather = readers.allSatisfy { us in
        us.allSatisfy { u in snapshot[u].op == .gatherRows(axis: t) && snapshot[u].inputs[1] == idx }
      }
      guard allGather, !graph.outputs.contains(where: { src.outputs.contains($0.value) }), let (axes, op) = operandAxes(src, t: t) else {
        continue
      }
      var ins: [ValueID] = []
      for (v, a) in zip(src.inputs, axes) {
        if let a {
          ins.append(try graph.append(.gatherRows(axis: a), [v, idx], name: src.name + ".sbp.live", attrs: src.attrs)[0])
          touched.insert(v)
        } else {
          ins.append(v)
        }
      }
      var newOp = op
      if case .reshape(var shape) = op {
        shape[t] = graph.type(of: idx).shape[0]
        newOp = .reshape(shape)
      }
      let outs = try graph.append(newOp, ins, name: src.name, attrs: src.attrs)
      for (o, readersOf) in zip(outs.indices, readers) {
        for u in readersOf { graph.replaceUses(of: snapshot[u].outputs[0], with: outs[o]) }
      }
      done.insert(p)
      changed = true
    }
    try graph.sortTopologically()
    graph.eliminateDeadCode()
    return changed
  }
}

extension Graph {
  /// Nodes on a path from any of `sources` to `sink`, in graph order (`producer` maps each
  /// value to the index of the node that makes it): the region a rewrite clones or replaces.
  func nodesBetween(sources: Set<ValueID>, sink: ValueID, producer: [ValueID: Int]) -> [Int] {
    guard let end = producer[sink] else { return [] }
    var ancestors = Set<Int>()
    var stack = [end]
    while let i = stack.popLast() {
      guard ancestors.insert(i).inserted else { continue }
      for v in nodes[i].inputs where !sources.contains(v) { if let p = producer[v] { stack.append(p) } }
    }
    var reached = sources
    var out: [Int] = []
    for i in ancestors.sorted() where nodes[i].inputs.contains(where: reached.contains) {
      out.append(i)
      reached.formUnion(nodes[i].outputs)
    }
    return out
  }
}

/// Two gathers of the same rows of one value on one axis: the later one reads the first.
struct MergeDuplicateGathers: RewritePattern {
  let name = "merge-duplicate-gathers"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .gatherRows(let a) = root.op else { return nil }
    // Users come in graph order: the first identical gather is the one the others read.
    for u in ud.users(root.inputs[0]) {
      let other = ud.graph.nodes[u]
      if other.outputs == root.outputs { return nil }
      if other.op == .gatherRows(axis: a) && other.inputs == root.inputs { return .forward(other.outputs[0]) }
    }
    return nil
  }
}

/// A gather of SBP's reassembly (`scatter_rows`) at the rows one half filled is that half.
struct GatherOfReassemblyHalf: RewritePattern {
  let name = "gather-of-reassembly-half"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard case .gatherRows(let t) = root.op, let src = ud.definingNode(root.inputs[0]), case .scatterRows(let a, _) = src.op, a == t,
      let k = stride(from: 1, to: src.inputs.count, by: 2).first(where: { src.inputs[$0] == root.inputs[1] })
    else { return nil }
    return .forward(src.inputs[k - 1])
  }
}
