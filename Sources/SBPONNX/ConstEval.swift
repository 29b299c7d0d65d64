// ConstEval.swift: import-time constants and the evaluator that folds shape arithmetic on them.
import Glibc
import SBPIR

/// A tensor whose value is known while importing: shape vectors, scalars, Constant nodes,
/// and integer initializers. Trainable weights are never ConstTensors, so they are never folded.
struct ConstTensor: Equatable {
  var dtype: DType
  var shape: [Int]
  /// Exactly one of these holds the elements: `floats` for floating dtypes, `ints` otherwise.
  var floats: [Double] = []
  var ints: [Int64] = []

  var count: Int { dtype.isFloat ? floats.count : ints.count }
  var type: TensorType { TensorType(dtype, shape) }

  init(dtype: DType, shape: [Int], floats: [Double] = [], ints: [Int64] = []) {
    self.dtype = dtype
    self.shape = shape
    self.floats = floats
    self.ints = ints
  }

  static func i64(_ v: [Int], shape: [Int]? = nil) -> ConstTensor {
    ConstTensor(dtype: .i64, shape: shape ?? [v.count], ints: v.map(Int64.init))
  }

  var literal: Literal {
    Literal(type: type, elements: dtype.isFloat ? .floats(floats) : .ints(ints))
  }

  /// Elements as Ints (for shapes and axes); floats are truncated.
  var intValues: [Int] {
    dtype.isFloat ? floats.map(saturatingInt) : ints.map { Int(clamping: $0) }
  }

  var doubleValues: [Double] { dtype.isFloat ? floats : ints.map(Double.init) }

