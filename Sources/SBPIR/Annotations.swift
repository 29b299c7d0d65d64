// Annotations.swift: the keys passes write on nodes, one spelling each, and the graph queries every pass shares.

/// Annotation keys, as typed constants: a misspelt key is a compile error, not a silently
/// missing annotation.
public enum Annotation {
  // mark: what a node is in its block.
  public static let role = "sbp.role"
  public static let block = "sbp.block"
  public static let stage = "sbp.stage"
  public static let kind = "sbp.kind"
  public static let layout = "sbp.layout"
  public static let tokenAxes = "sbp.token_axes"
  public static let grid = "sbp.grid"
  public static let prefix = "sbp.prefix"
  public static let unmatched = "sbp.unmatched"
  /// A row-wise region split on its own (`Segment`), numbered within its block; its first
  /// node carries the region's token axes, grid and prefix, and every node its stage.
  public static let segment = "sbp.segment"
  /// On an attention softmax whose keys come from another grid: "query", the split that
  /// core gets whatever `--attention` says.
  public static let attention = "sbp.attention"
  /// On a windowed attention's softmax: [windows, tokens per window] of its partition.
  public static let windows = "sbp.windows"
  // insert-sbp and prune-backward.
  public static let from = "sbp.from"
  public static let sparseRows = "sbp.sparse_rows"
  // plan-memory: the buffer layout (`BufferLayout`).
  public static let memOffsets = "mem.offsets"
  public static let memShares = "mem.shares"
  public static let memPair = "mem.pair"
  public static let memRun = "mem.run"
  public static let memScratch = "mem.scratch"
  // mixed-precision: "bf16" on a product whose operands are rounded to bf16 (fp32 accumulation).
  public static let precision = "mp.precision"
  // bucket-allreduce: the allreduce bucket an update's gradient travels in.
  public static let commBucket = "comm.bucket"
}

extension Graph {
  /// The position of the node that makes each value, over the nodes before `end` (all by default).
  public func producerIndex(before end: Int? = nil) -> [ValueID: Int] {
    var producer: [ValueID: Int] = [:]
    for (i, n) in nodes.enumerated() where i < (end ?? nodes.count) { for o in n.outputs { producer[o] = i } }
    return producer
  }

  /// The training step's loss node: autodiff appends it where the forward ends, so every
  /// node after it is backward or an optimizer update. nil before autodiff.
  public var lossIndex: Int? { nodes.lastIndex { $0.op.category == .loss } }

  /// Non-trainable parameters a training step updates in place (BatchNorm's running
  /// statistics): checkpoints keep them, evaluation reads them, export writes them back.
  public var stateParameters: [Param] {
    let updated = Set(nodes.filter { $0.op.category == .stateUpdate }.flatMap { n in (n.op.overwrittenOperands ?? []).map { n.inputs[$0] } })
    return params.filter { updated.contains($0.value) }
  }
}
