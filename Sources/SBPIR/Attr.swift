// Attr.swift: attribute values, used both for op payloads in the text form and for pass annotations.

/// An attribute value. Passes annotate nodes with these (`sbp.role = "mlp.fc1"`) instead of side tables.
public enum AttrValue: Sendable, Hashable, CustomStringConvertible {
  case int(Int)
  case float(Double)
  case string(String)
  case ints([Int])
  case floats([Double])

  public var description: String {
    switch self {
    case .int(let v): return String(v)
    case .float(let v): return formatFloat(v)
    case .string(let s): return quoteString(s)
    case .ints(let v): return "[" + v.map(String.init).joined(separator: ",") + "]"
    case .floats(let v): return "[" + v.map(formatFloat).joined(separator: ",") + "]"
    }
  }
}

/// Prints a double so that it always reads back as a float (has a '.', 'e', or is inf/nan).
func formatFloat(_ v: Double) -> String {
  if v.isNaN { return "nan" }
  if v.isInfinite { return v < 0 ? "-inf" : "inf" }
  // Values that are exactly a Float (most ONNX attributes and f32 literals) print in Float's
  // shortest form, so 1e-6 reads as 1e-06 rather than its double expansion.
  let f = Float(v)
  let s = Double(f) == v ? f.description : v.description
  return s.contains(".") || s.contains("e") ? s : s + ".0"
}

/// Quotes a string with the escapes the parser understands.
func quoteString(_ s: String) -> String {
  var out = "\""
  for c in s.unicodeScalars {
    switch c {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case "\t": out += "\\t"
    default:
      if c.value < 0x20 { out += "\\u{\(String(c.value, radix: 16))}" } else { out.unicodeScalars.append(c) }
    }
  }
  return out + "\""
}

/// Attribute dictionary with typed accessors; the error names the missing or mistyped key.
public struct AttrDict: Sendable {
  public var entries: [String: AttrValue]
  let context: String

  public init(_ entries: [String: AttrValue], context: String) {
    self.entries = entries
    self.context = context
  }

  public func int(_ k: String) throws -> Int {
    guard case .int(let v)? = entries[k] else { throw IRError.attribute("\(context): expected integer attribute '\(k)'") }
    return v
  }
  public func float(_ k: String) throws -> Double {
    switch entries[k] {
    case .float(let v)?: return v
    case .int(let v)?: return Double(v)
    default: throw IRError.attribute("\(context): expected float attribute '\(k)'")
    }
  }
  public func string(_ k: String) throws -> String {
    guard case .string(let v)? = entries[k] else { throw IRError.attribute("\(context): expected string attribute '\(k)'") }
    return v
  }
  public func ints(_ k: String) throws -> [Int] {
    switch entries[k] {
    case .ints(let v)?: return v
    case .floats(let v)? where v.isEmpty: return []
    default: throw IRError.attribute("\(context): expected integer list attribute '\(k)'")
    }
  }
  public func floats(_ k: String) throws -> [Double] {
    switch entries[k] {
    case .floats(let v)?: return v
    case .ints(let v)?: return v.map(Double.init)
    default: throw IRError.attribute("\(context): expected float list attribute '\(k)'")
    }
  }
}

/// Errors raised by the IR: parse, attribute, type and verification failures.
public enum IRError: Error, CustomStringConvertible, Equatable {
  case parse(line: Int, String)
  case attribute(String)
  case type(String)
  case verify(String)

  public var description: String {
    switch self {
    case .parse(let line, let m): return "line \(line): \(m)"
    case .attribute(let m), .type(let m), .verify(let m): return m
    }
  }
}
