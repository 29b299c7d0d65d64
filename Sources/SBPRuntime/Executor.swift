// Executor.swift: runs a graph on the CPU, one kernel per node, over buffers allocated once.
import COpenBLAS
import Dispatch
import Glibc
import SBPIR

/// Executes a scheduled graph whose memory `plan-memory` laid out (`Graph.bufferLayout()`):
/// parameters are copied in once (the optimizer updates them in place), every other value
/// lives where the layout says, and `run()` walks the nodes in order. Optimizer updates
/// write into the parameter and state buffers they read.
public final class Executor {
  public let graph: Graph
  private var buffers: [Buffer?]
  /// Per node, resolved once: its operand and result buffers and, for convolutions, the geometry.
  private(set) var steps: [Step] = []
  typealias Step = (node: Node, ins: [Buffer], outs: [Buffer], conv: Conv2D?, pre: Prepared)

  /// What a kernel needs beyond its buffers, computed once so a step allocates nothing:
  /// operand strides (broadcast, transposed, sliced, reduced) and a base offset.
  struct Prepared {
    var base = 0
    var strides: [[Int]] = []
    /// A matmul operand that is a transposed view (its memory holds the untransposed matrix).
    var transA = false, transB = false
    /// A transpose the memory plan made a view, or a node the step before ran with its own
    /// (`geluPair`): nothing to run.
    var skip = false
    /// A gelu_grad(x, dy) next to a gelu(x) on the same x: this node runs both, sharing
    /// the erf and the read of x; the partner's (ins, outs) are these buffers.
    var geluPair: (approximation: GeluApproximation, x: Buffer, dy: Buffer, y: Buffer, dx: Buffer)?
    /// The slice group the step belongs to: its first step runs the whole group and the
    /// others (`grouped`) then have nothing left to run. With numerics checks every step
    /// runs on its own.
    var group: SliceGroup?
    var grouped = false
    /// A movement pair (`MemoryPlan.movementPairs`) that this node, the second, runs whole;
    /// the first is skipped and its result is `unwritten`.
    var movement: MovementPair?
    var unwritten = false
    /// A product whose operands are rounded to bf16 (`mixed-precision`).
    var bf16 = false
  }

  enum MovementPair {
    /// The split's results read straight from the transpose's operand: its strides in the
    /// transposed order (wrapped, as `Movement.strided` takes them), and each result's start
    /// along the split axis.
    case transposeSplit(x: Buffer, strides: [[Int]], bases: [Int])
    /// The concat's operands written straight into the transpose's result, through the
    /// result's strides in the concatenated order, each from its start along the concat axis.
    case concatTranspose(xs: [Buffer], strides: [[Int]], bases: [Int])
  }

  /// Sets up the movement pairs the memory plan made room for, where the memory allows it:
  /// the second node's results are written while the first node's operands are still read,
  /// so the two must not overlap (the plan keeps those operands alive to the second node).
  static func pairMovement(_ steps: inout [Step], _ pairs: [Int: Int]) {
    for (first, second) in pairs.sorted(by: { $0.key < $1.key }) {
      let (a, b) = (steps[first], steps[second])
      switch (a.node.op, b.node.op) {
      case (.transpose(let perm), .split(let axis, let sizes)):
        let x = a.ins[0]
        guard b.outs.allSatisfy({ !$0.byteRange.overlaps(x.byteRange) }) else { continue }
        let st = Movement.transposeStrides(perm, x.type.shape)
        var start = 0, bases: [Int] = []
        for n in sizes {
          bases.append(start * st[axis])
          start += n
        }
        steps[second].pre.movement = .transposeSplit(x: x, strides: [st], bases: bases)
      case (.concat(let axis), .transpose(let perm)):
        let y = b.outs[0]
        guard y.type.dtype.byteSize == 4, a.ins.allSatisfy({ !$0.byteRange.overlaps(y.byteRange) }) else { continue }
        // Concatenated axis d lands at the result's axis p where perm[p] == d.
        let ys = rowMajorStrides(y.type.shape)
        var st = [Int](repeating: 0, count: perm.count)
        for (p, d) in perm.enumerated() { st[d] = ys[p] }
        var start = 0, bases: [Int] = []
        for x in a.ins {
          bases.append(start * st[axis])
          start += x.type.shape[axis]
        }
        steps[second].pre.movement = .concatTranspose(xs: a.ins, strides: [st], bases: bases)
      default: continue
      }
      steps[first].pre.skip = true
      steps[first].pre.unwritten = true
    }
  }

