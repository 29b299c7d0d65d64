// SliceRuns.swift: the runs of per-slice nodes (attention's chain) that the runtime executes slice by slice, and that the memory plan keeps apart.
import SBPIR

extension SliceRun {
  /// Slices of a node that can be a member, or nil.
  static func slices(_ n: Node, _ g: Graph, transposed: Set<ValueID>, paired: Set<Int>, at i: Int) -> Int? {
    guard !paired.contains(i), n.outputs.count == 1, !transposed.contains(n.outputs[0]) else { return nil }
    let types = n.inputs.map { g.type(of: $0) }, out = g.type(of: n.outputs[0])
    // A bf16 product (`mixed-precision`) runs its own kernel, not the groups' sgemm.
    guard out.dtype == .f32, types.allSatisfy({ $0.dtype == .f32 }), n.attrs[Annotation.precision] == nil else { return nil }
    let s = out.shape, r = s.count
    guard r >= 3 else { return nil }
    let slices = s[..<(r - 2)].reduce(1, *)
    guard slices > 1, s[r - 2] * s[r - 1] > 0 else { return nil }
    switch n.op {
    case .matMul:
      let a = types[0].shape, b = types[1].shape
      guard a.count >= 2, b.count >= 2, 2 * a[a.count - 2] * a[a.count - 1] * b[b.count - 1] <= productLimit else { return nil }
      // Each operand has every slice of its own, or one matrix for all.
      let batch = Array(s.dropLast(2))
      for t in [a, b] {
        let own = Array(t.dropLast(2))
        guard own == batch || own.allSatisfy({ $0 == 1 }) else { return nil }
      }
      return slices
    case .softmax(let axis), .softmaxGrad(let axis): return axis == r - 1 ? slices : nil
    case .transpose(let perm): return perm == Array(0..<(r - 2)) + [r - 1, r - 2] ? slices : nil
    case .add, .sub, .mul, .div:
      guard types.allSatisfy({ $0.shape == s || $0.elementCount == 1 }), types.contains(where: { $0.shape == s }) else { return nil }
      return slices
    case .constant, .pow, .equal, .select, .unary, .cast, .linear, .gemm, .conv, .layerNorm, .reshape, .slice, .gather,
      .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum, .globalAveragePool,
      .pad, .padGrad,
      .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
      .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
      .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput,
      .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw: return nil
    }
  }

  /// The runs of a scheduled graph: maximal runs of at least two members over the same
  /// number of slices.
  /// - Parameter outputs: values read after the step (graph outputs, retained values).
  public static func find(_ g: Graph, outputs: Set<ValueID>) -> [SliceRun] {
    let nodes = g.nodes
    let transposed = MemoryPlan.transposedViews(nodes, outputs: outputs)
    var paired: Set<Int> = []
    for (a, b) in MemoryPlan.movementPairs(nodes, outputs: outputs) { paired.formUnion([a, b]) }
    func passive(_ i: Int) -> Bool {
      nodes[i].op.isView || nodes[i].outputs.count == 1 && transposed.contains(nodes[i].outputs[0])
    }
    func hoistable(_ i: Int) -> Bool {
      if case .constant = nodes[i].op { return true }
      return false
    }
    var readers: [ValueID: [Int]] = [:]
    for (i, n) in nodes.enumerated() { for v in n.inputs { readers[v, default: []].append(i) } }
    var runs: [SliceRun] = []
    var i = 0
    while i < nodes.count {
      guard let count = slices(nodes[i], g, transposed: transposed, paired: paired, at: i) else {
        i += 1
        continue
      }
      var run = [i], members = [i], j = i + 1
      while j < nodes.count {
        if passive(j) || hoistable(j) {
          run.append(j)
        } else if slices(nodes[j], g, transposed: transposed, paired: paired, at: j) == count {
          run.append(j)
          members.append(j)
        } else {
          break
        }
        j += 1
      }
      while let last = run.last, last != members.last! { run.removeLast() }
      i = j
      guard members.count >= 2 else { continue }
      let inRun = Set(run)
      // Readers through the run's views; nil if anything outside the run reads.
      func insideReaders(_ v: ValueID) -> [Int]? {
        if outputs.contains(v) { return nil }
        var found: [Int] = []
        for r in readers[v] ?? [] {
          guard inRun.contains(r) else { return nil }
          if passive(r) {
            guard let more = insideReaders(nodes[r].outputs[0]) else { return nil }
            found += more
          } else {
            found.append(r)
          }
        }
        return found
      }
      var scratch: Set<ValueID> = []
      for m in members {
        let v = nodes[m].outputs[0], s = g.type(of: v).shape
        if s[s.count - 2] * s[s.count - 1] <= scratchLimit, let rs = insideReaders(v), !rs.isEmpty { scratch.insert(v) }
      }
      runs.append(SliceRun(nodes: run, members: members, hoisted: run.filter(hoistable), scratch: scratch, slices: count))
    }
    return runs
  }
}
