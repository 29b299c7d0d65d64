// Schedule.swift: fixes the op order of a training step: forward, a memory-aware backward, and optimizer updates fused in.
import SBPIR

/// The schedule pass. The forward keeps its order. The backward is list-scheduled: among the
/// ops whose operands are ready it runs first the one that frees the most bytes (net of what
/// it allocates), so a weight gradient runs as soon as it can and the activation it reads
/// dies. With `fuseOptimizer` each update runs as soon as its gradient is complete and every
/// other reader of its parameter has run (updates overwrite parameters in place), so the
/// gradient dies there; without it, updates run after the whole backward. A recomputation
/// runs when its reader is about to, and a recomputed gelu next to its gelu_grad, which the
/// runtime then runs as one kernel.
public struct Schedule: Pass {
  public var fuseOptimizer: Bool
  public init(fuseOptimizer: Bool = true) { self.fuseOptimizer = fuseOptimizer }
  public let name = "schedule"
  public let summary = "order the step: forward, a backward that frees memory early, optimizer updates as soon as their gradient is done"

  public func run(_ graph: inout Graph) throws {
    guard let loss = graph.lossIndex else { return }
    let nodes = graph.nodes
    let persistent = Set(graph.inputs.map(\.value)).union(graph.params.map(\.value))
    let producer = graph.producerIndex()
    var remaining: [ValueID: Int] = [:]  // readers not yet scheduled
    // By `ValueID.raw`: each value's readers (once per operand slot) and its producer (−1 for
    // inputs and parameters).
    var readersOf = [[Int]](repeating: [], count: graph.types.count)
    var producerOf = [Int](repeating: -1, count: graph.types.count)
    for (i, n) in nodes.enumerated() {
      for v in n.inputs {
        remaining[v, default: 0] += 1
        readersOf[v.raw].append(i)
      }
      for o in n.outputs { producerOf[o.raw] = i }
    }
    let outputs = Set(graph.outputs.map(\.value))
    var done = [Bool](repeating: false, count: nodes.count)
    var order: [Int] = Array(0...loss)
    for i in 0...loss {
      done[i] = true
      for v in nodes[i].inputs { remaining[v, default: 0] -= 1 }
    }
    var pending = Set((loss + 1)..<nodes.count)
    var isPending = [Bool](repeating: false, count: nodes.count)
    for i in pending { isPending[i] = true }
    // Operand slots whose producer has not run, kept up to date as nodes run, so finding the
    // ready nodes costs what they are, not a sweep of the whole backward per step (an
    // unrolled LSTM's backward has tens of thousands of nodes).
    var unmet = [Int](repeating: 0, count: nodes.count)
    for i in pending { unmet[i] = nodes[i].inputs.filter { v in producer[v].map { !done[$0] } ?? false }.count }
    func ready(_ i: Int) -> Bool { unmet[i] == 0 }
    var readyNodes = Set(pending.filter { !nodes[$0].op.isUpdate && unmet[$0] == 0 })
    var pendingUpdates = pending.filter { nodes[$0].op.isUpdate }.sorted()
    // Views of a parameter (a reshaped weight) share its memory: their readers read it too.
    var views: [ValueID: [ValueID]] = [:]
    let transposed = MemoryPlan.transposedViews(nodes, outputs: outputs)
    func isView(_ n: Node) -> Bool { n.op.isView || transposed.contains(n.outputs[0]) }
    for n in nodes where isView(n) {
      var r = n.inputs[0]
      while let p = producer[r], isView(nodes[p]) { r = nodes[p].inputs[0] }
      views[r, default: []].append(n.outputs[0])
    }
    /// An update may run once its operands are ready and nothing else still reads its
    /// parameter, directly or through a view.
    func updateReady(_ i: Int) -> Bool {
      let p = nodes[i].inputs[0]
      return ready(i) && remaining[p, default: 0] <= 1 && (views[p] ?? []).allSatisfy { remaining[$0, default: 0] == 0 }
    }
    // Nodes run since `wanted` answers were last brought up to date.
    var ran: [Int] = []
    func run(_ i: Int) {
      ran.append(i)
      done[i] = true
      pending.remove(i)
      readyNodes.remove(i)
      isPending[i] = false
      order.append(i)
      for v in nodes[i].inputs { remaining[v, default: 0] -= 1 }
      for o in nodes[i].outputs {
        for r in readersOf[o.raw] where isPending[r] {
          unmet[r] -= 1
          if unmet[r] == 0 && !nodes[r].op.isUpdate { readyNodes.insert(r) }
        }
      }
    }
    func score(_ i: Int) -> Int {
      var freed = 0
      for v in Set(nodes[i].inputs) where !persistent.contains(v) && !outputs.contains(v) {
        if remaining[v, default: 0] == nodes[i].inputs.filter({ $0 == v }).count { freed += graph.type(of: v).byteCount }
      }
      return freed - nodes[i].outputs.reduce(0) { $0 + graph.type(of: $1).byteCount }
    }
    // A recomputed gelu(x) runs right beside gelu_grad(x, dy), so that the runtime computes
    // both in one pass over x (Executor.pairGelus) instead of reading x twice and writing the
    // activation early. Until the gradient is ready the gelu waits, unless nothing else can run.
    var partner: [Int: Int] = [:]
    var gelus: [ValueID: [Int]] = [:]
    for i in pending.sorted() { if case .unary(.gelu) = nodes[i].op { gelus[nodes[i].inputs[0], default: []].append(i) } }
    for g in pending.sorted() {
      guard case .unaryGrad(.gelu(let a)) = nodes[g].op else { continue }
      let match = (gelus[nodes[g].inputs[0]] ?? []).first { r in
        if case .unary(.gelu(let b)) = nodes[r].op, b == a, partner[r] == nil { return true }
        return false
      }
      if let r = match { (partner[g], partner[r]) = (r, g) }
    }
    func waiting(_ i: Int) -> Bool {
      guard case .unary(.gelu) = nodes[i].op, let g = partner[i], pending.contains(g) else { return false }
      return !ready(g)
    }
    // Backward nodes that read only forward values. With no reader close, a recomputation
    // still waits: it frees nothing, so a small one would otherwise win on score and hold its
    // result across the backward's peak (ConvNeXt-Tiny b8's downsampler norms and weights,
    // read through a reshape: 8 MiB of its arena).
    let recomputations = Set(pending.filter { i in nodes[i].inputs.allSatisfy { v in producer[v].map { $0 <= loss } ?? true } })
    // Per node, once: `wanted` asks these of every ready node at every step.
    let cheap = nodes.map { graph.isCheapToRecompute($0) }
    let widens = nodes.map { n -> Bool in
      if case .cast(.f32) = n.op { return graph.type(of: n.inputs[0]).dtype == .bf16 } else { return false }
    }
    // `wanted` per node, kept until a run could change it: it reads whether the readers of a
    // node's results (through views and rebuilds) have their other operands done, so only the
    // producers upstream of a reader of what just ran need asking again. Without this, every
    // step asked every ready node, and an unrolled LSTM's backward keeps thousands ready.
    var wantedCache = [Int8](repeating: -1, count: nodes.count)
    var visited = [Int](repeating: -1, count: nodes.count)
    var round = 0
    // The links of the chains `wanted` follows: views, and backward nodes computed from
    // forward values alone (a recomputation, a bf16 value widened, what they feed).
    var rebuildable = [Bool](repeating: false, count: nodes.count)
    for i in (loss + 1)..<nodes.count {
      rebuildable[i] = nodes[i].inputs.allSatisfy { v in producerOf[v.raw] <= loss || rebuildable[producerOf[v.raw]] }
    }
    // A producer is asked again, and so are its own producers through such links.
    func invalidateUp(_ x: Int) {
      for v in nodes[x].inputs {
        let p = producerOf[v.raw]
        guard p >= 0, isPending[p], visited[p] != round else { continue }
        visited[p] = round
        wantedCache[p] = -1
        if nodes[p].op.isView || rebuildable[p] { invalidateUp(p) }
      }
    }
    while !pending.isEmpty {
      if fuseOptimizer {
        var fused = true
        while fused {
          fused = false
          pendingUpdates.removeAll { done[$0] }
          for i in pendingUpdates where !done[i] && updateReady(i) {
            run(i)
            fused = true
          }
        }
        if pending.isEmpty { break }
      }
      round += 1
      for j in ran {
        if let p = partner[j] { invalidateUp(p) }
        for o in nodes[j].outputs {
          for r in readersOf[o.raw] where isPending[r] {
            invalidateUp(r)
            if let p = partner[r] { invalidateUp(p) }
          }
        }
      }
      ran.removeAll()
      let all = readyNodes
      let unpaired = all.filter { !waiting($0) }
      let candidates = unpaired.isEmpty ? all : unpaired
      // A node is wanted now when some reader of its results would become ready with it; a
      // recomputation that only reads forward values waits until its reader is close, so it
      // does not hold its result across the backward.
      // A view reader (a reshape) counts through its own readers: it computes nothing. A gelu
      // waiting for its gelu_grad is not close (a bf16 step's cast back to fp32 would otherwise
      // run early and hold its copy).
      // A bf16 step's cast of a kept value back to fp32 counts through a recomputation that
      // reads it (a norm rebuilt from its input), which waits for its own reader; so does a
      // recomputation itself (a norm rebuilt from its saved x̂, and the transpose after it).
      func wanted(_ i: Int) -> Bool {
        var made = nodes[i].outputs
        let widening = widens[i]
        let rebuilding = recomputations.contains(i) && cheap[i]
        func close(_ o: ValueID) -> Bool {
          readersOf[o.raw].contains { r in
            guard isPending[r], !waiting(r), nodes[r].inputs.allSatisfy({ v in made.contains(v) || producerOf[v.raw] < 0 || done[producerOf[v.raw]] })
            else { return false }
            let recomputes =
              (widening || rebuilding && cheap[r])
              && nodes[r].inputs.allSatisfy { v in made.contains(v) || producerOf[v.raw] <= loss }
            guard nodes[r].op.isView || recomputes else { return true }
            made += nodes[r].outputs
            return nodes[r].outputs.contains(where: close)
          }
        }
        return nodes[i].outputs.contains(where: close)
      }
      let pool = candidates.filter { c in
        if wantedCache[c] < 0 { wantedCache[c] = wanted(c) ? 1 : 0 }
        return wantedCache[c] == 1
      }
      let rest = candidates.filter { !recomputations.contains($0) }
      guard let best = (!pool.isEmpty ? pool : !rest.isEmpty ? rest : candidates).max(by: { (score($0), -$0) < (score($1), -$1) }) else {
        // Only updates are left (unfused, or waiting on nothing but each other).
        for i in pending.sorted() where ready(i) { run(i) }
        continue
      }
      run(best)
      if let p = partner[best], pending.contains(p), ready(p) { run(p) }
    }
    graph.nodes = sinkRecomputedRows(order.map { nodes[$0] }, loss: loss, persistent: persistent)
  }