  static func prepare(_ n: Node, _ g: Graph) -> Prepared {
    let ins = n.inputs.map { g.type(of: $0).shape }
    let out = n.outputs.first.map { g.type(of: $0).shape } ?? []
    switch n.op {
    case .add, .sub, .mul, .div, .pow, .equal, .select: return Prepared(strides: ins.map { broadcastStrides($0, to: out) })
    case .expand: return Prepared(strides: [broadcastStrides(ins[0], to: out)])
    case .gemm where ins.count > 2: return Prepared(strides: [broadcastStrides(ins[2], to: out)])
    case .transpose(let perm): return Prepared(strides: [Movement.transposeStrides(perm, ins[0])])
    case .slice(let spec):
      let (base, st) = Movement.sliceStrides(spec, ins[0])
      return Prepared(base: base, strides: [st])
    case .sliceGrad(let spec, let shape):
      let (base, st) = Movement.sliceStrides(spec, shape)
      return Prepared(base: base, strides: [st])
    case .reduceMean(let axes, _), .reduceSum(let axes, _): return Prepared(strides: [Movement.reduceStrides(axes: axes, ins[0])])
    case .globalAveragePool: return Prepared(strides: [Movement.reduceStrides(axes: Array(2..<ins[0].count), ins[0])])
    case .matMul: return Prepared(strides: LinearAlgebra.matMulBatch(ins[0], ins[1], out))
    case .constant, .unary, .cast, .linear, .gemm, .conv, .layerNorm, .softmax, .reshape, .gather, .concat, .split,
      .gatherRows, .scatterRows, .squeeze, .unsqueeze, .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
      .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .gatherGrad, .sgd, .adamw,
      .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .pad, .padGrad:
      return Prepared()
    }
  }
  /// FLOPs of the last `run()`: Σ2MNK over its sgemm calls plus the own kernels' counts.
  public private(set) var lastRunFlops = 0
  private let otherFlops: Int
  private var firstUpdate = 0
  private let scratch: UnsafeMutablePointer<Float>

  /// The layout the executor's buffers follow, as the plan file gave it.
  public let memory: BufferLayout
  /// Everything allocated: the arena, parameters, optimizer state, inputs, buffers of their
  /// own (gradients held to updates at the end) and the convolution workspace.
  public let totalBytes: Int
  /// Bytes of results that have buffers of their own (an unfused optimizer's gradients).
  public let ownBufferBytes: Int
  private let arena: Arena
  /// Retained values (`retaining`): copied out right after the node that makes them runs.
  var snapshots: [Int: [(from: Buffer, to: Buffer)]] = [:]

  /// The gradient each optimizer update reads (`--dump-grads` and tests retain them).
  public static func gradientValues(_ g: Graph) -> Set<ValueID> {
    Set(g.nodes.compactMap { n in n.op.isUpdate ? n.inputs[1] : nil })
  }

