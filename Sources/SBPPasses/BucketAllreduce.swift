// BucketAllreduce.swift: groups the gradients into allreduce buckets and moves each update after its bucket's reduction.
import SBPIR

/// The bucket-allreduce pass, for data-parallel training. Walking the scheduled step, it
/// groups the gradients the updates read into buckets of at most `bucketBytes`, in the order
/// the backward finishes them (a gradient larger than a bucket travels alone), and marks
/// each update with its bucket (`comm.bucket`). The reduction of bucket k starts once its last
/// gradient is made; its updates move to just after bucket k+1 starts, so that the reduction
/// runs while the backward computes bucket k+1, and the last bucket's updates run at the end.
/// An update never moves earlier than the schedule put it (it must follow every reader of its
/// parameter). Without `bucketBytes` the pass does nothing: a one-process plan keeps its
/// updates where the gradients die.
public struct BucketAllreduce: Pass {
  public var bucketBytes: Int?
  public init(bucketBytes: Int? = nil) { self.bucketBytes = bucketBytes }
  public let name = "bucket-allreduce"
  public let summary = "group gradients into allreduce buckets in backward order; run each update after its bucket's reduction"

  public func run(_ graph: inout Graph) throws {
    guard let cap = bucketBytes, graph.lossIndex != nil else { return }
    let nodes = graph.nodes
    let producer = graph.producerIndex()
    let updates = nodes.indices.filter { nodes[$0].op.isUpdate }
    guard !updates.isEmpty else { return }
    func finished(_ u: Int) -> Int { producer[nodes[u].inputs[1]] ?? -1 }
    var buckets: [[Int]] = [], bytes = 0
    for u in updates.sorted(by: { (finished($0), $0) < (finished($1), $1) }) {
      let b = graph.type(of: nodes[u].inputs[1]).byteCount
      if buckets.isEmpty || bytes + b > cap && !buckets[buckets.count - 1].isEmpty {
        buckets.append([])
        bytes = 0
      }
      buckets[buckets.count - 1].append(u)
      bytes += b
    }
    let starts = buckets.map { $0.map(finished).max()! }
    // Each node's place: its old position, or for an update the later of that and the
    // position just after the next bucket's start.
    var key = nodes.indices.map { (Double($0), $0) }
    var bucketOf: [Int: Int] = [:]
    for (k, members) in buckets.enumerated() {
      let after = k + 1 < starts.count ? Double(starts[k + 1]) + 0.5 : Double(nodes.count)
      for u in members {
        bucketOf[u] = k
        key[u].0 = max(Double(u), after)
      }
    }
    let order = key.sorted { $0 < $1 }.map(\.1)
    graph.nodes = order.map { nodes[$0] }
    for (i, old) in order.enumerated() {
      if let k = bucketOf[old] { graph.annotate(node: i, Annotation.commBucket, .int(k)) }
    }
  }
}
