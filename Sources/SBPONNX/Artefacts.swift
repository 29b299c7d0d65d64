// Artefacts.swift: finds what an exporter did to a model's parameters that would change training (tied weights, folded attention biases, folded q/k/v biases).
import SBPIR

/// One initializer that feeds two or more layers. Exporters merge initializers whose values
/// are equal (an eval-mode export of a zero-initialized layer, a fresh model's equal norm
/// weights), often behind Identity nodes: training would then tie layers that PyTorch trains
/// apart. `copies` are the readers after the first, each with the name its copy gets.
struct TiedWeight: Sendable {
  struct Reader: Sendable {
    var node: Int
    var input: Int
    var copy: String
  }
  var name: String
  var nodeNames: [String]
  var copies: [Reader]
}

/// The tied weights of `m`, in initializer order; the same file always gives the same names.
func findTiedWeights(_ m: OModel) -> [TiedWeight] {
  var identityOf: [String: String] = [:]  // Identity output -> its input
  for n in m.nodes where n.opType == "Identity" && n.inputs.count == 1 && n.outputs.count == 1 {
    identityOf[n.outputs[0]] = n.inputs[0]
  }
  func root(_ name: String) -> String {
    var r = name
    var seen: Set<String> = []
    while let next = identityOf[r], seen.insert(r).inserted { r = next }
    return r
  }
  // A tensor PyTorch holds as a buffer (a rotary table every block reads) is a constant, and
  // sharing it is no tie.
  let buffers = dynamoBuffers(m.graphMetadata)
  let weights = Set(m.initializers.filter { $0.onnxType == 1 && $0.dims.reduce(1, *) > 1 && !buffers.contains($0.name) }.map(\.name))
  // dynamo names every initializer after the one parameter it is (its graph signature lists
  // them): a parameter several nodes read is shared in PyTorch itself, not by the exporter.
  let parameters = dynamoParameters(m.graphMetadata)
  var readers: [String: [(node: Int, input: Int, alias: String?)]] = [:]
  for (i, n) in m.nodes.enumerated() where n.opType != "Identity" && n.opType != "Shape" && n.opType != "Size" {
    for (k, inp) in n.inputs.enumerated() where !inp.isEmpty && !(n.opType == "CastLike" && k == 1) {  // reads only the type
      let r = root(inp)
      if weights.contains(r) { readers[r, default: []].append((i, k, inp == r ? nil : inp)) }
    }
  }
  // One layer may read its weight twice: TorchScript names nodes by module scope
  // (`/layer1/layer1.0/conv1/Conv`), and readers in one scope are one layer. Nodes named
  // without a scope are each a layer. A read through an Identity alias is how the exporter
  // leaves a tensor it merged away, so each alias is its own tensor even within one scope.
  func scope(_ i: Int) -> String {
    let name = m.nodes[i].name
    return name.contains("/") ? String(name[..<name.lastIndex(of: "/")!]) : "node \(i)"
  }
  var taken = Set(m.initializers.map(\.name)).union(m.nodes.flatMap(\.outputs))
  var out: [TiedWeight] = []
  for t in m.initializers {
    guard let rs = readers[t.name], !parameters.contains(t.name) else { continue }
    var layers: [(scope: String, readers: [(node: Int, input: Int)])] = []
    for r in rs {
      let sc = scope(r.node) + (r.alias.map { " via \($0)" } ?? "")
      if let k = layers.firstIndex(where: { $0.scope == sc }) {
        layers[k].readers.append((r.node, r.input))
      } else {
        layers.append((sc, [(r.node, r.input)]))
      }
    }
    guard layers.count >= 2 else { continue }
    // The first layer keeps the weight; each later one gets its own copy, `<weight>.copy<k>`.
    var copies: [TiedWeight.Reader] = []
    for (k, layer) in layers.dropFirst().enumerated() {
      var name = "\(t.name).copy\(k + 1)"
      while taken.contains(name) { name += "_" }
      taken.insert(name)
      for r in layer.readers { copies.append(.init(node: r.node, input: r.input, copy: name)) }
    }
    let nodes = layers.map { $0.readers[0].node }
    out.append(TiedWeight(name: t.name, nodeNames: nodes.map { m.nodes[$0].name }, copies: copies))
  }
  return out
}