  /// - Parameter maxMemory: refuse, before allocating anything, a graph needing more bytes.
  /// - Parameter retaining: values to keep readable after `run()`: each is copied out as
  ///   soon as it is made (its arena memory is reused later in the step), and the node that
  ///   makes it runs on its own, outside any fused pair or slice group.
  public init(graph: Graph, threads: Int = 1, maxMemory: Int? = nil, retaining: Set<ValueID> = []) throws {
    let plan: BufferLayout
    do { plan = try graph.bufferLayout() } catch let e as IRError { throw RuntimeError("\(e)") }
    let workspace = graph.nodes.reduce(0) { max($0, graph.workspaceBytes($1)) }
    var own = 0
    for n in graph.nodes {
      for o in n.outputs where plan.offsets[o] == nil && plan.owner[o] == nil { own += graph.type(of: o).byteCount }
    }
    let persistent = graph.params.reduce(0) { $0 + graph.type(of: $1.value).byteCount } + graph.inputs.reduce(0) { $0 + graph.type(of: $1.value).byteCount }
    let need = plan.arenaBytes + persistent + own + workspace
    if let maxMemory, need > maxMemory {
      throw RuntimeError("the plan needs \(byteText(need)), more than the limit of \(byteText(maxMemory))")
    }
    self.graph = graph
    memory = plan
    totalBytes = need
    ownBufferBytes = own
    // OpenBLAS runs single-threaded: sbpc splits products over its own worker pool, whose
    // spinning workers would hold the cores OpenBLAS's threads wait for.
    GEMM.setThreads(1)
    Parallel.threads = max(threads, 1)
    for n in graph.nodes {
      for o in n.outputs {
        let t = graph.type(of: o)
        // bf16 values are GEMM operands (`mixed-precision`) and a layer norm's saved x̂: casts and
        // layer_norm_saving make them, and views (a reshape, a transpose read only by matmuls)
        // pass them on; only products, casts and the norm's gradient and affine read bf16.
        var bf16 = false
        if t.dtype == .bf16 {
          if case .cast = n.op { bf16 = true }
          if case .layerNormSaving = n.op { bf16 = true }
          bf16 = bf16 || n.op.isView || plan.transposedViews.contains(o)
        }
        guard t.dtype == .f32 || t.dtype == .i64 || t.dtype == .bool || t.dtype == .i32 || bf16 else {
          throw RuntimeError(
            "node '\(n.name)' (\(n.op.name)) produces \(t.dtype); the CPU runtime runs f32, and bf16 only as cast GEMM operands")
        }
      }
      for (k, v) in n.inputs.enumerated() where graph.type(of: v).dtype == .bf16 {
        var reads = n.op.isView || n.op.productOperands.contains(k) || n.outputs.first.map(plan.transposedViews.contains) == true
        if case .cast = n.op { reads = true }
        if case .layerNormAffine = n.op { reads = true }
        if case .layerNormGrad = n.op, n.inputs.count == 4 { reads = true }
        guard reads else {
          throw RuntimeError("node '\(n.name)' (\(n.op.name)) reads a bf16 value; the CPU runtime reads bf16 in products, casts, views and a layer norm's saved x̂ only")
        }
      }
      if case .conv = n.op, Executor.convShapes(n, graph).x.count != 4 {
        throw RuntimeError("node '\(n.name)': the CPU runtime supports 2-D convolutions only, got input \(Executor.convShapes(n, graph).x)")
      }
    }
    let arena = Arena(bytes: plan.arenaBytes)
    self.arena = arena
    var buffers = [Buffer?](repeating: nil, count: graph.valueCount)
    for p in graph.params {
      let t = graph.type(of: p.value)
      let b = Buffer(t)
      if let d = p.data {
        guard d.count == b.byteCount else { throw RuntimeError("parameter @\(p.name) holds \(d.count) bytes, \(t) needs \(b.byteCount)") }
        guard t.dtype == .f32 || t.dtype == .i64 || t.dtype == .i32 else {
          throw RuntimeError("parameter @\(p.name) is \(t.dtype); the CPU runtime runs f32")
        }
        b.raw.copyMemory(from: d.base, byteCount: d.count)
        // The weights now live in the executor: drop the mapped file's pages so they are not
        // resident twice (the mapping stays valid; pages come back from the file if read).
        if d.fileBacked { Executor.releasePages(d.base, d.count) }
      }
      buffers[p.value.raw] = b
    }
    for i in graph.inputs { buffers[i.value.raw] = Buffer(graph.type(of: i.value)) }
    for n in graph.nodes {
      for o in n.outputs {
        let t = graph.type(of: o)
        if let owner = plan.owner[o], let b = buffers[owner.raw] {
          buffers[o.raw] = Buffer(viewing: b.raw, t, base: b)
        } else if let off = plan.offsets[o] {
          buffers[o.raw] = Buffer(viewing: arena.base + off, t, base: arena)
        } else {
          buffers[o.raw] = Buffer(t)
        }
      }
    }
    self.buffers = buffers
    let transposed = plan.transposedViews
    steps = graph.nodes.map { n in
      var conv: Conv2D?
      switch n.op {
      case .conv(let g), .convGradInput(let g, _), .convGradWeight(let g, _):
        let (x, w, y) = Executor.convShapes(n, graph)
        conv = Conv2D(g, input: x, weight: w, output: y)
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .layerNorm,
        .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
        .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
        .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
        .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
        .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw: break
      }
      var pre = Executor.prepare(n, graph)
      pre.bf16 = n.attrs[Annotation.precision] == .string("bf16")
      switch n.op {
      case .transpose: pre.skip = transposed.contains(n.outputs[0])
      case .matMul: (pre.transA, pre.transB) = (transposed.contains(n.inputs[0]), transposed.contains(n.inputs[1]))
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .linear, .gemm, .conv, .layerNorm,
        .softmax, .reshape, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
        .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad,
        .runningStats, .maxPool,
        .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient,
        .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad,
        .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd,
        .adamw: break
      }
      return (n, n.inputs.map { buffers[$0.raw]! }, n.outputs.map { buffers[$0.raw]! }, conv, pre)
    }
    // The pairs and runs the memory plan made room for, and only those; a node whose result
    // is retained runs on its own, so its result is there to copy when it has run.
    var makers: [Int: [ValueID]] = [:]
    for (i, n) in graph.nodes.enumerated() { for o in n.outputs where retaining.contains(o) { makers[i, default: []].append(o) } }
    Executor.pairMovement(&steps, plan.movementPairs.filter { makers[$0.key] == nil && makers[$0.value] == nil })
    let runs = plan.sliceRuns.filter { $0.nodes.allSatisfy { makers[$0] == nil } }
    for g in SliceGroup.groups(steps, runs: runs, graph: graph, threads: max(threads, 1)) {
      for i in g.steps { steps[i].pre.group = g }
      for i in g.steps.dropFirst() { steps[i].pre.grouped = true }
    }
    Executor.pairGelus(&steps, apart: Set(makers.keys))
    otherFlops = graph.nodes.reduce(0) { $0 + graph.flops($1).other }
    firstUpdate = steps.firstIndex { $0.node.op.isUpdate } ?? steps.count
    scratch = .allocate(capacity: max(workspace / 4, 1))
    for (i, values) in makers {
      snapshots[i] = values.map { v in
        let copy = Buffer(graph.type(of: v))
        defer { self.buffers[v.raw] = copy }
        return (self.buffers[v.raw]!, copy)
      }
    }
  }

