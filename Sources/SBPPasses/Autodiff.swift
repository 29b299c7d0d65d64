// Autodiff.swift: reverse-mode gradients, the training loss, and optimizer updates as graph nodes.
import Glibc
import SBPIR

/// Optimizer and its hyperparameters, stored in the update nodes.
public enum OptimizerConfig: Sendable, Equatable {
  case sgd(lr: Double, momentum: Double, weightDecay: Double)
  case adamw(lr: Double, beta1: Double, beta2: Double, epsilon: Double, weightDecay: Double)

  public static let defaultSGD = OptimizerConfig.sgd(lr: 0.01, momentum: 0.9, weightDecay: 0)
}

/// Appends the gradients of scalar `loss` with respect to `wrt` and returns them by value.
/// Values that do not depend on any of `wrt`, or that pass through `stop_gradient`, get no
/// gradient; a value of `wrt` the loss does not reach gets zeros.
public func appendGradients(_ graph: inout Graph, loss: ValueID, wrt: [ValueID]) throws -> [ValueID: ValueID] {
  let forward = graph.nodes
  var requires = Set(wrt)
  for n in forward {
    if case .stopGradient = n.op { continue }
    if n.inputs.contains(where: requires.contains) { requires.formUnion(n.outputs.filter { graph.type(of: $0).dtype.isFloat }) }
  }
  var b = GradBuilder(graph: graph, name: "loss.seed")
  var grads: [ValueID: ValueID] = [loss: try b.one(.constant(Literal(f32: [1], shape: [])), [])]
  if b.type(loss).shape != [] { grads[loss] = try b.one(.expand(b.type(loss).shape), [grads[loss]!]) }
  for n in forward.reversed() where n.outputs.contains(where: { grads[$0] != nil }) && n.inputs.contains(where: requires.contains) {
    // The graph moves into the node's builder and back, never copied: a second reference
    // would make every append copy the whole node list (quadratic on an unrolled LSTM).
    var nb = GradBuilder(graph: Graph(name: ""), name: n.name)
    swap(&nb.graph, &b.graph)
    if let block = n.attrs[Annotation.block] { nb.attrs[Annotation.block] = block }
    if let role = n.attrs[Annotation.role] { nb.attrs[Annotation.from] = role }
    let dxs = try nb.gradients(of: n, n.outputs.map { grads[$0] })
    swap(&nb.graph, &b.graph)
    for (v, d) in zip(n.inputs, dxs) {
      guard let d, requires.contains(v) else { continue }
      grads[v] = try grads[v].map { try b.one(.add, [$0, d]) } ?? d
    }
  }
  var out: [ValueID: ValueID] = [:]
  for v in wrt { out[v] = try grads[v] ?? b.zeros(b.type(v)) }
  graph = b.graph
  return out
}

/// Turns a forward graph (its first output the logits) into a training step: a `labels`
/// input, the mean softmax cross-entropy loss, the gradient of every trainable parameter,
/// and one optimizer update per parameter. Outputs become logits, loss, then the updated
/// parameters and optimizer state.
public struct Autodiff: Pass {
  public var optimizer: OptimizerConfig
  public var groups: ParameterGroups
  /// Label smoothing ε of the loss (timm's `--smoothing`).
  public var smoothing: Double
  /// The loss reads soft targets f32[B, C] (Mixup, CutMix) instead of labels i64[B].
  public var softTargets: Bool
  public init(
    optimizer: OptimizerConfig = .defaultSGD, groups: ParameterGroups = ParameterGroups(), smoothing: Double = 0, softTargets: Bool = false
  ) {
    self.optimizer = optimizer
    self.groups = groups
    self.smoothing = smoothing
    self.softTargets = softTargets
  }
  public let name = "autodiff"
  public let summary = "append the loss, reverse-mode gradients and optimizer updates (a training step)"

