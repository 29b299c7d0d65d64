// Cost.swift: what a training step saves for backward and how many FLOPs it runs, per block, from the graph alone.
import SBPIR
import SBPPasses

/// The static cost of one training step. "Saved bytes" are the forward values, other than
/// parameters and inputs, that some backward op reads, so they are live where the forward
/// ends; views (reshape, squeeze, unsqueeze, stop_gradient) count once, as their source.
public struct StepCost: Sendable, Encodable, Equatable {
  /// One row of the breakdown: a block, or the parts outside blocks.
  public struct Part: Sendable, Encodable, Equatable {
    public var name: String
    public var savedBytes: Int
    /// Of `savedBytes`, what the attention core's backward (scores, softmax, context) reads.
    public var attentionSavedBytes: Int
    public var forwardFlops: Int
    public var backwardFlops: Int
  }

  /// One saved value: where it comes from and its size.
  public struct Saved: Sendable, Encodable, Equatable {
    public var part: String
    public var node: String
    public var op: String
    public var type: String
    public var bytes: Int
  }

  public var parts: [Part]
  /// Every saved value, largest first.
  public var values: [Saved]
  public var savedBytes: Int
  public var forwardFlops: Int
  public var backwardFlops: Int
  public var optimizerFlops: Int
  public var stepFlops: Int { forwardFlops + backwardFlops + optimizerFlops }

  /// Bytes of f32 elements, so the same graph can be costed at another activation dtype.
  public init(train g: Graph, bytesPerElement: Int? = nil) {
    let lossIndex = g.lossIndex ?? g.nodes.count - 1
    let producer = g.producerIndex()
    func root(_ v: ValueID) -> ValueID {
      var v = v
      while let p = producer[v] {
        guard g.nodes[p].op.isView else { return v }
        v = g.nodes[p].inputs[0]
      }
      return v
    }
    func partName(_ n: Node) -> String {
      if case .int(let b)? = n.attrs[Annotation.block] { return "block \(b)" }
      return "outside blocks"
    }
    var byName: [String: Part] = [:]
    var order: [String] = []
    func touch(_ name: String) {
      if byName[name] == nil {
        byName[name] = Part(name: name, savedBytes: 0, attentionSavedBytes: 0, forwardFlops: 0, backwardFlops: 0)
        order.append(name)
      }
    }
    var saved = Set<ValueID>()
    var attention = Set<ValueID>()
    let core: Set<AttrValue> = [.string("mhsa.scores"), .string("mhsa.softmax"), .string("mhsa.context")]
    var fwd = 0, bwd = 0, opt = 0
    for (i, n) in g.nodes.enumerated() {
      let f = g.flops(n)
      let total = f.gemm + f.other
      if n.op.isUpdate {
        opt += total
        continue
      }
      let name = partName(n)
      touch(name)
      if i <= lossIndex {
        fwd += total
        byName[name]!.forwardFlops += total
      } else {
        bwd += total
        byName[name]!.backwardFlops += total
        for v in n.inputs {
          let r = root(v)
          if let p = producer[r], p <= lossIndex {
            saved.insert(r)
            if let from = n.attrs[Annotation.from], core.contains(from) { attention.insert(r) }
          }
        }
      }
    }
    var savedTotal = 0
    var values: [Saved] = []
    for v in saved {
      let t = g.type(of: v)
      let bytes = bytesPerElement.map { t.dtype == .f32 ? t.elementCount * $0 : t.byteCount } ?? t.byteCount
      let name = partName(g.nodes[producer[v]!])
      touch(name)
      byName[name]!.savedBytes += bytes
      let p = g.nodes[producer[v]!]
      values.append(Saved(part: name, node: p.name, op: p.op.name, type: t.description, bytes: bytes))
      if attention.contains(v) { byName[name]!.attentionSavedBytes += bytes }
      savedTotal += bytes
    }
    // Blocks in index order, then everything outside them.
    parts = order.sorted { a, b in
      let ia = a.hasPrefix("block ") ? Int(a.dropFirst(6))! : Int.max, ib = b.hasPrefix("block ") ? Int(b.dropFirst(6))! : Int.max
      return ia < ib
    }.map { byName[$0]! }
    self.values = values.sorted { ($0.bytes, $1.node) > ($1.bytes, $0.node) }
    savedBytes = savedTotal
    forwardFlops = fwd
    backwardFlops = bwd
    optimizerFlops = opt
  }
}

/// What a plan saves against the same model compiled with `--keep 1`: the three totals of
/// `sbpc memory --compare`, for the one-line summary `sbpc compile` prints.
public struct Savings: Sendable, Equatable {
  /// The memory plan's total (arena, parameters, optimizer state, inputs, workspace).
  public var totalBytes: Int
  public var plainTotalBytes: Int
  /// Activations saved for the backward.
  public var savedBytes: Int
  public var plainSavedBytes: Int
  /// Forward, backward and optimizer FLOPs of one step.
  public var stepFlops: Int
  public var plainStepFlops: Int

  public init(_ plan: Plan, plain: Plan) {
    let cost = StepCost(train: plan.train), plainCost = StepCost(train: plain.train)
    totalBytes = MemoryPlan(plan.train).totalBytes
    plainTotalBytes = MemoryPlan(plain.train).totalBytes
    savedBytes = cost.savedBytes
    plainSavedBytes = plainCost.savedBytes
    stepFlops = cost.stepFlops
    plainStepFlops = plainCost.stepFlops
  }

  /// One line: each figure, its `--keep 1` counterpart and the ratio.
  public var summary: String {
    func mib(_ b: Int) -> String { String(format: "%.2f", Double(b) / 1_048_576) }
    func ratio(_ a: Int, _ b: Int) -> String { String(format: "%.3f×", Double(a) / Double(max(b, 1))) }
    return "against --keep 1: memory \(mib(totalBytes)) / \(mib(plainTotalBytes)) MiB (\(ratio(totalBytes, plainTotalBytes))), "
      + "saved activations \(mib(savedBytes)) / \(mib(plainSavedBytes)) MiB (\(ratio(savedBytes, plainSavedBytes))), "
      + String(format: "step FLOPs %.3f / %.3f GFLOP", Double(stepFlops) / 1e9, Double(plainStepFlops) / 1e9)
      + " (\(ratio(stepFlops, plainStepFlops)))"
  }
}