  /// Finds each gelu_grad(x, dy) and gelu(x) scheduled one after the other (the backward's
  /// rematerialized activation beside its gradient) and lets the first run both. Running the
  /// second node's kernel one position early is safe when its result's memory is either an
  /// operand's own memory (elementwise in place) or disjoint from everything both nodes read
  /// and write: any other value whose memory it could share dies before the first node.
  static func pairGelus(_ steps: inout [Step], apart: Set<Int> = []) {
    func sameOrApart(_ a: Buffer, _ b: Buffer) -> Bool {
      a.raw == b.raw && a.byteCount == b.byteCount || !a.byteRange.overlaps(b.byteRange)
    }
    var i = 0
    while i + 1 < steps.count {
      let (m, n) = (steps[i].node, steps[i + 1].node)
      var grad = -1, approximation = GeluApproximation.none
      switch (m.op, n.op) {
      case (.unaryGrad(.gelu(let a)), .unary(.gelu(let b))) where a == b && m.inputs[0] == n.inputs[0]: (grad, approximation) = (i, a)
      // gelu first: its result must not be the gradient's dy, which the pair reads first.
      case (.unary(.gelu(let a)), .unaryGrad(.gelu(let b))) where a == b && m.inputs[0] == n.inputs[0] && n.inputs[1] != m.outputs[0]:
        (grad, approximation) = (i + 1, a)
      default: break
      }
      guard grad >= 0, !apart.contains(i), !apart.contains(i + 1) else {
        i += 1
        continue
      }
      let act = grad == i ? i + 1 : i
      let x = steps[grad].ins[0], dy = steps[grad].ins[1], dx = steps[grad].outs[0], y = steps[act].outs[0]
      let early = grad == i ? y : dx  // the result written one node early
      guard sameOrApart(early, x), sameOrApart(early, dy), !y.byteRange.overlaps(dx.byteRange), x.count == dy.count else {
        i += 1
        continue
      }
      steps[i].pre.geluPair = (approximation, x, dy, y, dx)
      steps[i + 1].pre.skip = true
      i += 2
    }
  }

