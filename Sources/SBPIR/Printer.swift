// Printer.swift: the deterministic text form of a graph, one node per line.

extension Graph {
  /// Prints the graph. Values are renumbered %0, %1, … in definition order and attributes are
  /// sorted by key, so equal graphs print byte-identical text and the parser reads it back.
  public func printed() -> String {
    var num: [ValueID: String] = [:]
    var next = 0
    func fresh(_ v: ValueID) -> String {
      let s = "%\(next)"
      next += 1
      num[v] = s
      return s
    }
    for p in params { num[p.value] = "@" + quoteSymbol(p.name) }
    func ref(_ v: ValueID) -> String { num[v] ?? "%<undefined \(v.raw)>" }
    func loc(_ s: String) -> String { s.isEmpty ? "" : " loc(\(quoteString(s)))" }

    var out = "graph @\(quoteSymbol(name)) {\n"
    for i in inputs { out += "  input \(fresh(i.value)) : \(type(of: i.value))\(loc(i.name))\n" }
    for p in params { out += "  \(p.trainable ? "param" : "const") @\(quoteSymbol(p.name)) : \(type(of: p.value))\n" }
    for n in nodes {
      let results = n.outputs.map(fresh).joined(separator: ", ")
      var attrs = n.op.attributes.map { ($0.key, $0.value) }.sorted { $0.0 < $1.0 }
      attrs += n.attrs.map { ($0.key, $0.value) }.sorted { $0.0 < $1.0 }
      let attrText = attrs.isEmpty ? "" : " {" + attrs.map { "\(quoteKey($0.0))=\($0.1)" }.joined(separator: ", ") + "}"
      let types = n.outputs.map { type(of: $0).description }.joined(separator: ", ")
      out += "  \(results) = \(n.op.name)(\(n.inputs.map(ref).joined(separator: ", ")))\(attrText) : \(types)\(loc(n.name))\n"
    }
    for o in outputs { out += "  output \(ref(o.value))\(loc(o.name))\n" }
    return out + "}\n"
  }
}

func isBareSymbol(_ s: String) -> Bool {
  !s.isEmpty
    && s.unicodeScalars.allSatisfy {
      ("0"..."9").contains($0) || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || $0 == "_" || $0 == "."
    }
}

/// Symbols made of letters, digits, '_' and '.' print bare; anything else is quoted.
func quoteSymbol(_ s: String) -> String { isBareSymbol(s) ? s : quoteString(s) }

/// Attribute keys print bare when they can (`sbp.role`), quoted otherwise.
func quoteKey(_ s: String) -> String { isBareSymbol(s) && !s.first!.isNumber ? s : quoteString(s) }
