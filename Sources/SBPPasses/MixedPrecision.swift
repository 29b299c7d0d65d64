// MixedPrecision.swift: bf16 operands for the step's products (compile --precision bf16), with explicit casts.
import SBPIR

/// The precision a training step computes its products in.
public enum Precision: String, Sendable, CaseIterable {
  case fp32, bf16
}

/// The mixed-precision pass. With `.bf16`, every product of the step (matmul, linear, gemm,
/// and the backward's linear weight gradients) reads bf16 operands and accumulates in fp32;
/// everything else stays fp32: norms, softmax, the loss, reductions, elementwise ops, the
/// optimizer and the master weights.
///
/// It runs on the differentiated step, so autodiff never sees a cast:
/// - A forward activation that a backward product reads gets one explicit `cast` to bf16,
///   right after the node that makes it, and every product reading it, forward or backward,
///   reads that cast. So the copy the backward keeps for its products is bf16, and the fp32
///   value dies once nothing else reads it (a softmax's output stays for its gradient too).
/// - A transpose of the last two axes read only by products (a view the BLAS flag reads, as
///   the backward's transposes of q, k, v and the attention are) is redone on the cast, so
///   it stays a view and the value it reads is the bf16 copy.
/// - Every other operand (a weight, the loss's gradient dy, a value made and read within the
///   forward or within the backward) is rounded to bf16 by the product as it packs it: the
///   same numbers as a cast, without a pass over memory or a copy held across the step.
///
/// Depthwise and other convolutions stay fp32 for now; PyTorch's CPU autocast runs them in
/// bf16.
public struct MixedPrecision: Pass {
  public var precision: Precision
  public init(_ precision: Precision = .fp32) { self.precision = precision }
  public let name = "mixed-precision"
  public let summary = "bf16 operands for the step's products (explicit casts), fp32 accumulation and everything else fp32"

  public func run(_ graph: inout Graph) throws {
    guard precision == .bf16, let loss = graph.lossIndex else { return }
    let nodes = graph.nodes
    let producer = graph.producerIndex()
    let outputs = Set(graph.outputs.map(\.value))
    var readers: [ValueID: Set<Int>] = [:]
    for (i, n) in nodes.enumerated() { for v in n.inputs { readers[v, default: []].insert(i) } }
    var products: [ValueID: Set<Int>] = [:]
    for (i, n) in nodes.enumerated() { for slot in n.op.productOperands { products[n.inputs[slot], default: []].insert(i) } }
    /// A transpose of the last two axes whose result only matmuls read (a view the BLAS flag
    /// reads, `MemoryPlan.transposedViews`): the products read its operand through it. A
    /// linear cannot read a transposed view, so a transpose it reads is a copy, cast as such.
    func viewTranspose(_ w: ValueID) -> Int? {
      guard let t = producer[w], case .transpose(let perm) = nodes[t].op, perm.count >= 2,
        perm == Array(0..<(perm.count - 2)) + [perm.count - 1, perm.count - 2], !outputs.contains(w), readers[w] == products[w],
        readers[w]!.allSatisfy({ if case .matMul = nodes[$0].op { return true } else { return false } })
      else { return nil }
      return t
    }
    // Forward values that products read, directly or through such a transpose: the places
    // each is read from (a product, or a transpose to redo on the bf16 copy).
    var direct: [ValueID: Set<Int>] = [:], through: [ValueID: Set<Int>] = [:]
    for (w, users) in products where graph.type(of: w).dtype == .f32 {
      if let t = viewTranspose(w) {
        let v = nodes[t].inputs[0]
        if let p = producer[v], p < loss, graph.type(of: v).dtype == .f32 { through[v, default: []].insert(t) }
      } else if let p = producer[w], p < loss {
        direct[w, default: []].formUnion(users)
      }
    }
    // Only values a backward product reads: the copy the step keeps is then bf16.
    let kept = Set(direct.keys).union(through.keys).filter { v in
      (direct[v] ?? []).contains { $0 > loss } || (through[v] ?? []).contains { t in t > loss || products[nodes[t].outputs[0]]!.contains { $0 > loss } }
    }
    var inserts: [(before: Int, node: Node)] = []
    for v in kept.sorted(by: { $0.raw < $1.raw }) {
      let p = producer[v]!, from = nodes[p]
      let c = graph.newValue(TensorType(.bf16, graph.type(of: v).shape))
      var attrs: [String: AttrValue] = [:]
      for key in [Annotation.block, Annotation.stage] { attrs[key] = from.attrs[key] }
      inserts.append((p + 1, Node(op: .cast(.bf16), inputs: [v], outputs: [c], name: from.name + ".bf16", attrs: attrs)))
      for i in direct[v] ?? [] { graph.replaceUses(of: v, with: c, inNode: i) }
      // The transpose is redone on the copy, where it stood, and stays a view.
      for t in (through[v] ?? []).sorted() {
        let old = nodes[t].outputs[0], u = graph.newValue(TensorType(.bf16, graph.type(of: old).shape))
        inserts.append((t + 1, Node(op: nodes[t].op, inputs: [c], outputs: [u], name: nodes[t].name + ".bf16", attrs: nodes[t].attrs)))
        for i in products[old]! { graph.replaceUses(of: old, with: u, inNode: i) }
      }
    }
    // Every product rounds its operands to bf16, cast or not.
    for i in graph.nodes.indices where !graph.nodes[i].op.productOperands.isEmpty {
      graph.annotate(node: i, Annotation.precision, .string("bf16"))
    }
    try graph.insert(inserts)
    graph.eliminateDeadCode()
    try keepNormalizedInBF16(&graph)
    try keepSavedInBF16(&graph)
  }

