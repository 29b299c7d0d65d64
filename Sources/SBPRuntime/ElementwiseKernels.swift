// ElementwiseKernels.swift: broadcasting binary ops, unary ops, activations and their gradients.
import Glibc
import SBPIR

/// Elementwise kernels: broadcasting binary ops, unary ops and activation gradients (f32).
enum Elementwise {
  /// Elements per thread below which a kernel runs on one thread.
  static let grain = 1 << 14

  /// out = a^b with numpy broadcasting, for f32 operands (scalar powf: exporters use pow
  /// with a constant exponent, rarely on a hot path).
  /// `strides`: each operand's broadcast strides (prepared once by the executor).
  static func pow(_ a: Buffer, _ b: Buffer, _ out: Buffer, strides: [[Int]]) {
    let pa = a.f32, pb = b.f32, po = out.f32
    forEachRow(out.type.shape, strides) { o, base, n, st in
      for i in 0..<n { po[o + i] = powf(pa[base[0] + i * st[0]], pb[base[1] + i * st[1]]) }
    }
  }

  /// The vectorized broadcasting loop: whole-tensor runs when the shapes agree, otherwise
  /// innermost rows, each operand either contiguous or a splat along them.
  static func binary<F: BinaryKernel>(_ a: Buffer, _ b: Buffer, _ out: Buffer, _ strides: [[Int]], _: F.Type) {
    let f = F.apply
    let shape = out.type.shape
    let pa = a.f32, pb = b.f32, po = out.f32
    if a.type.shape == shape && b.type.shape == shape {
      map(a, b, out, F.self)
      return
    }
    let rows = outerRows(shape), width = shape.last ?? 1
    Parallel.chunks(rows, grain: Swift.max(1, grain / Swift.max(width, 1))) { _, range in
      forEachRow(shape, strides, rows: range) { o, base, n, st in row(n, pa + base[0], st[0], pb + base[1], st[1], po + o, f) }
    }
  }

