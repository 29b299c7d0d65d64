// PlanMemory.swift: live intervals, in-place reuse and arena offsets for every transient buffer of a scheduled graph.
import SBPIR

/// Where every value of a scheduled graph lives. Parameters, optimizer state and graph inputs
/// are persistent; views (reshape, squeeze, unsqueeze, stop_gradient) and optimizer results
/// share the memory they come from; an elementwise op whose operand dies there writes over
/// it. Everything else gets an interval [made, last read] and an offset in one arena,
/// assigned greedily by size with best fit.
public struct MemoryPlan: Sendable, Equatable {
  /// One arena buffer: a value (and the views and in-place results that share it).
  public struct Slot: Sendable, Equatable {
    public var value: ValueID
    public var offset: Int
    public var bytes: Int
    /// Schedule positions of its first write and its last read.
    public var start: Int
    public var end: Int
  }

  public static let alignment = BufferLayout.alignment

  public var slots: [Slot]
  /// Each value that shares another's memory, mapped to the value that owns it.
  public var owner: [ValueID: ValueID]
  public var arenaBytes: Int
  /// The largest sum of bytes live at any one step: no arena can be smaller.
  public var lowerBound: Int
  public var parameterBytes: Int
  public var optimizerStateBytes: Int
  /// Gradients held from the backward to updates that all run at the end (an unfused
  /// optimizer); 0 when each update runs as soon as its gradient is done (they are arena values).
  public var gradientBytes: Int
  public var inputBytes: Int
  /// The im2col workspace of the largest convolution, allocated once beside the arena.
  public var workspaceBytes: Int
  /// The movement pairs (`movementPairs`) and slice runs (`SliceRun`) this layout made room
  /// for: the executor fuses exactly these.
  public var movementPairs: [Int: Int]
  public var sliceRuns: [SliceRun]

  public var totalBytes: Int { arenaBytes + parameterBytes + optimizerStateBytes + gradientBytes + inputBytes + workspaceBytes }