  /// Reads a constant from little-endian element bytes.
  static func decode(_ dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) -> ConstTensor? {
    guard let n = checkedElementCount(shape), bytes.count == n * dtype.byteSize else { return nil }
    var t = ConstTensor(dtype: dtype, shape: shape)
    func load<T>(_: T.Type, _ f: (T) -> Double) -> [Double] {
      (0..<n).map { f(bytes.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
    }
    func loadI<T: BinaryInteger>(_: T.Type) -> [Int64] {
      (0..<n).map { Int64(truncatingIfNeeded: bytes.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self)) }
    }
    switch dtype {
    case .f32: t.floats = load(Float.self) { Double($0) }
    case .f64: t.floats = load(Double.self) { $0 }
    case .f16: t.floats = load(UInt16.self) { Double(Float(halfBits: $0)) }
    case .bf16: t.floats = load(UInt16.self) { Double(Float(bitPattern: UInt32($0) << 16)) }
    case .i64: t.ints = loadI(Int64.self)
    case .i32: t.ints = loadI(Int32.self)
    case .i16: t.ints = loadI(Int16.self)
    case .i8: t.ints = loadI(Int8.self)
    case .u8, .bool: t.ints = loadI(UInt8.self)
    }
    return t
  }

  /// Little-endian element bytes, for constants too large to print inline.
  func encoded() -> TensorBytes {
    func enc<T>(_ v: [T]) -> TensorBytes { v.withUnsafeBytes { TensorBytes(copying: $0) } }
    switch dtype {
    case .f32: return enc(floats.map(Float.init))
    case .f64: return enc(floats)
    case .f16: return enc(floats.map { Float($0).halfBits })
    case .bf16: return enc(floats.map { UInt16(truncatingIfNeeded: Float($0).bitPattern >> 16) })
    case .i64: return enc(ints)
    case .i32: return enc(ints.map { Int32(truncatingIfNeeded: $0) })
    case .i16: return enc(ints.map { Int16(truncatingIfNeeded: $0) })
    case .i8: return enc(ints.map { Int8(truncatingIfNeeded: $0) })
    case .u8, .bool: return enc(ints.map { UInt8(truncatingIfNeeded: $0) })
    }
  }

  /// A tensor of this dtype whose elements are picked from this one by flat index.
  func gathered(_ idx: [Int], shape: [Int]) -> ConstTensor {
    ConstTensor(
      dtype: dtype, shape: shape, floats: dtype.isFloat ? idx.map { floats[$0] } : [], ints: dtype.isFloat ? [] : idx.map { ints[$0] })
  }

  func cast(to d: DType) -> ConstTensor {
    if d.isFloat {
      let v = doubleValues
      return ConstTensor(dtype: d, shape: shape, floats: d == .f64 ? v : v.map { Double(Float($0)) })
    }
    let v: [Int64] = dtype.isFloat ? floats.map { Int64(saturatingInt($0)) } : ints
    return ConstTensor(dtype: d, shape: shape, ints: d == .bool ? v.map { $0 != 0 ? 1 : 0 } : v)
  }
}

extension Float {
  init(halfBits h: UInt16) {
    let s = UInt32(h >> 15) << 31, e = Int((h >> 10) & 0x1f), m = UInt32(h & 0x3ff)
    if e == 0 {
      self = (s != 0 ? -1 : 1) * Float(m) * 0x1p-24
    } else if e == 31 {
      self = Float(bitPattern: s | 0x7f80_0000 | (m << 13))
    } else {
      self = Float(bitPattern: s | UInt32(e + 112) << 23 | (m << 13))
    }
  }
  var halfBits: UInt16 { Float16(self).bitPattern }
}

/// A double as Int, truncated toward zero; NaN gives 0 and out-of-range values saturate.
func saturatingInt(_ d: Double) -> Int {
  guard !d.isNaN else { return 0 }
  if d >= 9.2e18 { return Int.max }
  if d <= -9.2e18 { return Int.min }
  return Int(d.rounded(.towardZero))
}

/// For each flat index of `out`, the flat index into a tensor of shape `inp` broadcast to it.
func broadcastIndex(out: [Int], inp: [Int]) -> [Int] {
  let n = out.reduce(1, *)
  let pad = out.count - inp.count
  let inStr = rowMajorStrides(inp)
  let outStr = rowMajorStrides(out)
  return (0..<n).map { flat in
    var r = 0
    for d in 0..<out.count {
      let c = (flat / outStr[d]) % out[d]
      if d >= pad, inp[d - pad] != 1 { r += c * inStr[d - pad] }
    }
    return r
  }
}

/// Largest constant the importer folds; bigger results stay as graph ops.
let maxFoldElements = 1 << 20

/// Evaluates `op` on constant operands; nil when the op is not one that folds.
func evaluate(_ op: Op, _ x: [ConstTensor], outType: TensorType) -> ConstTensor? {
  let shape = outType.shape
  let n = outType.elementCount
  switch op {
  case .add, .sub, .mul, .div, .pow, .equal:
    let ia = broadcastIndex(out: shape, inp: x[0].shape), ib = broadcastIndex(out: shape, inp: x[1].shape)
    if x[0].dtype.isFloat {
      let a = x[0].floats, b = x[1].doubleValues
      let v: [Double] = (0..<n).map { i in
        let p = a[ia[i]], q = b[ib[i]]
        switch op {
        case .add: return p + q
        case .sub: return p - q
        case .mul: return p * q
        case .div: return p / q
        case .pow: return powD(p, q)
        case .equal: return p == q ? 1 : 0
        default: preconditionFailure("\(op.name) is not arithmetic")  // the enclosing case lets only these through
        }
      }
      if op == .equal { return ConstTensor(dtype: .bool, shape: shape, ints: v.map { Int64($0) }) }
      return ConstTensor(dtype: x[0].dtype, shape: shape, floats: x[0].dtype == .f64 ? v : v.map { Double(Float($0)) })
    }
    let a = x[0].ints, b = x[1].ints.isEmpty ? x[1].doubleValues.map { Int64(saturatingInt($0)) } : x[1].ints
    var v = [Int64](repeating: 0, count: n)
    for i in 0..<n {
      let p = a[ia[i]], q = b[ib[i]]
      switch op {
      case .add: v[i] = p &+ q
      case .sub: v[i] = p &- q
      case .mul: v[i] = p &* q
      case .div: v[i] = q == 0 ? 0 : p.dividedReportingOverflow(by: q).partialValue
      case .pow: v[i] = Int64(saturatingInt(powD(Double(p), Double(q)).rounded()))
      case .equal: v[i] = p == q ? 1 : 0
      default: preconditionFailure("\(op.name) is not arithmetic")  // the enclosing case lets only these through
      }
    }
    return ConstTensor(dtype: op == .equal ? .bool : x[0].dtype, shape: shape, ints: v)
  case .select:
    let ic = broadcastIndex(out: shape, inp: x[0].shape), ia = broadcastIndex(out: shape, inp: x[1].shape),
      ib = broadcastIndex(out: shape, inp: x[2].shape)
    let c = x[0].ints
    if x[1].dtype.isFloat {
      return ConstTensor(
        dtype: x[1].dtype, shape: shape, floats: (0..<n).map { c[ic[$0]] != 0 ? x[1].floats[ia[$0]] : x[2].floats[ib[$0]] })
    }
    return ConstTensor(dtype: x[1].dtype, shape: shape, ints: (0..<n).map { c[ic[$0]] != 0 ? x[1].ints[ia[$0]] : x[2].ints[ib[$0]] })
  case .unary(let f):
    guard x[0].dtype.isFloat else {
      return f == .neg ? ConstTensor(dtype: x[0].dtype, shape: shape, ints: x[0].ints.map { 0 &- $0 }) : nil
    }
    let v = x[0].floats.map(f.apply)
    return ConstTensor(dtype: x[0].dtype, shape: shape, floats: x[0].dtype == .f64 ? v : v.map { Double(Float($0)) })
  case .cast(let d):
    var t = x[0].cast(to: d)
    t.shape = shape
    return t
  case .reshape, .squeeze, .unsqueeze:
    var t = x[0]
    t.shape = shape
    return t
  case .expand:
    return x[0].gathered(broadcastIndex(out: shape, inp: x[0].shape), shape: shape)
  case .transpose(let perm):
    let inStr = rowMajorStrides(x[0].shape), outStr = rowMajorStrides(shape)
    let idx = (0..<n).map { flat in
      var r = 0
      for d in 0..<shape.count { r += ((flat / outStr[d]) % shape[d]) * inStr[perm[d]] }
      return r
    }
    return x[0].gathered(idx, shape: shape)
  case .slice(let spec):
    let inStr = rowMajorStrides(x[0].shape), outStr = rowMajorStrides(shape)
    var start = [Int](repeating: 0, count: shape.count), step = [Int](repeating: 1, count: shape.count)
    for (i, a) in spec.axes.enumerated() {
      start[a] = spec.starts[i]
      step[a] = spec.steps[i]
    }
    let idx = (0..<n).map { flat in
      var r = 0
      for d in 0..<shape.count { r += (start[d] + ((flat / outStr[d]) % shape[d]) * step[d]) * inStr[d] }
      return r
    }
    return x[0].gathered(idx, shape: shape)
  case .gather(let axis):
    let a = normalizeAxis(axis, rank: x[0].shape.count)!
    let dim = x[0].shape[a]
    let outer = x[0].shape[..<a].reduce(1, *), inner = x[0].shape[(a + 1)...].reduce(1, *)
    var idx: [Int] = []
    idx.reserveCapacity(n)
    for o in 0..<outer {
      for k in x[1].intValues {
        let kk = k < 0 ? k + dim : k
        guard kk >= 0, kk < dim else { return nil }
        for i in 0..<inner { idx.append((o * dim + kk) * inner + i) }
      }
    }
    return x[0].gathered(idx, shape: shape)
  case .concat(let axis):
    let a = normalizeAxis(axis, rank: shape.count)!
    let outer = shape[..<a].reduce(1, *)
    var t = ConstTensor(dtype: x[0].dtype, shape: shape)
    for o in 0..<outer {
      for p in x {
        let chunk = p.shape[a...].reduce(1, *)
        if p.dtype.isFloat {
          t.floats += p.floats[(o * chunk)..<((o + 1) * chunk)]
        } else {
          t.ints += p.ints[(o * chunk)..<((o + 1) * chunk)]
        }
      }
    }
    return t
  case .constant, .matMul, .linear, .gemm, .conv, .layerNorm, .softmax,
    .split, .gatherRows, .scatterRows, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining,
    .batchNormGrad, .runningStats, .maxPool, .averagePool, .maxPoolGrad,
    .averagePoolGrad, .stopGradient, .softmaxCrossEntropy,
    .softmaxCrossEntropyGrad,
    .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad,
    .gatherGrad, .sgd, .adamw:
    // Only shape arithmetic folds; training ops never appear in an imported graph.
    return nil
  }
}

private func powD(_ a: Double, _ b: Double) -> Double { Glibc.pow(a, b) }

/// ONNX Mod on constants (shape and index arithmetic, such as Swin's window indices), with
/// numpy broadcasting: `fmod` 0 takes the divisor's sign (Python's %, integers only), 1 the
/// dividend's (C's fmod). nil when the shapes do not broadcast or a divisor is zero.
func constMod(_ a: ConstTensor, _ b: ConstTensor, fmod: Bool) -> ConstTensor? {
  guard let shape = broadcastShapes(a.shape, b.shape) else { return nil }
  let n = shape.reduce(1, *)
  let ia = broadcastIndex(out: shape, inp: a.shape), ib = broadcastIndex(out: shape, inp: b.shape)
  if a.dtype.isFloat {
    let x = a.doubleValues, y = b.doubleValues
    return ConstTensor(dtype: a.dtype, shape: shape, floats: (0..<n).map { Glibc.fmod(x[ia[$0]], y[ib[$0]]) })
  }
  let x = a.ints, y = b.ints.isEmpty ? b.doubleValues.map { Int64($0) } : b.ints
  var out = [Int64](repeating: 0, count: n)
  for i in 0..<n {
    let p = x[ia[i]], q = y[ib[i]]
    guard q != 0 else { return nil }
    var r = p.remainderReportingOverflow(dividingBy: q).partialValue
    if !fmod, r != 0, (r < 0) != (q < 0) { r += q }
    out[i] = r
  }
  return ConstTensor(dtype: a.dtype, shape: shape, ints: out)
}

/// Elementwise max (or min) of two broadcast constants, as ONNX's Max and Min; nil if the
/// shapes do not broadcast.
func constExtremum(_ a: ConstTensor, _ b: ConstTensor, max: Bool) -> ConstTensor? {
  guard let shape = broadcastShapes(a.shape, b.shape) else { return nil }
  let n = shape.reduce(1, *)
  let ia = broadcastIndex(out: shape, inp: a.shape), ib = broadcastIndex(out: shape, inp: b.shape)
  if a.dtype.isFloat || b.dtype.isFloat {
    let x = a.doubleValues, y = b.doubleValues
    return ConstTensor(dtype: a.dtype, shape: shape, floats: (0..<n).map { max ? Swift.max(x[ia[$0]], y[ib[$0]]) : Swift.min(x[ia[$0]], y[ib[$0]]) })
  }
  let x = a.ints, y = b.ints
  return ConstTensor(dtype: a.dtype, shape: shape, ints: (0..<n).map { max ? Swift.max(x[ia[$0]], y[ib[$0]]) : Swift.min(x[ia[$0]], y[ib[$0]]) })
}