  /// A layer norm's backward reads its input x (the gradient, and `remat`'s recomputation of
  /// the norm's result), and x is often the fp32 residual stream, held across the step. When
  /// nothing else in the backward reads x, the forward norm becomes `layer_norm_saving`, which
  /// also writes x̂ in bf16 and 1/σ per row; the gradient and the recomputation read those,
  /// and x dies in the forward. That halves what a norm keeps, where autocast keeps x in
  /// fp32; the gradient is computed in fp32 as before, from x̂ rounded to bf16.
  func keepNormalizedInBF16(_ graph: inout Graph) throws {
    guard let loss = graph.lossIndex else { return }
    let nodes = graph.nodes
    let outputs = Set(graph.outputs.map(\.value))
    var backward: [ValueID: [Int]] = [:]
    for i in (loss + 1)..<nodes.count { for v in Set(nodes[i].inputs) { backward[v, default: []].append(i) } }
    let producer = graph.producerIndex()
    var inserts: [(before: Int, node: Node)] = []
    for f in 0..<loss {
      let norm = nodes[f]
      guard case .layerNorm(let axis, let eps) = norm.op else { continue }
      let x = norm.inputs[0], params = Array(norm.inputs.dropFirst()), shape = graph.type(of: x).shape
      // A graph input or parameter is held for the whole step anyway; x̂ would only add to it.
      guard producer[x] != nil, graph.type(of: x).dtype == .f32, !outputs.contains(x), !params.contains(x), let users = backward[x]
      else { continue }
      // Only this norm's own gradient and recomputation read x; any other reader keeps it.
      let grads = users.filter { nodes[$0].op == .layerNormGrad(axis: axis, epsilon: eps) }
      let redone = users.filter { nodes[$0].op == norm.op && Array(nodes[$0].inputs.dropFirst()) == params }
      guard !grads.isEmpty, grads.count + redone.count == users.count,
        grads.allSatisfy({ nodes[$0].inputs.count == 3 && nodes[$0].inputs[0] == x && nodes[$0].inputs[1] == params[0] && nodes[$0].inputs[2] != x }),
        redone.allSatisfy({ nodes[$0].inputs[0] == x })
      else { continue }
      let y = graph.newValue(graph.type(of: norm.outputs[0]))
      let xhat = graph.newValue(TensorType(.bf16, shape)), rstd = graph.newValue(TensorType(.f32, Array(shape[..<axis])))
      inserts.append((f + 1, Node(op: .layerNormSaving(axis: axis, epsilon: eps), inputs: norm.inputs, outputs: [y, xhat, rstd], name: norm.name, attrs: norm.attrs)))
      graph.replaceUses(of: norm.outputs[0], with: y)
      for g in grads {
        let old = nodes[g], outs = old.outputs.map { graph.newValue(graph.type(of: $0)) }
        inserts.append((g, Node(op: old.op, inputs: [xhat, old.inputs[1], old.inputs[2], rstd], outputs: outs, name: old.name, attrs: old.attrs)))
        for (o, n) in zip(old.outputs, outs) { graph.replaceUses(of: o, with: n) }
      }
      for r in redone {
        let old = nodes[r], out = graph.newValue(graph.type(of: old.outputs[0]))
        inserts.append((r, Node(op: .layerNormAffine(axis: axis), inputs: [xhat] + params, outputs: [out], name: old.name, attrs: old.attrs)))
        graph.replaceUses(of: old.outputs[0], with: out)
      }
    }
    try graph.insert(inserts)
    graph.eliminateDeadCode()
  }

