// Types.swift: element types, static tensor types and checked shape arithmetic for the IR.

/// Element type of a tensor value.
public enum DType: String, Sendable, Hashable, CaseIterable {
  case f32, f16, bf16, f64, i64, i32, i16, i8, u8, bool

  /// Bytes per element.
  public var byteSize: Int {
    switch self {
    case .f64, .i64: return 8
    case .f32, .i32: return 4
    case .f16, .bf16, .i16: return 2
    case .i8, .u8, .bool: return 1
    }
  }

  public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 || self == .f64 }
}

/// Largest element count a single tensor may have. Keeps hostile files from making us allocate
/// terabytes or overflow `Int` in byte arithmetic.
public let maxTensorElements = 1 << 34

/// A static tensor type: dtype and a fully known shape.
public struct TensorType: Sendable, Hashable, CustomStringConvertible {
  public var dtype: DType
  public var shape: [Int]

  public init(_ dtype: DType, _ shape: [Int]) {
    self.dtype = dtype
    self.shape = shape
  }

  public var rank: Int { shape.count }

  /// Element count; callers must have validated the shape (see `checkedElementCount`).
  public var elementCount: Int { shape.reduce(1, *) }
  public var byteCount: Int { elementCount * dtype.byteSize }

  public var description: String { "\(dtype.rawValue)[\(shape.map(String.init).joined(separator: ","))]" }
}

/// Element count of `shape`, or nil when a dimension is negative or the product exceeds
/// `maxTensorElements` (computed without overflow).
public func checkedElementCount(_ shape: [Int]) -> Int? {
  var n = 1
  for d in shape {
    guard d >= 0 else { return nil }
    let (p, o) = n.multipliedReportingOverflow(by: d)
    guard !o, p <= maxTensorElements else { return nil }
    n = p
  }
  return n
}

/// Row-major strides of `shape`.
public func rowMajorStrides(_ shape: [Int]) -> [Int] {
  var s = [Int](repeating: 1, count: shape.count)
  var acc = 1
  for i in shape.indices.reversed() {
    s[i] = acc
    acc *= shape[i]
  }
  return s
}

/// Normalizes a possibly negative axis against `rank`, or nil when out of range.
public func normalizeAxis(_ axis: Int, rank: Int) -> Int? {
  let a = axis < 0 ? axis + rank : axis
  return (a >= 0 && a < rank) ? a : nil
}

/// Numpy-style multidirectional broadcast of two shapes, or nil when incompatible.
public func broadcastShapes(_ a: [Int], _ b: [Int]) -> [Int]? {
  let r = max(a.count, b.count)
  var out = [Int](repeating: 1, count: r)
  for i in 0..<r {
    let da = i < r - a.count ? 1 : a[i - (r - a.count)]
    let db = i < r - b.count ? 1 : b[i - (r - b.count)]
    if da == db || db == 1 {
      out[i] = da
    } else if da == 1 {
      out[i] = db
    } else {
      return nil
    }
  }
  return out
}

/// "284 B", "20.2 MiB", "1.5 GiB".
public func byteText(_ b: Int) -> String {
  if b < 1024 { return "\(b) B" }
  let units = ["KiB", "MiB", "GiB", "TiB"]
  var v = Double(b) / 1024
  var u = 0
  while v >= 1024 && u < units.count - 1 {
    v /= 1024
    u += 1
  }
  return "\((v * 10).rounded() / 10) \(units[u])"
}
