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
    /// A transpose of the last two axes whose result only products read (a view the BLAS
    /// flag reads): the products read its operand through it.
    func viewTranspose(_ w: ValueID) -> Int? {
      guard let t = producer[w], case .transpose(let perm) = nodes[t].op, perm.count >= 2,
        perm == Array(0..<(perm.count - 2)) + [perm.count - 1, perm.count - 2], !outputs.contains(w), readers[w] == products[w]
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
  }
}