  public func run(_ graph: inout Graph) throws {
    guard let logitsOut = graph.outputs.first else { throw PassError("autodiff: the graph has no output to train") }
    let logits = logitsOut.value
    let lt = graph.type(of: logits)
    guard lt.rank == 2, lt.dtype == .f32 else { throw PassError("autodiff: the first output must be logits f32[B,C], got \(lt)") }
    let labels = graph.addInput("labels", softTargets ? TensorType(.f32, lt.shape) : TensorType(.i64, [lt.shape[0]]))
    let loss = try graph.append(.softmaxCrossEntropy(smoothing: smoothing), [logits, labels], name: "loss")[0]
    let params = graph.params.filter(\.trainable)
    let grads = try appendGradients(&graph, loss: loss, wrt: params.map(\.value))
    var outputs = [GraphInput(value: logits, name: logitsOut.name), GraphInput(value: loss, name: "loss")]
    // State the forward updates (running statistics) stays an output, so it is kept.
    let stateUpdates = Set(graph.nodes.filter { $0.op.category == .stateUpdate }.flatMap(\.outputs))
    outputs += graph.outputs.filter { stateUpdates.contains($0.value) }
    var step: ValueID?
    let layers = groups.layerDecay == nil ? [:] : ParameterGroups.layerIDs(graph)
    for p in params {
      let t = graph.type(of: p.value)
      let g = grads[p.value]!
      switch groups.apply(optimizer, type: t, layer: layers[p.name]) {
      case .sgd(let lr, let momentum, let wd):
        let v = graph.addParam("opt.velocity." + p.name, t, trainable: false, data: nil)
        let r = try graph.append(.sgd(lr: lr, momentum: momentum, weightDecay: wd), [p.value, g, v], name: "update." + p.name)
        outputs += [GraphInput(value: r[0], name: p.name), GraphInput(value: r[1], name: "opt.velocity." + p.name)]
      case .adamw(let lr, let b1, let b2, let eps, let wd):
        if step == nil { step = graph.addInput("step", TensorType(.f32, [])) }
        let m = graph.addParam("opt.m." + p.name, t, trainable: false, data: nil)
        let v = graph.addParam("opt.v." + p.name, t, trainable: false, data: nil)
        let r = try graph.append(
          .adamw(lr: lr, beta1: b1, beta2: b2, epsilon: eps, weightDecay: wd), [p.value, g, m, v, step!], name: "update." + p.name)
        outputs += [
          GraphInput(value: r[0], name: p.name), GraphInput(value: r[1], name: "opt.m." + p.name),
          GraphInput(value: r[2], name: "opt.v." + p.name),
        ]
      }
    }
    graph.outputs = outputs
    // Rules produce every input's gradient; drop those nothing needs (such as the image's).
    graph.eliminateDeadCode()
  }
}

extension Graph {
  /// Optimizer updates overwrite parameters in place, so every reader of a parameter must run
  /// before its update; passes that add readers after autodiff call this to put updates last.
  public mutating func moveUpdatesLast() {
    nodes = nodes.filter { !$0.op.isUpdate } + nodes.filter { $0.op.isUpdate }
  }
}

/// Per-parameter learning rate and weight decay, as timm's fine-tuning recipes set them.
public struct ParameterGroups: Sendable, Equatable {
  /// No weight decay on parameters of rank ≤ 1 (biases, norm scales and shifts, layer
  /// scales): timm's default `filter_bias_and_bn`.
  public var noDecay1D: Bool
  /// Layer-wise learning-rate decay (BEiT, DeiT-III fine-tuning): a parameter of layer `l`
  /// out of `L` trains at `lr · decay^(L + 1 − l)`, where the stem is layer 0, block `b`
  /// layer `b + 1`, and the head `L + 1`.
  public var layerDecay: Double?

  public init(noDecay1D: Bool = false, layerDecay: Double? = nil) {
    self.noDecay1D = noDecay1D
    self.layerDecay = layerDecay
  }

  /// The optimizer for one parameter of type `t` in `layer` (of `layers.count` … see `layerIDs`).
  func apply(_ o: OptimizerConfig, type t: TensorType, layer: (id: Int, of: Int)?) -> OptimizerConfig {
    let scale = layerDecay.flatMap { d in layer.map { pow(d, Double($0.of + 1 - $0.id)) } } ?? 1
    let decay = !(noDecay1D && t.rank <= 1)
    switch o {
    case .sgd(let lr, let m, let wd): return .sgd(lr: lr * scale, momentum: m, weightDecay: decay ? wd : 0)
    case .adamw(let lr, let b1, let b2, let eps, let wd):
      return .adamw(lr: lr * scale, beta1: b1, beta2: b2, epsilon: eps, weightDecay: decay ? wd : 0)
    }
  }

  /// Each trainable parameter's layer from `mark`'s annotations: the first block that reads it
  /// (+1); for one no block reads, 0 before the first block, the next block's layer between
  /// blocks (a downsampler), blocks + 1 after the last (the head).
  static func layerIDs(_ g: Graph) -> [String: (id: Int, of: Int)] {
    let blockOf = g.nodeBlocks
    var starts: [Int: Int] = [:]  // block -> its first node
    for (i, b) in blockOf { starts[b] = min(starts[b] ?? i, i) }
    let count = (blockOf.values.max() ?? -1) + 1
    let first = blockOf.keys.min() ?? Int.max
    let ud = g.index()
    var out: [String: (id: Int, of: Int)] = [:]
    for p in g.params where p.trainable {
      let r = ud.users(p.value)
      if let b = r.compactMap({ blockOf[$0] }).min() {
        out[p.name] = (b + 1, count)
      } else if let r0 = r.min(), r0 < first {
        out[p.name] = (0, count)
      } else {
        let before = starts.values.filter { $0 < (r.min() ?? Int.max) }.count
        out[p.name] = (before + 1, count)
      }
    }
    return out
  }
}