  static func aligned(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

  /// Results of transposes that swap the last two axes and are read only by matmuls. They are
  /// views: each matmul reads the transpose's operand with the BLAS transpose flag, so no
  /// data moves (attention's Kᵀ and the backward's transposed operands).
  public static func transposedViews(_ nodes: [Node], outputs: Set<ValueID>) -> Set<ValueID> {
    var readers: [ValueID: [Op]] = [:]
    for n in nodes { for v in n.inputs { readers[v, default: []].append(n.op) } }
    var views: Set<ValueID> = []
    for n in nodes {
      guard case .transpose(let perm) = n.op, perm.count >= 2, !outputs.contains(n.outputs[0]) else { continue }
      let r = perm.count
      guard perm == Array(0..<(r - 2)) + [r - 1, r - 2], let rs = readers[n.outputs[0]], !rs.isEmpty,
        rs.allSatisfy({ if case .matMul = $0 { return true } else { return false } })
      else { continue }
      views.insert(n.outputs[0])
    }
    return views
  }

  /// Data movement the executor runs as one kernel at the second node: a transpose whose
  /// result only the next node, a split, reads (attention's q, k and v), and a concat whose
  /// result only the next node, a copying transpose, reads (their gradients). The value
  /// between them is never written: the second node's results are copied straight from the
  /// first node's operands, which therefore live until the second node. Keys are the first
  /// nodes' positions, values the second's.
  public static func movementPairs(_ nodes: [Node], outputs: Set<ValueID>) -> [Int: Int] {
    var readers: [ValueID: Int] = [:]
    for n in nodes { for v in n.inputs { readers[v, default: 0] += 1 } }
    let transposed = transposedViews(nodes, outputs: outputs)
    var pairs: [Int: Int] = [:]
    for i in nodes.indices.dropLast() {
      let (a, b) = (nodes[i], nodes[i + 1])
      guard a.outputs.count == 1, b.inputs == [a.outputs[0]], readers[a.outputs[0]] == 1, !outputs.contains(a.outputs[0]) else { continue }
      switch (a.op, b.op) {
      case (.transpose, .split): pairs[i] = i + 1
      case (.concat, .transpose) where !transposed.contains(b.outputs[0]): pairs[i] = i + 1
      default: break
      }
    }
    return pairs
  }

  /// - Parameter retaining: values kept readable after the step (as graph outputs are), for
  ///   tools that dump them; a plan file's offsets are made without any.
  /// - Parameter activationBytes: bytes per element of f32 activations (2 for a bf16/fp16
  ///   estimate); parameters and optimizer state stay f32, as under mixed precision.
  public init(_ g: Graph, retaining: Set<ValueID> = [], activationBytes: Int? = nil) {
    func bytes(_ t: TensorType) -> Int { t.dtype == .f32 ? t.elementCount * (activationBytes ?? 4) : t.byteCount }
    let n = g.nodes.count
    var persistent = Set(g.inputs.map(\.value)).union(g.params.map(\.value))
    // Updates all at the end: the gradients form their own persistent region.
    let isUpdate: (Node) -> Bool = { $0.op.isUpdate }
    let firstUpdate = g.nodes.firstIndex(where: isUpdate) ?? n
    let unfused = firstUpdate < n && g.nodes[firstUpdate...].allSatisfy(isUpdate) && g.nodes.filter(isUpdate).count > 1
    let gradients = unfused ? Set(g.nodes.filter(isUpdate).map { $0.inputs[1] }) : []
    persistent.formUnion(gradients)
    var owner: [ValueID: ValueID] = [:]
    func root(_ v: ValueID) -> ValueID {
      var v = v
      while let o = owner[v] { v = o }
      return v
    }
    var lastUse: [ValueID: Int] = [:]
    for (i, node) in g.nodes.enumerated() { for v in node.inputs { lastUse[v] = i } }
    for o in g.outputs { lastUse[o.value] = n }
    for v in retaining { lastUse[v] = n }
    let kept = Set(g.outputs.map(\.value)).union(retaining)
    let pairs = MemoryPlan.movementPairs(g.nodes, outputs: kept), runs = SliceRun.find(g, outputs: kept)
    for (first, second) in pairs {
      for v in g.nodes[first].inputs { lastUse[v] = max(lastUse[v] ?? second, second) }
    }
    // Slice runs: what their members read or write in memory lives from the run's first node
    // to its last, so no member overwrites what another reads for a later slice.
    var startAt: [ValueID: Int] = [:]
    for run in runs {
      let end = run.nodes.last!
      for m in run.members {
        for v in g.nodes[m].inputs where !run.scratch.contains(run.root(v, g)) { lastUse[v] = max(lastUse[v] ?? end, end) }
        for o in g.nodes[m].outputs where !run.scratch.contains(o) { lastUse[o] = max(lastUse[o] ?? end, end) }
      }
      for h in run.hoisted { for o in g.nodes[h].outputs { startAt[o] = run.nodes[0] } }
    }
    var start: [ValueID: Int] = [:]
    var end: [ValueID: Int] = [:]  // per root, over everything sharing it
    var workspace = 0
    let transposed = MemoryPlan.transposedViews(g.nodes, outputs: Set(g.outputs.map(\.value)).union(retaining))
    for (i, node) in g.nodes.enumerated() {
      if let overwritten = node.op.overwrittenOperands {
        for (k, x) in overwritten.enumerated() { owner[node.outputs[k]] = node.inputs[x] }
        persistent.formUnion(node.outputs)
        continue
      }
      workspace = max(workspace, g.workspaceBytes(node))
      let y = node.outputs[0]
      if node.op.isView || transposed.contains(y) {
        owner[y] = node.inputs[0]
      } else if node.op.isInPlaceable, node.outputs.count == 1,
        let x = node.inputs.first(where: { x in
          let r = root(x)
          return !persistent.contains(r) && g.type(of: x) == g.type(of: y) && end[r] == i && lastUse[x] == i
            && !g.outputs.contains(where: { $0.value == x })
        })
      {
        owner[y] = x
      }
      for o in node.outputs {
        let r = root(o)
        if r == o { start[o] = startAt[o] ?? i }
        end[r] = max(end[r] ?? i, lastUse[o] ?? i)
      }
      // Views extend the life of what they show.
      for x in node.inputs where !persistent.contains(root(x)) {
        end[root(x)] = max(end[root(x)] ?? i, i)
      }
    }
    var slots: [Slot] = []
    for (v, s) in start where !persistent.contains(v) && owner[v] == nil {
      slots.append(Slot(value: v, offset: 0, bytes: MemoryPlan.aligned(max(bytes(g.type(of: v)), 1)), start: s, end: end[v] ?? s))
    }
    // Lower bound: the most bytes live at once.
    var delta = [Int](repeating: 0, count: n + 2)
    for s in slots {
      delta[s.start] += s.bytes
      delta[s.end + 1] -= s.bytes
    }
    var live = 0, bound = 0
    for d in delta {
      live += d
      bound = max(bound, live)
    }
    // Greedy by size, best fit among the gaps left by buffers that overlap in time.
    slots.sort { ($0.bytes, $1.start, $1.value.raw) > ($1.bytes, $0.start, $0.value.raw) }
    var placed: [Slot] = []
    var top = 0
    for var s in slots {
      let busy = placed.filter { $0.start <= s.end && s.start <= $0.end }.sorted { $0.offset < $1.offset }
      var best: (offset: Int, gap: Int)?
      var cursor = 0
      for b in busy {
        if b.offset - cursor >= s.bytes, best == nil || b.offset - cursor < best!.gap { best = (cursor, b.offset - cursor) }
        cursor = max(cursor, b.offset + b.bytes)
      }
      s.offset = best?.offset ?? cursor
      top = max(top, s.offset + s.bytes)
      placed.append(s)
    }
    self.slots = placed.sorted { ($0.start, $0.value.raw) < ($1.start, $1.value.raw) }
    self.owner = owner
    arenaBytes = top
    lowerBound = bound
    var params = 0, state = 0
    for p in g.params {
      if p.name.hasPrefix("opt.") { state += g.type(of: p.value).byteCount } else { params += g.type(of: p.value).byteCount }
    }
    parameterBytes = params
    optimizerStateBytes = state
    inputBytes = g.inputs.reduce(0) { $0 + g.type(of: $1.value).byteCount }
    gradientBytes = gradients.reduce(0) { $0 + g.type(of: $1).byteCount }
    workspaceBytes = workspace / 4 * (activationBytes ?? 4)
    movementPairs = pairs
    sliceRuns = runs
  }

  /// The arena offset of each value that lives in the arena (views and in-place results
  /// report their owner's offset).
  public func offset(of v: ValueID) -> Int? {
    var r = v
    while let o = owner[r] { r = o }
    return slots.first { $0.value == r }?.offset
  }
}

/// The plan-memory pass: computes the `MemoryPlan` and writes it onto the nodes, so the plan
/// file names every kernel's buffers: `mem.offsets` (arena offset per result, −1 when the
/// result lives elsewhere), `mem.shares` (the operand whose memory a result reuses, −1 if
/// none), `mem.pair` and `mem.run` / `mem.scratch` (the movement pairs and slice runs it made
/// room for). `Graph.bufferLayout()` reads them back; the runtime needs nothing else.
public struct PlanMemory: Pass {
  public init() {}
  public let name = "plan-memory"
  public let summary = "live intervals, in-place reuse and best-fit arena offsets for every buffer (after schedule)"

  public func run(_ graph: inout Graph) throws {
    let plan = MemoryPlan(graph)
    var offsetOf: [ValueID: Int] = [:]
    for s in plan.slots { offsetOf[s.value] = s.offset }
    for i in graph.nodes.indices {
      let node = graph.nodes[i]
      let offsets = node.outputs.map { offsetOf[$0] ?? -1 }
      let shares = node.outputs.map { o in plan.owner[o].flatMap { node.inputs.firstIndex(of: $0) } ?? -1 }
      graph.annotate(node: i, Annotation.memOffsets, .ints(offsets))
      graph.annotate(node: i, Annotation.memShares, .ints(shares))
    }
    // The kernels the runtime fuses, exactly those this layout made room for.
    for first in plan.movementPairs.keys { graph.annotate(node: first, Annotation.memPair, .int(1)) }
    for (k, run) in plan.sliceRuns.enumerated() {
      for i in run.nodes { graph.annotate(node: i, Annotation.memRun, .ints([k, run.slices])) }
      for i in run.members where run.scratch.contains(graph.nodes[i].outputs[0]) { graph.annotate(node: i, Annotation.memScratch, .int(1)) }
    }
  }
}