  static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

  /// madvise(DONTNEED) on the whole pages inside [base, base + count).
  static func releasePages(_ base: UnsafeRawPointer, _ count: Int) {
    let start = (Int(bitPattern: base) + pageSize - 1) / pageSize * pageSize
    let end = (Int(bitPattern: base) + count) / pageSize * pageSize
    guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
    _ = madvise(p, end - start, MADV_DONTNEED)
  }

  deinit { scratch.deallocate() }

  /// The one allocation every transient buffer lives in.
  final class Arena {
    let base: UnsafeMutableRawPointer
    init(bytes: Int) {
      base = .allocate(byteCount: max(bytes, 1), alignment: BufferLayout.alignment)
      base.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }
    deinit { base.deallocate() }
  }

  static func convShapes(_ n: Node, _ g: Graph) -> (x: [Int], w: [Int], y: [Int]) {
    switch n.op {
    case .convGradInput(_, let xs): return (xs, g.type(of: n.inputs[1]).shape, g.type(of: n.inputs[0]).shape)
    case .convGradWeight(_, let ws): return (g.type(of: n.inputs[0]).shape, ws, g.type(of: n.inputs[1]).shape)
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
      .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
      .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
      .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
      .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
      .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd,
      .adamw: return (g.type(of: n.inputs[0]).shape, g.type(of: n.inputs[1]).shape, g.type(of: n.outputs[0]).shape)
    }
  }

  /// Copies the trainable weights of `other` (by name) into this executor's parameters:
  /// an evaluation executor takes a training executor's current weights this way.
  public func copyParameters(from other: Executor) {
    var theirs: [String: Buffer] = [:]
    for p in other.graph.params.filter(\.trainable) + other.graph.stateParameters { theirs[p.name] = other.buffer(p.value) }
    for p in graph.params {
      guard let src = theirs[p.name] else { continue }
      let dst = buffer(p.value)
      if src.byteCount == dst.byteCount { dst.raw.copyMemory(from: src.raw, byteCount: dst.byteCount) }
    }
  }

  /// For a step of a slice group (whose first step runs all of them, so the profile books
  /// the group's time there): the group's kernels, "per-slice matmul+softmax+matmul".
  public func groupLabel(at i: Int) -> String? { steps[i].pre.group?.label }

  /// The profile's name for step i's kernel: its group's label, else the op's name, with
  /// depthwise convs apart (they run their own kernels, not im2col and sgemm).
  public func profileLabel(at i: Int) -> String {
    if let g = groupLabel(at: i) { return g }
    return steps[i].node.op.name + (steps[i].conv?.depthwise == true ? " (depthwise)" : "")
  }

  /// The buffer holding value `v`.
  public func buffer(_ v: ValueID) -> Buffer { buffers[v.raw]! }

  /// Buffer of the graph input named `name`.
  public func input(_ name: String) -> Buffer? { graph.inputs.first { $0.name == name }.map { buffer($0.value) } }

  /// Buffer of the graph output named `name`.
  public func output(_ name: String) -> Buffer? { graph.outputs.first { $0.name == name }.map { buffer($0.value) } }
  /// Runs every node once, in order. With `checkNumerics`, stops at the first node that
  /// produces a NaN or an infinity, naming the op, the node and its block.
  /// Nanoseconds spent in each node's kernel over every profiled run (index = schedule position).
  public private(set) var profileNanos: [UInt64] = []

  /// Data-parallel training's buckets and synchronized BatchNorm (`distribute(over:)`).
  var parallel: DataParallelState?
  /// Nanoseconds the steps have waited for gradient reductions, over every run.
  public internal(set) var communicationWaitNanos: UInt64 = 0

  /// Multiplies every optimizer update's learning rate (a schedule sets it before each step).
  public var learningRateScale: Float = 1

