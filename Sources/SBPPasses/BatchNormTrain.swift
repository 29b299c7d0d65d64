// BatchNormTrain.swift: the training step normalizes with each batch's statistics and updates the running ones, as PyTorch's train() does.
import SBPIR

/// Rewrites every `batch_norm` (running statistics, what evaluation uses) of the training
/// copy into `batch_norm_training` (the batch's statistics over every axis but the channel)
/// and a `running_stats` update of its running mean and variance, in place, whose results
/// become graph outputs named after the statistics. Runs first in the training pipeline, so
/// later passes see the statistics that mix rows. Running statistics shared by two
/// BatchNorms (an exporter that merged equal tensors) would be updated twice: refused.
public struct BatchNormTrain: Pass {
  public init() {}
  public let name = "batch-norm-train"
  public let summary = "normalize with the batch's statistics in the training step and update the running mean and variance"

  public func run(_ graph: inout Graph) throws {
    let norms = graph.nodes.indices.filter { if case .batchNorm = graph.nodes[$0].op { return true } else { return false } }
    guard !norms.isEmpty else { return }
    let ud = graph.index()
    var replacements: [Int: [Node]] = [:], renamed: [ValueID: ValueID] = [:]
    for i in norms {
      let n = graph.nodes[i]
      guard case .batchNorm(let eps, let momentum) = n.op else { continue }
      var stats: [Param] = []
      for v in n.inputs[3...4] {
        guard let p = ud.param(v), !p.trainable else {
          throw PassError("batch-norm-train: '\(n.name)' reads running statistics that are not non-trainable parameters")
        }
        let others = ud.users(v).filter { $0 != i }
        if let j = others.first(where: { if case .batchNorm = graph.nodes[$0].op { return true } else { return false } }) {
          throw PassError(
            "batch-norm-train: '\(graph.nodes[max(i, j)].name)' and '\(graph.nodes[min(i, j)].name)' share the running statistics @\(p.name) (the exporter merged equal tensors); export a model whose statistics differ"
          )
        }
        guard others.isEmpty, !graph.outputs.contains(where: { $0.value == v }) else {
          throw PassError("batch-norm-train: @\(p.name) is read by more than BatchNorm '\(n.name)'")
        }
        stats.append(p)
      }
      let x = graph.type(of: n.inputs[0])
      let t = try graph.append(.batchNormTraining(epsilon: eps), Array(n.inputs[0...2]), name: n.name, attrs: n.attrs)
      let u = try graph.append(
        .runningStats(momentum: momentum, count: x.elementCount / x.shape[1]), [n.inputs[3], n.inputs[4], t[1], t[2]],
        name: n.name + ".running_stats", attrs: n.attrs)
      // The two nodes take the old one's place in the order.
      replacements[i] = Array(graph.nodes.suffix(2))
      graph.nodes.removeLast(2)
      renamed[n.outputs[0]] = t[0]
      graph.outputs += zip(u, stats).map { GraphInput(value: $0, name: $1.name) }
    }
    graph.nodes = graph.nodes.indices.flatMap { replacements[$0] ?? [graph.nodes[$0]] }
    for (old, new) in renamed { graph.replaceUses(of: old, with: new) }
    graph.eliminateDeadCode()
  }
}
