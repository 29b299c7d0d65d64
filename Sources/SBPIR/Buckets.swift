// Buckets.swift: the allreduce buckets of a data-parallel step, read back from bucket-allreduce's annotations.

/// Gradients reduced across ranks together, as one message. `bucket-allreduce` groups them in
/// the order the backward finishes them; the reduction starts once the last of them is made
/// and is waited for only before the first update that reads one.
public struct GradientBucket: Sendable, Equatable {
  public var index: Int
  /// The update nodes that read the bucket's gradients, in schedule order.
  public var updates: [Int]
  /// The gradients, in the order the bucket packs them.
  public var gradients: [ValueID]
  public var elements: Int
  /// The node after which every gradient of the bucket is final: the reduction starts there.
  public var start: Int
  /// The first update that reads one of them: the step waits for the reduction before it.
  public var wait: Int

  public var bytes: Int { elements * 4 }
}

extension Graph {
  /// The buckets `bucket-allreduce` annotated, in order; empty for a plan not scheduled for
  /// data-parallel training.
  public var gradientBuckets: [GradientBucket] {
    let producer = producerIndex()
    var byBucket: [Int: [Int]] = [:]
    for (i, n) in nodes.enumerated() where n.op.isUpdate {
      if case .int(let k)? = n.attrs[Annotation.commBucket] { byBucket[k, default: []].append(i) }
    }
    return byBucket.keys.sorted().map { k in
      let updates = byBucket[k]!
      var seen: Set<ValueID> = []
      let grads = updates.map { nodes[$0].inputs[1] }.filter { seen.insert($0).inserted }
      return GradientBucket(
        index: k, updates: updates, gradients: grads, elements: grads.reduce(0) { $0 + type(of: $1).elementCount },
        start: grads.map { producer[$0] ?? 0 }.max() ?? 0, wait: updates.min()!)
    }
  }
}