  /// Moves each backward chain that rebuilds kept rows from saved forward values (a view, a
  /// gather of kept rows, an element-wise op on them: ResNet's ReLU before a split 1×1 conv)
  /// to just before its first reader. The list schedule may run such a chain as soon as its
  /// operands are ready, early in the backward, and hold its rows across the peak. A node
  /// moves only when no operand's last reading moves later with it.
  func sinkRecomputedRows(_ nodes: [Node], loss: Int, persistent: Set<ValueID>) -> [Node] {
    var nodes = nodes
    var producer = [ValueID: Int]()
    for (i, n) in nodes.enumerated() { for o in n.outputs { producer[o] = i } }
    var chain = Set<Int>()
    for i in (loss + 1)..<nodes.count {
      let op = nodes[i].op
      let rowOp: Bool
      switch op {
      case .gatherRows, .reshape, .unary: rowOp = true
      default: rowOp = false
      }
      guard rowOp, nodes[i].outputs.count == 1,
        nodes[i].inputs.allSatisfy({ v in producer[v].map { $0 <= loss || chain.contains($0) } ?? true })
      else { continue }
      chain.insert(i)
    }
    guard !chain.isEmpty else { return nodes }
    let moving = chain.sorted(by: >).map { nodes[$0].outputs[0] }
    let chainValues = Set(moving)
    for out in moving {
      guard let i = nodes.firstIndex(where: { $0.outputs.first == out }) else { continue }
      let readers = nodes.indices.filter { nodes[$0].inputs.contains(out) }
      guard let first = readers.min(), first > i + 1 else { continue }
      // Each operand must still be read at or after the new position, be persistent, or come
      // from the chain, which follows (it is moved in reverse order).
      let ok = nodes[i].inputs.allSatisfy { v in
        persistent.contains(v) || chainValues.contains(v) || nodes.indices.contains { j in j >= first && nodes[j].inputs.contains(v) }
      }
      guard ok else { continue }
      let n = nodes.remove(at: i)
      nodes.insert(n, at: first - 1)
    }
    return nodes
  }
}