  /// Clip the gradients to this global L2 norm before the updates (PyTorch's
  /// clip_grad_norm_). Needs every update after the whole backward (a plan compiled with
  /// --no-fuse-optimizer): see `setGradientClipping`.
  public private(set) var clipNorm: Float?
  /// The global gradient norm of the last run, before clipping (when clipping is on).
  public private(set) var lastGradientNorm: Float = 0
  private var gradientScale: Float = 1

  /// Turns clipping on; fails when an update runs before the last gradient exists.
  public func setGradientClipping(_ norm: Float?) throws {
    guard let norm else {
      clipNorm = nil
      return
    }
    let updates = steps.indices.filter { steps[$0].node.op.isUpdate }
    guard let first = updates.first, updates.last! - first + 1 == updates.count, updates.last! == steps.count - 1 else {
      throw RuntimeError("gradient clipping needs every gradient before the first update: compile the plan with --no-fuse-optimizer")
    }
    clipNorm = norm
  }

  /// √Σ‖g‖² over the gradients the updates read, and the factor that clips it.
  private func clipGradients() {
    guard let clipNorm else { return }
    var sum: Double = 0
    for step in steps where step.node.op.isUpdate {
      let g = step.ins[1]
      sum += Double(VMath.dot(g.count, g.f32, g.f32))
    }
    lastGradientNorm = Float(sum.squareRoot())
    // PyTorch's rule: scale by max_norm / (norm + 1e-6) when that is below 1.
    gradientScale = min(1, clipNorm / (lastGradientNorm + 1e-6))
  }

  /// - Parameter profile: time every kernel into `profileNanos` (a clock read per node).
  public func run(checkNumerics: Bool = false, profile: Bool = false) throws {
    let gemmStart = GEMM.flops
    defer { lastRunFlops = GEMM.flops - gemmStart + otherFlops }
    if profile && profileNanos.count != steps.count { profileNanos = [UInt64](repeating: 0, count: steps.count) }
    gradientScale = 1
    defer { finishAllBuckets() }
    for (i, step) in steps.enumerated() {
      let n = step.node
      finishBuckets(before: i)
      if clipNorm != nil, i == firstUpdate {
        finishAllBuckets()
        clipGradients()
      }
      let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
      defer {
        if profile { profileNanos[i] &+= DispatchTime.now().uptimeNanoseconds - t0 }
        startBuckets(after: i)
      }
      if !checkNumerics, let g = step.pre.group {
        if !step.pre.grouped {
          for h in g.hoisted { try execute(steps[h].node, steps[h].ins, steps[h].outs, steps[h].conv, steps[h].pre) }
          g.run()
        }
        continue
      }
      do { try execute(n, step.ins, step.outs, step.conv, step.pre) } catch let e as RuntimeError {
        throw RuntimeError("node '\(n.name)' (\(n.op.name)): \(e)")
      }
      if let copies = snapshots[i] { for (made, copy) in copies { copy.raw.copyMemory(from: made.raw, byteCount: made.byteCount) } }
      if checkNumerics, !step.pre.unwritten, let bad = firstNonFinite(n) {
        var block = ""
        if case .int(let b)? = n.attrs[Annotation.block] { block = " in block \(b)" }
        throw NumericError(description: "\(n.op.name) at node '\(n.name)'\(block) produced \(bad)")
      }
    }
  }

  private func firstNonFinite(_ n: Node) -> String? {
    for o in n.outputs where graph.type(of: o).dtype == .f32 {
      let b = buffers[o.raw]!
      for i in 0..<b.count where !b.f32[i].isFinite { return b.f32[i].isNaN ? "NaN" : "\(b.f32[i])" }
    }
    return nil
  }