  /// y[i] = f(a[i·sa], b[i·sb]) for i < n: vectorized when each operand is contiguous
  /// (stride 1) or one element splat along the row (stride 0).
  @inline(__always) static func row(
    _ n: Int, _ a: UnsafePointer<Float>, _ sa: Int, _ b: UnsafePointer<Float>, _ sb: Int, _ y: UnsafeMutablePointer<Float>,
    _ f: (V8, V8) -> V8
  ) {
    switch (sa, sb) {
    case (1, 1): VMath.map(n, a, b, y, f)
    case (1, 0):
      let vb = V8(repeating: b[0])
      VMath.map(n, a, y) { f($0, vb) }
    case (0, 1):
      let va = V8(repeating: a[0])
      VMath.map(n, b, y) { f(va, $0) }
    default:
      for i in 0..<n { y[i] = f(V8(repeating: a[i * sa]), V8(repeating: b[i * sb]))[0] }
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

  /// out = f(x), f32.
  static func unary(_ f: Unary, _ x: Buffer, _ out: Buffer) {
    switch f {
    case .sqrt: map(x, out, Sqrt.self)
    case .erf: map(x, out, Erf.self)
    case .tanh: map(x, out, Tanh.self)
    case .exp: map(x, out, Exp.self)
    case .neg: map(x, out, Neg.self)
    case .relu: map(x, out, Relu.self)
    case .sigmoid: map(x, out, Sigmoid.self)
    case .reciprocal: map(x, out, Reciprocal.self)
    case .silu: map(x, out, Silu.self)
    case .gelu(.none): map(x, out, Gelu.self)
    case .gelu(.tanh): map(x, out, GeluTanh.self)
    case .hardSigmoid(let alpha, let beta):
      let a = V8(repeating: Float(alpha)), b = V8(repeating: Float(beta))
      map(x, out) { v in VMath.max(V8(), VMath.min(V8(repeating: 1), a * v + b)) }
    case .hardSwish: map(x, out, HardSwish.self)
    case .clip(let lo, let hi):
      let l = V8(repeating: Float(lo)), h = V8(repeating: Float(hi))
      map(x, out) { v in VMath.min(VMath.max(v, l), h) }
    }
  }

  /// dx = dy · f′(x), f32.
  static func unaryGrad(_ f: Unary, _ x: Buffer, _ dy: Buffer, _ dx: Buffer) {
    switch f {
    case .sqrt: map(x, dy, dx, SqrtGrad.self)
    case .erf: map(x, dy, dx, ErfGrad.self)
    case .tanh: map(x, dy, dx, TanhGrad.self)
    case .exp: map(x, dy, dx, ExpGrad.self)
    case .neg: map(x, dy, dx, NegGrad.self)
    case .relu: map(x, dy, dx, ReluGrad.self)
    case .sigmoid: map(x, dy, dx, SigmoidGrad.self)
    case .reciprocal: map(x, dy, dx, ReciprocalGrad.self)
    case .silu: map(x, dy, dx, SiluGrad.self)
    case .gelu(.none): map(x, dy, dx, GeluGrad.self)
    case .gelu(.tanh): map(x, dy, dx, GeluTanhGrad.self)
    case .hardSigmoid(let alpha, let beta):
      let a = V8(repeating: Float(alpha)), b = V8(repeating: Float(beta))
      map(x, dy, dx) { v, d in
        let z = a * v + b
        return (d * a).replacing(with: 0, where: .!((z .> 0) .& (z .< 1)))
      }
    case .hardSwish: map(x, dy, dx, HardSwishGrad.self)
    case .clip(let lo, let hi):
      let l = V8(repeating: Float(lo)), h = V8(repeating: Float(hi))
      map(x, dy, dx) { v, d in d.replacing(with: 0, where: .!((v .>= l) .& (v .<= h))) }
    }
  }

  /// out = f(x) for a function with parameters (a closure; the hot activations are types).
  static func map(_ x: Buffer, _ out: Buffer, _ f: (V8) -> V8) {
    let px = x.f32, po = out.f32
    Parallel.chunks(out.count, grain: grain) { _, r in VMath.map(r.count, px + r.lowerBound, po + r.lowerBound, f) }
  }

  /// out = f(a, b) for a function with parameters, over equal shapes.
  static func map(_ a: Buffer, _ b: Buffer, _ out: Buffer, _ f: (V8, V8) -> V8) {
    let pa = a.f32, pb = b.f32, po = out.f32
    Parallel.chunks(out.count, grain: grain) { _, r in VMath.map(r.count, pa + r.lowerBound, pb + r.lowerBound, po + r.lowerBound, f) }
  }

  /// out = F(x) elementwise, split over the threads. F is a type, not a closure, so each
  /// kernel is specialized with its math inlined into the threaded loop.
  static func map<F: UnaryKernel>(_ x: Buffer, _ out: Buffer, _: F.Type) {
    let px = x.f32, po = out.f32
    Parallel.chunks(out.count, grain: grain) { _, r in VMath.map(r.count, px + r.lowerBound, po + r.lowerBound, F.apply) }
  }

  /// out = F(a, b) elementwise over equal shapes, split over the threads.
  static func map<F: BinaryKernel>(_ a: Buffer, _ b: Buffer, _ out: Buffer, _: F.Type) {
    let pa = a.f32, pb = b.f32, po = out.f32
    Parallel.chunks(out.count, grain: grain) { _, r in
      VMath.map(r.count, pa + r.lowerBound, pb + r.lowerBound, po + r.lowerBound, F.apply)
    }
  }

  /// y = gelu(x) and dx = dy · gelu'(x) in one pass, bit-identical to `unary(.gelu)` and
  /// `geluGrad` run apart: the two share erf (or tanh) and the read of x. Each element is
  /// read before it is written, so y may be x's memory and dx may be dy's.
  static func geluAndGrad(_ a: GeluApproximation, _ x: Buffer, _ dy: Buffer, _ y: Buffer, _ dx: Buffer) {
    let px = x.f32, pd = dy.f32, py = y.f32, pg = dx.f32
    Parallel.chunks(x.count, grain: grain) { _, r in
      var i = r.lowerBound
      @inline(__always) func both(_ v: V8, _ d: V8) -> (V8, V8) {
        switch a {
        case .none:
          // The expressions of Gelu and GeluGrad, with erf computed once.
          let e = VMath.erf(v * invSqrt2)
          let pdf: V8 = v * VMath.exp(-0.5 * v * v) * invSqrt2Pi
          return (0.5 * v * (1 + e), d * (0.5 * (1 + e) + pdf))
        case .tanh: return (GeluTanh.apply(v), GeluTanhGrad.apply(v, d))
        }
      }
      while i + 8 <= r.upperBound {
        let (u, g) = both(VMath.load(px + i), VMath.load(pd + i))
        VMath.store(u, py + i)
        VMath.store(g, pg + i)
        i += 8
      }
      if i < r.upperBound {
        let n = r.upperBound - i
        let (u, g) = both(VMath.loadPartial(px + i, n), VMath.loadPartial(pd + i, n))
        VMath.storePartial(u, py + i, n)
        VMath.storePartial(g, pg + i, n)
      }
    }
  }

  /// Converts between f32 and integer dtypes.
  static func cast(_ x: Buffer, _ out: Buffer) {
    switch (x.type.dtype, out.type.dtype) {
    case (.f32, .bf16):
      Parallel.chunks(out.count, grain: 1 << 15) { _, r in BF16GEMM.narrow(x.f32 + r.lowerBound, out.bf16 + r.lowerBound, count: r.count) }
      return
    case (.bf16, .f32):
      Parallel.chunks(out.count, grain: 1 << 15) { _, r in BF16GEMM.widen(x.bf16 + r.lowerBound, out.f32 + r.lowerBound, count: r.count) }
      return
    default: break
    }
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

/// An elementwise function of one vector, as a type so kernels specialize on it.
protocol UnaryKernel { static func apply(_ x: V8) -> V8 }
/// An elementwise function of two vectors.
protocol BinaryKernel { static func apply(_ a: V8, _ b: V8) -> V8 }

let sqrt2OverPi = Float((2 / Double.pi).squareRoot())
let invSqrt2 = 1 / Float(2).squareRoot()
let invSqrt2Pi = Float(1 / (2 * Double.pi).squareRoot())

enum Add: BinaryKernel { @inline(__always) static func apply(_ a: V8, _ b: V8) -> V8 { a + b } }
enum Sub: BinaryKernel { @inline(__always) static func apply(_ a: V8, _ b: V8) -> V8 { a - b } }
enum Mul: BinaryKernel { @inline(__always) static func apply(_ a: V8, _ b: V8) -> V8 { a * b } }
enum Div: BinaryKernel { @inline(__always) static func apply(_ a: V8, _ b: V8) -> V8 { a / b } }
enum Sqrt: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { x.squareRoot() } }
enum Erf: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { VMath.erf(x) } }
enum Tanh: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { VMath.tanh(x) } }
enum Exp: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { VMath.exp(x) } }
enum Neg: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { -x } }
enum Relu: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { VMath.max(x, V8()) } }
enum Sigmoid: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { 1 / (1 + VMath.exp(-x)) } }
enum Reciprocal: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { 1 / x } }