/// Gives each later reader of a tied weight its own copy (an initializer with the same bytes).
func untie(_ m: inout OModel, _ ties: [TiedWeight]) {
  for t in ties {
    guard let source = m.initializers.first(where: { $0.name == t.name }) else { continue }
    var added: Set<String> = []
    for r in t.copies {
      if added.insert(r.copy).inserted {
        var copy = source
        copy.name = r.copy
        m.initializers.append(copy)
      }
      m.nodes[r.node].inputs[r.input] = r.copy
    }
  }
}

/// Warnings about trainable parameters an export has changed the meaning of, one line each.
///
/// - A parameter added to attention scores (the input of a softmax, through views and
///   broadcasts only) with no gather on the way is a dense bias: Swin's and BEiT's
///   relative-position bias is a small table gathered by a fixed index, and an export that
///   folds the gather leaves `[1, heads, N, N]` that then trains every entry on its own.
/// - A rank-1 bias of a projection whose middle third is exactly zero and whose outer thirds
///   are not is BEiT's and EVA's `cat(q_bias, zeros, v_bias)` folded into one tensor: the zero
///   k bias, fixed in PyTorch, would train.
func artefactWarnings(_ g: Graph) -> [String] {
  let producer = g.producerIndex()
  let params = Dictionary(uniqueKeysWithValues: g.params.map { ($0.value, $0) })
  var out: [String] = []
  var reported: Set<String> = []

  /// The trainable parameter `v` is, through views and broadcasts; nil if a gather or any
  /// computation is on the way.
  func denseParam(_ v: ValueID) -> Param? {
    var v = v
    while true {
      if let p = params[v] { return p.trainable ? p : nil }
      guard let i = producer[v] else { return nil }
      let n = g.nodes[i]
      switch n.op {
      case .reshape, .squeeze, .unsqueeze, .expand, .transpose, .stopGradient: v = n.inputs[0]
      default: return nil
      }
    }
  }
  for n in g.nodes {
    guard case .softmax = n.op else { continue }
    // Walk the chain of additions into the softmax (bias, then a shifted-window mask, …).
    var frontier = [n.inputs[0]]
    var steps = 0
    while let v = frontier.popLast(), steps < 8 {
      steps += 1
      guard let i = producer[v] else { continue }
      let a = g.nodes[i]
      switch a.op {
      case .add:
        for x in a.inputs {
          if let p = denseParam(x), reported.insert(p.name).inserted {
            out.append(
              "warning: @\(p.name) \(g.type(of: p.value)) is added to the attention scores of '\(n.name.isEmpty ? a.name : n.name)' and trains as a free parameter, every entry on its own; if the model gathers it from a relative-position table, the export folded that lookup: export without constant folding (models/export_for_training.py)"
            )
          } else {
            frontier.append(x)
          }
        }
      case .reshape, .squeeze, .unsqueeze: frontier.append(a.inputs[0])
      default: continue
      }
    }
  }
  func isProduct(_ v: ValueID) -> Bool {
    guard let j = producer[v] else { return false }
    switch g.nodes[j].op {
    case .matMul, .gemm, .linear: return true
    default: return false
    }
  }
  for n in g.nodes {
    let biasOperands: [ValueID]
    switch n.op {
    case .add where n.inputs.contains(where: isProduct): biasOperands = n.inputs  // x·W + b
    case .gemm, .linear: biasOperands = n.inputs.count > 2 ? [n.inputs[2]] : []
    default: continue
    }
    for b in biasOperands {
      guard let p = denseParam(b), g.type(of: p.value).rank == 1, let data = p.data, !reported.contains(p.name) else { continue }
      let count = g.type(of: p.value).elementCount
      guard count >= 3, count % 3 == 0, g.type(of: p.value).dtype == .f32, data.count == count * 4 else { continue }
      let raw = data.buffer
      func f(_ k: Int) -> Float { raw.loadUnaligned(fromByteOffset: 4 * k, as: Float.self) }
      let third = count / 3
      let kZero = (third..<(2 * third)).allSatisfy { f($0) == 0 }
      let qAny = (0..<third).contains { f($0) != 0 }, vAny = ((2 * third)..<count).contains { f($0) != 0 }
      if kZero && qAny && vAny {
        reported.insert(p.name)
        out.append(
          "warning: @\(p.name) looks like q, k and v biases concatenated around a zero k bias (BEiT, EVA): the export folded the concatenation, so the k part, fixed at zero in PyTorch, will train; export without constant folding (models/export_for_training.py)"
        )
      }
    }
  }
  return out
}
