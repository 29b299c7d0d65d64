// Parser.swift: reads the text form back into a graph, checking every type on the way.

/// Parses the text IR. Errors carry the 1-based line number of the offending line.
/// Lines starting with `//` (RUN and CHECK lines of golden cases) are comments.
public func parseGraph(_ text: String) throws -> Graph {
  var p = IRParser()
  return try p.parse(text)
}

private enum Token: Equatable {
  case word(String)  // identifiers, keywords, numbers
  case local(String)  // %name
  case symbol(String)  // @name
  case string(String)
  case punct(Character)
}

private struct IRParser {
  var graph = Graph(name: "")
  var locals: [String: ValueID] = [:]
  var symbols: [String: ValueID] = [:]
  var line = 0

  func fail(_ m: String) -> IRError { .parse(line: line, m) }

  func trimmed(_ s: Substring) -> Substring {
    let ws: Set<Character> = [" ", "\t", "\r"]
    guard let a = s.firstIndex(where: { !ws.contains($0) }), let b = s.lastIndex(where: { !ws.contains($0) }) else { return "" }
    return s[a...b]
  }

  mutating func parse(_ text: String) throws -> Graph {
    var opened = false, closed = false
    var lastLine = 1
    // Split on the scalar "\n": as Characters, "\r\n" (or "\n" plus a combining mark) is one unit.
    for raw in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map(Substring.init) {
      line += 1
      let s = trimmed(raw)
      if s.isEmpty || s.hasPrefix("//") { continue }
      lastLine = line
      guard !closed else { throw fail("text after the closing '}'") }
      var toks = try tokenize(s)[...]
      if !opened {
        guard case .word("graph")? = toks.popFirst(), case .symbol(let n)? = toks.popFirst(),
          case .punct("{")? = toks.popFirst(), toks.isEmpty
        else { throw fail("expected 'graph @name {'") }
        graph.name = n
        opened = true
        continue
      }
      if toks == [.punct("}")] {
        closed = true
        continue
      }
      try parseLine(&toks)
    }
    guard opened else { throw IRError.parse(line: lastLine, "no 'graph @name {' found") }
    guard closed else { throw IRError.parse(line: lastLine, "missing closing '}'") }
    return graph
  }

  mutating func parseLine(_ t: inout ArraySlice<Token>) throws {
    switch t.first {
    case .word("input")?:
      t.removeFirst()
      guard case .local(let n)? = t.popFirst() else { throw fail("expected %name after 'input'") }
      try expect(&t, ":")
      let ty = try parseType(&t)
      let loc = try parseLoc(&t)
      try end(t)
      guard locals[n] == nil else { throw fail("%\(n) is defined twice") }
      locals[n] = graph.addInput(loc ?? n, ty)
    case .word("param")?, .word("const")?:
      let trainable = t.removeFirst() == .word("param")
      guard case .symbol(let n)? = t.popFirst() else { throw fail("expected @name") }
      try expect(&t, ":")
      let ty = try parseType(&t)
      try end(t)
      guard symbols[n] == nil else { throw fail("@\(n) is declared twice") }
      symbols[n] = graph.addParam(n, ty, trainable: trainable, data: nil)
    case .word("output")?:
      t.removeFirst()
      let v = try parseOperand(&t)
      let loc = try parseLoc(&t)
      try end(t)
      graph.outputs.append(GraphInput(value: v, name: loc ?? ""))
    case .local?:
      try parseNode(&t)
    default:
      throw fail("expected 'input', 'param', 'const', 'output', a node '%x = op(...)' or '}'")
    }
  }