/// HardSwish: x·clamp(x/6 + 1/2, 0, 1).
enum HardSwish: UnaryKernel {
  @inline(__always) static func apply(_ x: V8) -> V8 { x * VMath.max(V8(), VMath.min(V8(repeating: 1), x * (1 / 6) + 0.5)) }
}

/// dy · HardSwish′(x): 0 below −3, x/3 + 1/2 on [−3, 3], 1 above (PyTorch's pieces).
enum HardSwishGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let middle: V8 = dy * (x * (1 / 3) + 0.5)
    return middle.replacing(with: 0, where: x .< -3).replacing(with: dy, where: x .> 3)
  }
}

/// SiLU: x·sigmoid(x).
enum Silu: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { x / (1 + VMath.exp(-x)) } }

/// dy · SiLU′(x) = dy · s·(1 + x·(1 − s)), s = sigmoid(x).
enum SiluGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let s: V8 = 1 / (1 + VMath.exp(-x))
    return dy * s * (1 + x * (1 - s))
  }
}

/// dy · f′(x) for the arithmetic functions; their usual gradient rules read y instead, so
/// these run only where a graph asks for `*_grad` itself.
enum SqrtGrad: BinaryKernel { @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { 0.5 * dy / x.squareRoot() } }
enum ErfGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { dy * (2 * invSqrt2Pi * Float(2).squareRoot()) * VMath.exp(-x * x) }
}
enum TanhGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let t = VMath.tanh(x)
    return dy * (1 - t * t)
  }
}
enum ExpGrad: BinaryKernel { @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { dy * VMath.exp(x) } }
enum NegGrad: BinaryKernel { @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { -dy } }
enum SigmoidGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let s: V8 = 1 / (1 + VMath.exp(-x))
    return dy * s * (1 - s)
  }
}
enum ReciprocalGrad: BinaryKernel { @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { -dy / (x * x) } }

/// GELU, exact: x·Φ(x).
enum Gelu: UnaryKernel { @inline(__always) static func apply(_ x: V8) -> V8 { 0.5 * x * (1 + VMath.erf(x * invSqrt2)) } }

/// GELU, tanh approximation.
enum GeluTanh: UnaryKernel {
  @inline(__always) static func apply(_ x: V8) -> V8 {
    let z: V8 = sqrt2OverPi * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1 + VMath.tanh(z))
  }
}

/// dy · GELU'(x), exact: Φ(x) + x·φ(x).
enum GeluGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let pdf: V8 = x * VMath.exp(-0.5 * x * x) * invSqrt2Pi
    return dy * (0.5 * (1 + VMath.erf(x * invSqrt2)) + pdf)
  }
}

/// dy · GELU'(x), tanh approximation.
enum GeluTanhGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 {
    let x2: V8 = x * x
    let t: V8 = VMath.tanh(sqrt2OverPi * (x + 0.044715 * x2 * x))
    let inner: V8 = sqrt2OverPi * (1 + 3 * 0.044715 * x2)
    let slope: V8 = 0.5 * x * (1 - t * t) * inner
    return dy * (0.5 * (1 + t) + slope)
  }
}

/// dy where x > 0, else 0 (NaN x gives 0, as x > 0 is false).
enum ReluGrad: BinaryKernel {
  @inline(__always) static func apply(_ x: V8, _ dy: V8) -> V8 { dy.replacing(with: 0, where: .!(x .> 0)) }
}