  private func execute(_ n: Node, _ ins: [Buffer], _ outs: [Buffer], _ conv: Conv2D?, _ pre: Prepared) throws {
    let y = outs.first
    if pre.skip { return }
    switch pre.movement {
    case .transposeSplit(let x, let strides, let bases)?:
      for (o, base) in zip(outs, bases) { Movement.strided(x, base: base, strides: strides, o) }
      return
    case .concatTranspose(let xs, let strides, let bases)?:
      for (x, base) in zip(xs, bases) { Movement.stridedWrite(x, base: base, strides: strides, y!) }
      return
    case nil: break
    }
    if let p = pre.geluPair {
      Elementwise.geluAndGrad(p.approximation, p.x, p.dy, p.y, p.dx)
      return
    }
    switch n.op {
    case .constant(let lit):
      switch lit.elements {
      case .floats(let v): for (i, x) in v.enumerated() { y!.f32[i] = Float(x) }
      case .ints(let v):
        if lit.type.dtype == .i64 {
          for (i, x) in v.enumerated() { y!.i64[i] = x }
        } else {
          for (i, x) in v.enumerated() { y!.u8[i] = UInt8(truncatingIfNeeded: x) }
        }
      }
    case .add: Elementwise.binary(ins[0], ins[1], y!, pre.strides, Add.self)
    case .sub: Elementwise.binary(ins[0], ins[1], y!, pre.strides, Sub.self)
    case .mul: Elementwise.binary(ins[0], ins[1], y!, pre.strides, Mul.self)
    case .div: Elementwise.binary(ins[0], ins[1], y!, pre.strides, Div.self)
    case .pow: Elementwise.pow(ins[0], ins[1], y!, strides: pre.strides)
    case .equal: Elementwise.equal(ins[0], ins[1], y!, strides: pre.strides)
    case .select: Elementwise.select(ins[0], ins[1], ins[2], y!, strides: pre.strides)
    case .unary(let f): Elementwise.unary(f, ins[0], y!)
    case .cast: Elementwise.cast(ins[0], y!)
    case .matMul: LinearAlgebra.matMul(ins[0], ins[1], y!, batch: pre.strides, transA: pre.transA, transB: pre.transB, bf16: pre.bf16)
    case .linear(let axis, let layout):
      LinearAlgebra.linear(axis: axis, layout: layout, ins[0], ins[1], ins.count > 2 ? ins[2] : nil, y!, bf16: pre.bf16)
    case .gemm(let ta, let tb, let alpha, let beta):
      LinearAlgebra.gemm(
        transA: ta, transB: tb, alpha: Float(alpha), beta: Float(beta), ins[0], ins[1], ins.count > 2 ? ins[2] : nil, y!,
        cStrides: pre.strides, bf16: pre.bf16)
    case .conv:
      conv!.forward(ins[0], ins[1], ins.count > 2 ? ins[2] : nil, y!, scratch: scratch)
    case .layerNorm(let axis, let eps): Norm.layerNorm(axis: axis, eps: Float(eps), ins[0], ins[1], ins.count > 2 ? ins[2] : nil, y!)
    case .softmax(let axis): Norm.softmax(axis: axis, ins[0], y!)
    case .reshape, .squeeze, .unsqueeze, .stopGradient: if ins[0].raw != y!.raw { Movement.copy(ins[0], y!) }
    case .transpose, .slice, .expand: Movement.strided(ins[0], base: pre.base, strides: pre.strides, y!)
    case .gather(let axis): try Movement.gather(axis: axis, ins[0], ins[1], y!)
    case .gatherRows(let axis): try Movement.gatherRows(axis: axis, ins[0], ins[1], y!)
    case .scatterRows(let axis, _): try Movement.scatterRows(axis: axis, ins, y!)
    case .concat(let axis): Movement.concat(axis: axis, ins, y!)
    case .split(let axis, _): Movement.split(axis: axis, ins[0], outs)
    case .reduceMean, .globalAveragePool: Movement.reduce(strides: pre.strides, mean: true, ins[0], y!)
    case .reduceSum: Movement.reduce(strides: pre.strides, mean: false, ins[0], y!)
    case .softmaxCrossEntropy(let e): try Norm.softmaxCrossEntropy(ins[0], ins[1], y!, smoothing: Float(e))
    case .softmaxCrossEntropyGrad(let e): try Norm.softmaxCrossEntropyGrad(ins[0], ins[1], ins[2], y!, smoothing: Float(e))
    case .unaryGrad(let f): Elementwise.unaryGrad(f, ins[0], ins[1], y!)
    case .softmaxGrad(let axis): Norm.softmaxGrad(axis: axis, ins[0], ins[1], y!)
    case .layerNormGrad(let axis, _) where ins.count == 4:
      Norm.layerNormGradSaved(axis: axis, ins[0], ins[1], ins[2], ins[3], outs[0], outs[1], outs[2])
    case .layerNormSaving(let axis, let eps):
      Norm.layerNormSaving(axis: axis, eps: Float(eps), ins[0], ins[1], ins.count > 2 ? ins[2] : nil, outs[0], outs[1], outs[2])
    case .layerNormAffine(let axis): Norm.layerNormAffine(axis: axis, ins[0], ins[1], ins.count > 2 ? ins[2] : nil, y!)
    case .layerNormGrad(let axis, let eps):
      Norm.layerNormGrad(axis: axis, eps: Float(eps), ins[0], ins[1], ins[2], outs[0], outs[1], outs[2])
    case .convGradInput:
      conv!.gradInput(ins[0], ins[1], y!, scratch: scratch)
    case .convGradWeight:
      conv!.gradWeight(ins[0], ins[1], y!, scratch: scratch)
    case .linearGradWeight(let axis, let layout, _):
      LinearAlgebra.linearGradWeight(axis: axis, layout: layout, ins[0], ins[1], y!, bf16: pre.bf16)
    case .sliceGrad: Movement.sliceGrad(base: pre.base, strides: pre.strides, ins[0], y!)
    case .gatherGrad(let axis, _): Movement.gatherGrad(axis: axis, ins[0], ins[1], y!)
    case .batchNorm(let eps, _): BatchNorm.inference(epsilon: Float(eps), ins[0], ins[1], ins[2], ins[3], ins[4], y!)
    case .batchNormTraining(let eps):
      if let dp = parallel, dp.syncBatchNorm {
        BatchNorm.trainingSynced(epsilon: Float(eps), ins[0], ins[1], ins[2], outs[0], outs[1], outs[2], dp.comm, dp.channelSums)
      } else {
        BatchNorm.training(epsilon: Float(eps), ins[0], ins[1], ins[2], outs[0], outs[1], outs[2])
      }
    case .batchNormGrad(let eps):
      if let dp = parallel, dp.syncBatchNorm {
        BatchNorm.gradientSynced(
          epsilon: Float(eps), ins[0], ins[1], ins[2], ins[3], ins[4], outs[0], outs[1], outs[2], dp.comm, dp.channelSums)
      } else {
        BatchNorm.gradient(epsilon: Float(eps), ins[0], ins[1], ins[2], ins[3], ins[4], outs[0], outs[1], outs[2])
      }
    case .runningStats(let m, let n):
      // Synchronized statistics come from every rank's batch: n·P samples for the unbiasing.
      let count = parallel.map { $0.syncBatchNorm ? n * $0.comm.size : n } ?? n
      BatchNorm.runningStats(momentum: Float(m), count: count, ins[0], ins[1], ins[2], ins[3])
    case .pad(let pads, let mode, let value): Padding.pad(pads, mode, Float(value), ins[0], y!)
    case .padGrad(let pads, let mode, _): Padding.grad(pads, mode, ins[0], y!)
    case .maxPool(let g): Pool.maxPool(g, ins[0], y!)
    case .averagePool(let g, let include): Pool.averagePool(g, includePad: include, ins[0], y!)
    case .maxPoolGrad(let g): Pool.maxPoolGrad(g, ins[0], ins[1], y!)
    case .averagePoolGrad(let g, let include, _): Pool.averagePoolGrad(g, includePad: include, ins[0], y!)
    case .sgd(let lr, let m, let wd):
      Optimizer.sgd(lr: Float(lr) * learningRateScale, momentum: Float(m), wd: Float(wd), gscale: gradientScale, ins[0], ins[1], ins[2])
    case .adamw(let lr, let b1, let b2, let eps, let wd):
      Optimizer.adamw(
        lr: Float(lr) * learningRateScale, b1: Float(b1), b2: Float(b2), eps: Float(eps), wd: Float(wd), gscale: gradientScale,
        step: ins[4].f32[0], ins[0], ins[1], ins[2], ins[3])
    }
  }
}

/// A NaN or infinity found by `run(checkNumerics: true)`.
public struct NumericError: Error, CustomStringConvertible {
  public let description: String
}