  mutating func parseNode(_ t: inout ArraySlice<Token>) throws {
    var results: [String] = []
    while case .local(let n)? = t.first {
      t.removeFirst()
      results.append(n)
      if t.first == .punct(",") { t.removeFirst() } else { break }
    }
    try expect(&t, "=")
    guard case .word(let opName)? = t.popFirst() else { throw fail("expected an op name after '='") }
    guard Op.allNames.contains(opName) else { throw fail("unknown op '\(opName)'") }
    try expect(&t, "(")
    var operands: [ValueID] = []
    if t.first != .punct(")") {
      while true {
        operands.append(try parseOperand(&t))
        if t.first == .punct(",") { t.removeFirst() } else { break }
      }
    }
    try expect(&t, ")")
    var attrs: [String: AttrValue] = [:]
    if t.first == .punct("{") {
      t.removeFirst()
      while t.first != .punct("}") {
        let key: String
        switch t.popFirst() {
        case .word(let k)?: key = k
        case .string(let k)?: key = k
        default: throw fail("expected an attribute name")
        }
        try expect(&t, "=")
        guard attrs[key] == nil else { throw fail("attribute '\(key)' given twice") }
        attrs[key] = try parseAttr(&t)
        if t.first == .punct(",") { t.removeFirst() } else if t.first != .punct("}") { throw fail("expected ',' or '}' in attributes") }
      }
      t.removeFirst()
    }
    try expect(&t, ":")
    var types = [try parseType(&t)]
    while t.first == .punct(",") {
      t.removeFirst()
      types.append(try parseType(&t))
    }
    let name = try parseLoc(&t) ?? ""
    try end(t)
    guard types.count == results.count else { throw fail("\(results.count) results but \(types.count) types") }

    // Annotations carry a '.' in their key (sbp.role); everything else is the op's payload.
    let payload = attrs.filter { !$0.key.contains(".") }
    let annotations = attrs.filter { $0.key.contains(".") }
    let op: Op
    do {
      op = try Op(name: opName, attributes: AttrDict(payload, context: opName), resultType: types.first)
    } catch let e as IRError { throw fail(e.description) }
    let known = Set(op.attributes.keys)
    if let extra = payload.keys.sorted().first(where: { !known.contains($0) }) {
      throw fail("\(opName) has no attribute '\(extra)'")
    }
    let inferred: [TensorType]
    do { inferred = try op.inferTypes(operands.map { graph.type(of: $0) }) } catch let e as IRError { throw fail(e.description) }
    guard inferred == types else {
      throw fail(
        "declared type \(types.map(\.description).joined(separator: ", ")) but \(opName) gives \(inferred.map(\.description).joined(separator: ", "))"
      )
    }
    var outs: [ValueID] = []
    for (n, ty) in zip(results, types) {
      guard locals[n] == nil else { throw fail("%\(n) is defined twice") }
      let v = graph.newValue(ty)
      locals[n] = v
      outs.append(v)
    }
    graph.nodes.append(Node(op: op, inputs: operands, outputs: outs, name: name, attrs: annotations))
  }

  func parseOperand(_ t: inout ArraySlice<Token>) throws -> ValueID {
    switch t.popFirst() {
    case .local(let n)?:
      guard let v = locals[n] else { throw fail("%\(n) is used before it is defined") }
      return v
    case .symbol(let n)?:
      guard let v = symbols[n] else { throw fail("@\(n) is not declared") }
      return v
    default: throw fail("expected an operand (%value or @param)")
    }
  }

  func parseType(_ t: inout ArraySlice<Token>) throws -> TensorType {
    guard case .word(let d)? = t.popFirst(), let dt = DType(rawValue: d) else {
      throw fail("expected a type like f32[2,3]")
    }
    try expect(&t, "[")
    var dims: [Int] = []
    while t.first != .punct("]") {
      guard case .word(let w)? = t.popFirst(), let n = Int(w), n >= 0 else { throw fail("expected a dimension in type") }
      dims.append(n)
      if t.first == .punct(",") { t.removeFirst() } else if t.first != .punct("]") { throw fail("expected ',' or ']' in type") }
    }
    t.removeFirst()
    guard checkedElementCount(dims) != nil else { throw fail("type \(d)\(dims) is too large") }
    return TensorType(dt, dims)
  }

  func parseAttr(_ t: inout ArraySlice<Token>) throws -> AttrValue {
    switch t.popFirst() {
    case .string(let s)?: return .string(s)
    case .word(let w)?:
      if let i = Int(w) { return .int(i) }
      if let f = parseDouble(w) { return .float(f) }
      throw fail("bad attribute value '\(w)'")
    case .punct("[")?:
      var words: [String] = []
      while t.first != .punct("]") {
        guard case .word(let w)? = t.popFirst() else { throw fail("expected a number in list") }
        words.append(w)
        if t.first == .punct(",") { t.removeFirst() } else if t.first != .punct("]") { throw fail("expected ',' or ']' in list") }
      }
      t.removeFirst()
      if words.allSatisfy({ Int($0) != nil }) && !words.contains(where: { $0.contains(".") }) {
        return .ints(words.map { Int($0)! })
      }
      let fs = words.compactMap(parseDouble)
      guard fs.count == words.count else { throw fail("bad number in list") }
      return .floats(fs)
    default: throw fail("expected an attribute value")
    }
  }

