// Verifier.swift: structural and type checks that every pass must preserve.

extension Graph {
  /// Checks SSA form, definition before use, parameter names, and that every node's result
  /// types equal what shape inference gives. Throws `IRError.verify` naming the first problem.
  public func verify() throws {
    var defined = Set<ValueID>()
    func define(_ v: ValueID, _ what: String) throws {
      guard v.raw >= 0, v.raw < types.count else { throw IRError.verify("\(what) uses unknown value \(v)") }
      guard defined.insert(v).inserted else { throw IRError.verify("\(what) redefines \(v)") }
    }
    for i in inputs { try define(i.value, "input '\(i.name)'") }
    var names = Set<String>()
    for p in params {
      try define(p.value, "param @\(p.name)")
      guard names.insert(p.name).inserted else { throw IRError.verify("param @\(p.name) is declared twice") }
      if let d = p.data, d.count != type(of: p.value).byteCount {
        throw IRError.verify("param @\(p.name) holds \(d.count) bytes, its type \(type(of: p.value)) needs \(type(of: p.value).byteCount)")
      }
    }
    for n in nodes {
      let what = "node '\(n.name)' (\(n.op.name))"
      for v in n.inputs where !defined.contains(v) {
        throw IRError.verify("\(what) reads \(v) before it is defined")
      }
      let expected: [TensorType]
      do { expected = try n.op.inferTypes(n.inputs.map { type(of: $0) }) } catch let e as IRError {
        throw IRError.verify("\(what): \(e.description)")
      }
      guard expected == n.outputs.map({ type(of: $0) }) else {
        throw IRError.verify("\(what) declares \(n.outputs.map { type(of: $0).description }) but infers \(expected.map(\.description))")
      }
      for o in n.outputs { try define(o, what) }
    }
    for o in outputs where !defined.contains(o.value) {
      throw IRError.verify("output '\(o.name)' is not defined")
    }
  }
}
