// Literal.swift: small constant tensors that live inline in the IR (scalars, shape vectors).

/// A constant tensor small enough to print inline. Floating values are kept as `Double`
/// and rounded to the dtype when printed, so `f32` literals print as the `Float` they hold.
public struct Literal: Sendable, Hashable {
  public enum Elements: Sendable, Hashable {
    case floats([Double])
    case ints([Int64])
  }

  public var type: TensorType
  public var elements: Elements

  /// Largest literal kept inline; bigger constants become non-trainable params.
  public static let maxInlineElements = 64

  public init(type: TensorType, elements: Elements) {
    self.type = type
    self.elements = elements
  }

  public init(f32 values: [Double], shape: [Int]) {
    self.init(type: TensorType(.f32, shape), elements: .floats(values.map { Double(Float($0)) }))
  }

  public init(i64 values: [Int64], shape: [Int]) {
    self.init(type: TensorType(.i64, shape), elements: .ints(values))
  }

  public var count: Int {
    switch elements {
    case .floats(let v): return v.count
    case .ints(let v): return v.count
    }
  }

  /// Values as doubles, whatever the storage.
  public var doubles: [Double] {
    switch elements {
    case .floats(let v): return v
    case .ints(let v): return v.map(Double.init)
    }
  }

  /// Values as integers; floating values are truncated toward zero.
  public var ints: [Int64] {
    switch elements {
    case .floats(let v): return v.map { $0.isFinite ? Int64(clamping: Int(exactly: $0.rounded(.towardZero)) ?? 0) : 0 }
    case .ints(let v): return v
    }
  }

  /// The single value of a one-element literal.
  public var scalar: Double? { count == 1 ? doubles[0] : nil }

  /// Builds a literal of `dtype` from doubles, choosing the storage the dtype needs.
  public static func make(_ dtype: DType, shape: [Int], values: [Double]) -> Literal {
    if dtype.isFloat {
      let v = dtype == .f64 ? values : values.map { Double(Float($0)) }
      return Literal(type: TensorType(dtype, shape), elements: .floats(v))
    }
    return Literal(
      type: TensorType(dtype, shape), elements: .ints(values.map { Int64(clamping: Int(exactly: $0.rounded(.towardZero)) ?? 0) }))
  }
}
