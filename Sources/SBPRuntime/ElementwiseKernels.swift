// ElementwiseKernels.swift: broadcasting binary ops, unary ops, activations and their gradients.
import Glibc
import SBPIR

/// Elementwise kernels: broadcasting binary ops, unary ops and activation gradients (f32).
enum Elementwise {
  /// out = a ∘ b with numpy broadcasting, for f32 operands.
  /// `strides`: each operand's broadcast strides (prepared once by the executor).
  static func binary(_ op: Op, _ a: Buffer, _ b: Buffer, _ out: Buffer, strides: [[Int]]) {
    let shape = out.type.shape
    let pa = a.f32, pb = b.f32, po = out.f32
    @inline(__always) func f(_ x: Float, _ y: Float) -> Float {
      switch op {
      case .add: return x + y
      case .sub: return x - y
      case .mul: return x * y
      case .div: return x / y
      default: return powf(x, y)
      }
    }
    if a.type.shape == shape && b.type.shape == shape {
      for i in 0..<out.count { po[i] = f(pa[i], pb[i]) }
      return
    }
    if a.type.shape == shape && b.count == 1 {
      let y = pb[0]
      for i in 0..<out.count { po[i] = f(pa[i], y) }
      return
    }
    forEachRow(shape, strides) { o, base, n, st in
      let (ba, bb, sa, sb) = (base[0], base[1], st[0], st[1])
      for i in 0..<n { po[o + i] = f(pa[ba + i * sa], pb[bb + i * sb]) }
    }
  }

  /// Equality into a bool (u8) result, for f32 or integer operands.
  static func equal(_ a: Buffer, _ b: Buffer, _ out: Buffer, strides: [[Int]]) {
    let shape = out.type.shape
    let po = out.u8
    let isFloat = a.type.dtype.isFloat
    forEachRow(shape, strides) { o, base, n, st in
      for i in 0..<n {
        let ia = base[0] + i * st[0], ib = base[1] + i * st[1]
        po[o + i] = (isFloat ? a.f32[ia] == b.f32[ib] : a.index(ia) == b.index(ib)) ? 1 : 0
      }
    }
  }

  /// out = cond ? x : y with broadcasting; x and y share a dtype of 4 or 8 bytes.
  static func select(_ c: Buffer, _ x: Buffer, _ y: Buffer, _ out: Buffer, strides: [[Int]]) {
    let shape = out.type.shape
    let size = out.type.dtype.byteSize
    forEachRow(shape, strides) { o, base, n, st in
      for i in 0..<n {
        let pick = c.u8[base[0] + i * st[0]] != 0
        let src = pick ? x.raw + (base[1] + i * st[1]) * size : y.raw + (base[2] + i * st[2]) * size
        (out.raw + (o + i) * size).copyMemory(from: src, byteCount: size)
      }
    }
  }

  static let sqrt2 = Float(2).squareRoot()
  static let sqrt2OverPi = Float((2 / Double.pi).squareRoot())

  /// Unary f32 ops.
  static func unary(_ op: Op, _ x: Buffer, _ out: Buffer) {
    let px = x.f32, po = out.f32
    let n = out.count
    switch op {
    case .sqrt: for i in 0..<n { po[i] = px[i].squareRoot() }
    case .erf: for i in 0..<n { po[i] = erff(px[i]) }
    case .tanh: for i in 0..<n { po[i] = tanhf(px[i]) }
    case .exp: for i in 0..<n { po[i] = expf(px[i]) }
    case .neg: for i in 0..<n { po[i] = -px[i] }
    case .relu: for i in 0..<n { po[i] = max(px[i], 0) }
    case .sigmoid: for i in 0..<n { po[i] = 1 / (1 + expf(-px[i])) }
    case .reciprocal: for i in 0..<n { po[i] = 1 / px[i] }
    case .gelu(.none): for i in 0..<n { po[i] = 0.5 * px[i] * (1 + erff(px[i] / sqrt2)) }
    case .gelu(.tanh):
      for i in 0..<n {
        let v = px[i]
        po[i] = 0.5 * v * (1 + tanhf(sqrt2OverPi * (v + 0.044715 * v * v * v)))
      }
    default: preconditionFailure("not a unary op: \(op.name)")
    }
  }

  /// dx for gelu given x and dy.
  static func geluGrad(_ a: GeluApproximation, _ x: Buffer, _ dy: Buffer, _ dx: Buffer) {
    let px = x.f32, pd = dy.f32, po = dx.f32
    let invSqrt2Pi = Float(1 / (2 * Double.pi).squareRoot())
    for i in 0..<dx.count {
      let v = px[i]
      let d: Float
      switch a {
      case .none: d = 0.5 * (1 + erff(v / sqrt2)) + v * expf(-0.5 * v * v) * invSqrt2Pi
      case .tanh:
        let t = tanhf(sqrt2OverPi * (v + 0.044715 * v * v * v))
        d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * sqrt2OverPi * (1 + 3 * 0.044715 * v * v)
      }
      po[i] = pd[i] * d
    }
  }

  static func reluGrad(_ x: Buffer, _ dy: Buffer, _ dx: Buffer) {
    for i in 0..<dx.count { dx.f32[i] = x.f32[i] > 0 ? dy.f32[i] : 0 }
  }

  /// Converts between f32 and integer dtypes.
  static func cast(_ x: Buffer, _ out: Buffer) {
    for i in 0..<out.count {
      let v: Double = x.type.dtype.isFloat ? Double(x.f32[i]) : Double(x.index(i))
      switch out.type.dtype {
      case .f32: out.f32[i] = Float(v)
      case .i64: out.i64[i] = Int64(v)
      case .bool, .u8: out.u8[i] = v != 0 ? 1 : 0
      default: preconditionFailure("cast to \(out.type.dtype) is not supported")
      }
    }
  }
}
