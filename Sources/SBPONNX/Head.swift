// Head.swift: replaces a model's classifier with a fresh N-way layer (`--num-classes`), before import.
import Glibc
import SBPIR

/// The classifier `replaceHead` found and replaced.
public struct ReplacedHead: Sendable {
  /// The ONNX node of the classifier and its weight and bias initializers.
  public var node: String
  public var weight: String
  public var bias: String?
  public var oldClasses: Int
  public var classes: Int
  /// Each replaced initializer's new shape (what `sbpc export` writes).
  public var shapes: [String: [Int]]
}

/// How a new head starts: timm's `trunc_normal_(std=.02)` for the weight (a normal with
/// σ 0.02, redrawn outside ±2σ) and zeros for the bias, from a SplitMix64 seeded by `seed`.
/// The same file, class count and seed give the same head, which is how a plan finds its
/// weights again.
func freshHeadWeights(count: Int, seed: UInt64) -> [Float] {
  var rng = SplitMix64(seed: seed ^ 0x4845_4144_5345_4544)  // "HEADSEED"
  var out: [Float] = []
  out.reserveCapacity(count)
  while out.count < count {
    // Box–Muller from two uniforms in (0, 1].
    let u1 = Double(rng.next() >> 11 + 1) / Double(1 << 53), u2 = Double(rng.next() >> 11) / Double(1 << 53)
    let z = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    if abs(z) <= 2 { out.append(Float(0.02 * z)) }
  }
  return out
}

/// Finds the classifier, the last Gemm, MatMul or 1×1 Conv with an initializer weight on the
/// way back from the first graph output through reshapes, flattens, squeezes, identities and
/// a bias Add, and gives it `classes` outputs: new weight and bias initializers (same names,
/// new shapes) and the output's declared size. Throws one line when there is none.
func replaceHead(_ m: inout OModel, classes: Int, seed: UInt64, path: String) throws -> ReplacedHead {
  func fail(_ s: String) -> ImportError { ImportError("\(path): --num-classes: \(s)") }
  guard let output = m.outputs.first else { throw fail("the model has no output") }
  var producer: [String: Int] = [:]
  for (i, n) in m.nodes.enumerated() { for o in n.outputs { producer[o] = i } }
  let initializer = Dictionary(m.initializers.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
  var v = output.name
  var biasAdd: (node: Int, input: Int)?
  var walked: [String] = []
  while true {
    guard let i = producer[v] else { throw fail("no linear or 1×1 convolution with a weight initializer feeds '\(output.name)'") }
    let n = m.nodes[i]
    walked.append(n.opType)
    switch n.opType {
    case "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze":
      v = n.inputs[0]
      continue
    case "Add" where biasAdd == nil:
      // x·W + b written as two nodes: the operand that is an initializer is the bias.
      guard let k = n.inputs.firstIndex(where: { initializer[$0] != nil }) else { break }
      biasAdd = (i, k)
      v = n.inputs[1 - k]
      continue
    default: break
    }
    // The weight: an initializer, or the transpose of one (dynamo writes x·Wᵀ that way).
    func weight(_ name: String) -> (index: Int, transposed: Bool)? {
      if let w = initializer[name] { return (w, false) }
      if let p = producer[name], m.nodes[p].opType == "Transpose", let w = initializer[m.nodes[p].inputs[0]] { return (w, true) }
      return nil
    }
    var w: (index: Int, transposed: Bool)
    var outAxis: Int
    var biasSlot: (node: Int, input: Int)? = biasAdd
    switch n.opType {
    case "Gemm":
      guard n.inputs.count >= 2, let found = weight(n.inputs[1]) else { throw fail("the Gemm '\(n.name)' has no initializer weight") }
      var transB = 0
      if case .int(let t)? = n.attrs["transB"] { transB = t }
      w = found
      outAxis = (transB != 0) != found.transposed ? 0 : 1
      if n.inputs.count > 2, !n.inputs[2].isEmpty { biasSlot = (i, 2) }
    case "MatMul":
      guard let found = weight(n.inputs[1]) else { throw fail("the MatMul '\(n.name)' has no initializer weight") }
      w = found
      outAxis = found.transposed ? 0 : 1
    case "Conv":
      guard let found = weight(n.inputs[1]), !found.transposed, m.initializers[found.index].dims.count == 4,
        m.initializers[found.index].dims[2...].allSatisfy({ $0 == 1 })
      else { throw fail("the classifier '\(n.name)' is a Conv that is not 1×1 with an initializer weight") }
      w = found
      outAxis = 0
      if n.inputs.count > 2, !n.inputs[2].isEmpty { biasSlot = (i, 2) }
    default:
      let through = walked.count > 1 ? " (through \(walked.dropLast().joined(separator: ", ")))" : ""
      throw fail("the output '\(output.name)' comes from \(n.opType) '\(n.name)'\(through), not a linear or 1×1 convolution")
    }
    let wt = m.initializers[w.index]
    guard wt.onnxType == 1, outAxis < wt.dims.count else { throw fail("the classifier weight '\(wt.name)' is not f32") }
    let old = wt.dims[outAxis]
    var dims = wt.dims
    dims[outAxis] = classes
    let values = freshHeadWeights(count: dims.reduce(1, *), seed: seed)
    m.initializers[w.index].dims = dims
    m.initializers[w.index].data = .bytes(values.withUnsafeBytes { TensorBytes(copying: $0) })
    var shapes = [wt.name: dims]
    var biasName: String?
    if let b = biasSlot, let bi = initializer[m.nodes[b.node].inputs[b.input]] {
      let bt = m.initializers[bi]
      guard bt.onnxType == 1, bt.dims.reduce(1, *) == old else { throw fail("the classifier bias '\(bt.name)' does not have \(old) values") }
      let bdims = bt.dims.map { $0 == old ? classes : $0 }
      m.initializers[bi].dims = bdims
      m.initializers[bi].data = .bytes([Float](repeating: 0, count: classes).withUnsafeBytes { TensorBytes(copying: $0) })
      shapes[bt.name] = bdims
      biasName = bt.name
    }
    // The declared output: its last axis was the old class count.
    if var dims = m.outputs[0].dims, let last = dims.indices.last, dims[last].value == old {
      dims[last] = ODim(value: classes, param: nil)
      m.outputs[0].dims = dims
    }
    m.valueInfo.removeAll()  // intermediate declarations after the head hold the old count
    return ReplacedHead(node: n.name, weight: wt.name, bias: biasName, oldClasses: old, classes: classes, shapes: shapes)
  }
}
