// SIMDMath.swift: 8-lane f32 exp, erf and tanh, and the load/store/map helpers the kernels vectorize with.

/// The runtime's SIMD vector: 8 f32 lanes (two SSE registers on baseline x86-64, one AVX register).
typealias V8 = SIMD8<Float>

/// Vector math for the kernels: libm's scalar erff/expf cost ~50 cycles each and made GELU a
/// third of a ViT step; these run 8 lanes in a few dozen instructions, within 2 ulp of libm
/// over the ranges that matter (the unit tests compare them with libm).
enum VMath {
  @inline(__always) static func load(_ p: UnsafePointer<Float>) -> V8 { UnsafeRawPointer(p).loadUnaligned(as: V8.self) }
  @inline(__always) static func load(_ p: UnsafeMutablePointer<Float>) -> V8 { UnsafeRawPointer(p).loadUnaligned(as: V8.self) }
  @inline(__always) static func store(_ v: V8, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V8.self)
  }

  /// The first `n` (< 8) floats at `p`, zeros in the other lanes. One block copy: setting
  /// lanes one by one compiles to a spill and a reload per lane, which dominated short rows.
  @inline(__always) static func loadPartial(_ p: UnsafePointer<Float>, _ n: Int) -> V8 {
    var v = V8()
    withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: p, byteCount: n * 4) }
    return v
  }
  @inline(__always) static func storePartial(_ v: V8, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    withUnsafeBytes(of: v) { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: n * 4) }
  }

  /// Lane-wise max and min. Written as selects: the standard library's pointwiseMax and
  /// clamped(lowerBound:upperBound:) compile to out-of-line lane loops.
  @inline(__always) static func max(_ a: V8, _ b: V8) -> V8 { a.replacing(with: b, where: a .< b) }
  @inline(__always) static func min(_ a: V8, _ b: V8) -> V8 { a.replacing(with: b, where: b .< a) }
  @inline(__always) static func clamp(_ x: V8, _ lo: Float, _ hi: Float) -> V8 {
    x.replacing(with: lo, where: x .< lo).replacing(with: hi, where: x .> hi)
  }

  /// a·b + c, fused into one instruction where the build has FMA (`SBPC_FMA`, set by
  /// Package.swift from the host CPU), else a multiply and an add.
  @inline(__always) static func fma(_ a: V8, _ b: V8, _ c: V8) -> V8 {
    #if SBPC_FMA
      return c.addingProduct(a, b)
    #else
      return a * b + c
    #endif
  }

  /// e^x. Cephes' expf: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r, and
  /// 2^n built in the exponent bits. The round-to-nearest uses the 1.5·2²³ trick, so nothing
  /// needs SSE4.1.
  @inline(__always) static func exp(_ x: V8) -> V8 {
    let x = clamp(x, -87.33, 88.37)
    let magic = V8(repeating: 12_582_912)
    let t = x * 1.442_695_04 + magic
    let n = t - magic
    var r = x - n * 0.693_359_375
    r = r - n * -2.121_944_4e-4
    var p = V8(repeating: 1.987_569_15e-4)
    p = fma(p, r, V8(repeating: 1.398_199_95e-3))
    p = fma(p, r, V8(repeating: 8.333_451_9e-3))
    p = fma(p, r, V8(repeating: 4.166_579_59e-2))
    p = fma(p, r, V8(repeating: 0.166_666_655))
    p = fma(p, r, V8(repeating: 0.500_000_01))
    p = fma(p, r * r, r) + 1
    // t's low mantissa bits hold n (|n| < 2²²): 2^n = (n + 127) << 23.
    let bits = unsafeBitCast(t, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
    let scale = unsafeBitCast((bits &+ 127) &<< 23, to: V8.self)
    return p * scale
  }

  /// erf(x): the rational minimax approximation Eigen and XLA use (odd degree-13 over even
  /// degree-8), on x clamped to [−4, 4], where erf is ±1 in f32.
  @inline(__always) static func erf(_ x: V8) -> V8 {
    let x = clamp(x, -4, 4)
    let x2 = x * x
    var p = fma(x2, V8(repeating: -2.726_142_25e-10), V8(repeating: 2.770_681_42e-08))
    p = fma(x2, p, V8(repeating: -2.101_024_02e-06))
    p = fma(x2, p, V8(repeating: -5.692_506_39e-05))
    p = fma(x2, p, V8(repeating: -7.349_906_3e-04))
    p = fma(x2, p, V8(repeating: -2.954_599_8e-03))
    p = fma(x2, p, V8(repeating: -1.609_603_33e-02))
    p = x * p
    var q = fma(x2, V8(repeating: -1.456_607_18e-05), V8(repeating: -2.133_740_55e-04))
    q = fma(x2, q, V8(repeating: -1.682_826_97e-03))
    q = fma(x2, q, V8(repeating: -7.373_329_17e-03))
    q = fma(x2, q, V8(repeating: -1.426_473_9e-02))
    return p / q
  }

  /// tanh(x) = 1 − 2 / (e^{2x} + 1); exact at the clamped ends (±1).
  @inline(__always) static func tanh(_ x: V8) -> V8 {
    1 - 2 / (exp(x + x) + 1)
  }

  /// out[i] = f(x[i]) for i < n, 8 lanes at a time.
  @inline(__always) static func map(_ n: Int, _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ f: (V8) -> V8) {
    var i = 0
    while i + 8 <= n {
      store(f(load(x + i)), out + i)
      i += 8
    }
    if i < n { storePartial(f(loadPartial(x + i, n - i)), out + i, n - i) }
  }

  /// out[i] = f(a[i], b[i]) for i < n.
  @inline(__always) static func map(
    _ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ f: (V8, V8) -> V8
  ) {
    var i = 0
    while i + 8 <= n {
      store(f(load(a + i), load(b + i)), out + i)
      i += 8
    }
    if i < n { storePartial(f(loadPartial(a + i, n - i), loadPartial(b + i, n - i)), out + i, n - i) }
  }

  /// Σ x[i] for i < n.
  @inline(__always) static func sum(_ n: Int, _ x: UnsafePointer<Float>) -> Float {
    var acc = V8()
    var i = 0
    while i + 8 <= n {
      acc += load(x + i)
      i += 8
    }
    var s = acc.sum()
    while i < n {
      s += x[i]
      i += 1
    }
    return s
  }

  /// Σ a[i]·b[i] for i < n.
  @inline(__always) static func dot(_ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>) -> Float {
    var acc = V8()
    var i = 0
    while i + 8 <= n {
      acc += load(a + i) * load(b + i)
      i += 8
    }
    var s = acc.sum()
    while i < n {
      s += a[i] * b[i]
      i += 1
    }
    return s
  }

  /// max x[i] for i < n (−∞ when n = 0).
  @inline(__always) static func max(_ n: Int, _ x: UnsafePointer<Float>) -> Float {
    var acc = V8(repeating: -.infinity)
    var i = 0
    while i + 8 <= n {
      acc = max(acc, load(x + i))
      i += 8
    }
    var m = acc[0]
    for l in 1..<8 { m = Swift.max(m, acc[l]) }
    while i < n {
      m = Swift.max(m, x[i])
      i += 1
    }
    return m
  }

  /// y[i] += a · x[i] for i < n.
  @inline(__always) static func axpy(_ n: Int, _ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    map(n, x, y, y) { xv, yv in yv + a * xv }
  }
}
