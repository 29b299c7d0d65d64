// Autodiff.swift: reverse-mode gradients, the training loss, and optimizer updates as graph nodes.
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
    var nb = GradBuilder(graph: b.graph, name: n.name)
    if let block = n.attrs[Annotation.block] { nb.attrs[Annotation.block] = block }
    if let role = n.attrs[Annotation.role] { nb.attrs[Annotation.from] = role }
    let dxs = try nb.gradients(of: n, n.outputs.map { grads[$0] })
    b.graph = nb.graph
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
  public init(optimizer: OptimizerConfig = .defaultSGD) { self.optimizer = optimizer }
  public let name = "autodiff"
  public let summary = "append the loss, reverse-mode gradients and optimizer updates (a training step)"

  public func run(_ graph: inout Graph) throws {
    guard let logitsOut = graph.outputs.first else { throw PassError("autodiff: the graph has no output to train") }
    let logits = logitsOut.value
    let lt = graph.type(of: logits)
    guard lt.rank == 2, lt.dtype == .f32 else { throw PassError("autodiff: the first output must be logits f32[B,C], got \(lt)") }
    let labels = graph.addInput("labels", TensorType(.i64, [lt.shape[0]]))
    let loss = try graph.append(.softmaxCrossEntropy, [logits, labels], name: "loss")[0]
    let params = graph.params.filter(\.trainable)
    let grads = try appendGradients(&graph, loss: loss, wrt: params.map(\.value))
    var outputs = [GraphInput(value: logits, name: logitsOut.name), GraphInput(value: loss, name: "loss")]
    // State the forward updates (running statistics) stays an output, so it is kept.
    let stateUpdates = Set(graph.nodes.filter { $0.op.category == .stateUpdate }.flatMap(\.outputs))
    outputs += graph.outputs.filter { stateUpdates.contains($0.value) }
    var step: ValueID?
    for p in params {
      let t = graph.type(of: p.value)
      let g = grads[p.value]!
      switch optimizer {
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