  func parseDouble(_ w: String) -> Double? {
    switch w {
    case "inf": return .infinity
    case "-inf": return -.infinity
    case "nan": return .nan
    default: return Double(w)
    }
  }

  func parseLoc(_ t: inout ArraySlice<Token>) throws -> String? {
    guard t.first == .word("loc") else { return nil }
    t.removeFirst()
    try expect(&t, "(")
    guard case .string(let s)? = t.popFirst() else { throw fail("expected a string in loc(...)") }
    try expect(&t, ")")
    return s
  }

  func expect(_ t: inout ArraySlice<Token>, _ c: Character) throws {
    guard t.popFirst() == .punct(c) else { throw fail("expected '\(c)'") }
  }

  func end(_ t: ArraySlice<Token>) throws {
    guard t.isEmpty else { throw fail("unexpected text at end of line") }
  }

  /// Splits a line into tokens. It works on Unicode scalars, not Characters: a combining mark
  /// after a quote or brace would otherwise merge with it into one grapheme and hide it.
  func tokenize(_ line: Substring) throws -> [Token] {
    let s = Array(line.unicodeScalars)
    var out: [Token] = []
    var i = 0
    func isWord(_ c: Unicode.Scalar) -> Bool {
      c.properties.isAlphabetic || c.properties.numericType != nil || c == "_" || c == "." || c == "-" || c == "+"
    }
    func word(from start: Int) -> (String, Int) {
      var j = start
      while j < s.count, isWord(s[j]) { j += 1 }
      var w = String.UnicodeScalarView()
      w.append(contentsOf: s[start..<j])
      return (String(w), j)
    }
    while i < s.count {
      let c = s[i]
      if c == " " || c == "\t" {
        i += 1
      } else if "(){}[],=:".unicodeScalars.contains(c) {
        out.append(.punct(Character(c)))
        i += 1
      } else if c == "\"" {
        let (str, next) = try readString(s, from: i)
        out.append(.string(str))
        i = next
      } else if c == "%" || c == "@" {
        var name: String
        if i + 1 < s.count, s[i + 1] == "\"" {
          (name, i) = try readString(s, from: i + 1)
        } else {
          (name, i) = word(from: i + 1)
        }
        guard !name.isEmpty else { throw fail("empty name after '\(c)'") }
        out.append(c == "%" ? .local(name) : .symbol(name))
      } else if isWord(c) {
        let (w, next) = word(from: i)
        out.append(.word(w))
        i = next
      } else {
        throw fail("unexpected character '\(c.escaped(asASCII: true))'")
      }
    }
    return out
  }

  /// Reads the quoted string starting at `s[q]`; returns it and the index after the closing quote.
  func readString(_ s: [Unicode.Scalar], from q: Int) throws -> (String, Int) {
    var i = q + 1
    var out = String.UnicodeScalarView()
    while i < s.count {
      let c = s[i]
      if c == "\"" { return (String(out), i + 1) }
      if c == "\\" {
        i += 1
        guard i < s.count else { break }
        switch s[i] {
        case "n": out.append("\n")
        case "t": out.append("\t")
        case "\"": out.append("\"")
        case "\\": out.append("\\")
        case "u":
          // \u{hex}
          guard i + 1 < s.count, s[i + 1] == "{", let close = s[(i + 1)...].firstIndex(of: "}") else {
            throw fail("bad \\u escape in string")
          }
          var hex = String.UnicodeScalarView()
          hex.append(contentsOf: s[(i + 2)..<close])
          guard let v = UInt32(String(hex), radix: 16), let sc = Unicode.Scalar(v) else { throw fail("bad \\u escape in string") }
          out.append(sc)
          i = close
        default: throw fail("unknown escape '\\\(s[i])' in string")
        }
        i += 1
      } else {
        out.append(c)
        i += 1
      }
    }
    throw fail("unterminated string")
  }
}