  /// The second half: a forward value that other backward ops read (an activation's input, a
  /// softmax's output, a norm's input) is kept in bf16 where PyTorch's CPU autocast would hold
  /// it in bf16 (`Op.autocast`: a product's result, and what is computed from such results
  /// without an fp32 operand), so the step keeps one bf16 copy of it, as autocast does. The
  /// forward still computes it in fp32; the backward reads an fp32 copy cast back just before
  /// its readers, which lives only while they run. The residual stream and anything
  /// a loss reads stay fp32, as under autocast.
  func keepSavedInBF16(_ graph: inout Graph) throws {
    guard let loss = graph.lossIndex else { return }
    let nodes = graph.nodes
    // Each forward value's precision under autocast; parameters and the data are fp32.
    enum Held { case low, high, literal }
    var held: [ValueID: Held] = [:]
    func precision(_ v: ValueID) -> Held {
      let t = graph.type(of: v)
      guard t.dtype == .f32 || t.dtype == .bf16 else { return .literal }
      return t.elementCount <= 1 ? .literal : held[v] ?? .high
    }
    for n in nodes[..<loss] {
      let result: Held
      switch n.op.autocast {
      case .lower: result = .low
      case .float32: result = .high
      case .literal: result = .literal
      case .followsInput:
        held[n.outputs[0]] = precision(n.inputs[0])
        continue
      case .promote:
        let data = n.inputs.map(precision).filter { $0 != .literal }
        result = data.isEmpty ? .literal : data.allSatisfy { $0 == .low } ? .low : .high
      }
      for o in n.outputs { held[o] = result }
    }
    let low = Set(held.filter { $0.value == .low }.keys)
    let producer = graph.producerIndex()
    // BatchNorm's backward reads its input with the statistics the forward computed from the
    // fp32 input; a rounded input would no longer have that mean and variance, and its
    // gradient would drift (autocast's BatchNorm takes both from the same bf16 input).
    let statistics = nodes[(loss + 1)...].filter { if case .batchNormGrad = $0.op { return true } else { return false } }.map { $0.inputs[0] }
    let excluded = Set(graph.outputs.map(\.value)).union(nodes[loss].inputs).union(statistics)
    var castOf: [ValueID: ValueID] = [:]
    for n in nodes[..<loss] {
      if case .cast(.bf16) = n.op, graph.type(of: n.inputs[0]).dtype == .f32 { castOf[n.inputs[0]] = n.outputs[0] }
    }
    var readers: [ValueID: [Int]] = [:]
    for i in (loss + 1)..<nodes.count {
      for v in Set(nodes[i].inputs) where low.contains(v) && !excluded.contains(v) && graph.type(of: v).dtype == .f32 {
        readers[v, default: []].append(i)
      }
    }
    var inserts: [(before: Int, node: Node)] = []
    func annotations(_ n: Node) -> [String: AttrValue] {
      var attrs: [String: AttrValue] = [:]
      for key in [Annotation.block, Annotation.stage] { attrs[key] = n.attrs[key] }
      return attrs
    }
    for (v, users) in readers.sorted(by: { $0.key.raw < $1.key.raw }) {
      let from = nodes[producer[v]!], shape = graph.type(of: v).shape
      let c: ValueID
      if let existing = castOf[v] {
        c = existing
      } else {
        c = graph.newValue(TensorType(.bf16, shape))
        inserts.append((producer[v]! + 1, Node(op: .cast(.bf16), inputs: [v], outputs: [c], name: from.name + ".bf16", attrs: annotations(from))))
      }
      // One copy for all of them, so a recomputed gelu and its gelu_grad still read one value
      // and run as one kernel; `schedule` runs the cast when its first reader can run.
      let r = graph.newValue(TensorType(.f32, shape))
      inserts.append((users[0], Node(op: .cast(.f32), inputs: [c], outputs: [r], name: from.name + ".f32", attrs: annotations(nodes[users[0]]))))
      for i in users { graph.replaceUses(of: v, with: r, inNode: i) }
    }
    try graph.insert(inserts)
  }
}
