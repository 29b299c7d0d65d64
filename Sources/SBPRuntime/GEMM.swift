// GEMM.swift: the runtime's matrix-multiply kernel, a thin checked wrapper over OpenBLAS sgemm.
import COpenBLAS
import Dispatch
import SBPIR

/// A GEMM operand: fp32 or bf16 elements from an address.
public struct GEMMOperand {
  public let base: UnsafeRawPointer
  public let bf16: Bool
  public init(_ base: UnsafeRawPointer, bf16: Bool) { (self.base, self.bf16) = (base, bf16) }
  public init(_ p: UnsafePointer<Float>) { (base, bf16) = (UnsafeRawPointer(p), false) }
  public init(_ p: UnsafePointer<UInt16>) { (base, bf16) = (UnsafeRawPointer(p), true) }
  @inline(__always) public func advanced(by elements: Int) -> GEMMOperand { GEMMOperand(base + elements * (bf16 ? 2 : 4), bf16: bf16) }
  var f32: UnsafePointer<Float> { base.assumingMemoryBound(to: Float.self) }
}

extension Buffer {
  /// The buffer as a GEMM operand (f32 or bf16).
  var operand: GEMMOperand { GEMMOperand(raw, bf16: type.dtype == .bf16) }
}

/// Row-major single-precision GEMM kernels backed by OpenBLAS.
public enum GEMM {
  /// C = alpha · op(A) · op(B) + beta · C: OpenBLAS sgemm on fp32 operands, the bf16
  /// kernels (`BF16GEMM`) when either operand is bf16 or `bf16` asks for bf16 operands (an
  /// fp32 one is then rounded as it is packed).
  static func product(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1, a: GEMMOperand, b: GEMMOperand, beta: Float = 0,
    c: UnsafeMutablePointer<Float>, bf16: Bool = false
  ) {
    if bf16 || a.bf16 || b.bf16 {
      BF16GEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, b: b, beta: beta, c: c)
    } else {
      sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.f32, b: b.f32, beta: beta, c: c)
    }
  }

  /// Σ 2·M·N·K over every sgemm call since the counter was last reset. Only the executor's
  /// thread calls these entry points (they split work themselves), so a plain counter is safe.
  nonisolated(unsafe) public static var flops = 0
  /// Wall-clock nanoseconds inside sgemm calls since the counter was last reset (one clock
  /// read per call; the calls are large enough that this costs nothing measurable).
  nonisolated(unsafe) public static var nanos: UInt64 = 0

  /// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, all row-major and contiguous.
  public static func sgemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
    a: UnsafePointer<Float>, b: UnsafePointer<Float>, beta: Float = 0, c: UnsafeMutablePointer<Float>
  ) {
    precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
    guard m > 0, n > 0 else { return }
    flops &+= 2 * m * n * k
    let t0 = DispatchTime.now().uptimeNanoseconds
    defer { nanos &+= DispatchTime.now().uptimeNanoseconds - t0 }
    let lda = transA ? m : k, ldb = transB ? k : n, threads = Parallel.threads
    guard threads > 1, 2 * m * n * k >= splitFlops else {
      call(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, n)
      return
    }
    if k >= 4 * Swift.max(m, n) {
      splitDepth(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, parts: threads)
      return
    }
    // Whole row (or column) blocks of C per core, each a single-threaded call.
    let alongM = m >= n, extent = alongM ? m : n
    let parts = Swift.min(threads, Swift.max(1, extent / 16))
    Parallel.chunks(parts, grain: 1) { _, r in
      for p in r {
        let lo = extent * p / parts / 8 * 8, hi = p == parts - 1 ? extent : extent * (p + 1) / parts / 8 * 8
        guard hi > lo else { continue }
        if alongM {
          call(transA, transB, hi - lo, n, k, alpha, a + (transA ? lo : lo * lda), lda, b, ldb, beta, c + lo * n, n)
        } else {
          call(transA, transB, m, hi - lo, k, alpha, a, lda, b + (transB ? lo * ldb : lo), ldb, beta, c + lo, n)
        }
      }
    }
  }

  /// A product much deeper than it is wide (a weight gradient, K = batch × tokens): each core
  /// takes a slice of K, the first into C and the others into scratch, and the slices are
  /// summed. Splitting C's rows or columns instead makes every core pack the whole of the
  /// other operand, all K rows of it (1–15% slower on ViT and ConvNeXt weight gradients).
  static func splitDepth(
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
    _ b: UnsafePointer<Float>, _ ldb: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, parts: Int
  ) {
    splitDepth(m: m, n: n, k: k, beta: beta, c: c, parts: parts) { _, lo, hi, beta, out in
      // Slice [lo, hi) of K: columns of op(A) and rows of op(B).
      call(transA, transB, m, n, hi - lo, alpha, a + (transA ? lo * lda : lo), lda, b + (transB ? lo : lo * ldb), ldb, beta, out, n)
    }
  }

  /// The depth split itself: `product(chunk, lo, hi, beta, out)` computes the product over
  /// slice [lo, hi) of K into `out` (C for the first slice, scratch for the others), then
  /// the slices are summed into C.
  static func splitDepth(
    m: Int, n: Int, k: Int, beta: Float, c: UnsafeMutablePointer<Float>, parts: Int,
    product: (_ chunk: Int, _ lo: Int, _ hi: Int, _ beta: Float, _ out: UnsafeMutablePointer<Float>) -> Void
  ) {
    let partials = Scratch.floats(m * n * (parts - 1), slot: 2)
    Parallel.chunks(parts, grain: 1) { chunk, r in
      for p in r {
        let lo = k * p / parts, hi = k * (p + 1) / parts
        if p == 0 {
          product(chunk, lo, hi, beta, c)
        } else {
          product(chunk, lo, hi, 0, partials + (p - 1) * m * n)
        }
      }
    }
    Parallel.chunks(m * n, grain: 1 << 14) { _, r in
      for p in 1..<parts {
        let part = partials + (p - 1) * m * n + r.lowerBound
        VMath.map(r.count, c + r.lowerBound, part, c + r.lowerBound) { $0 + $1 }
      }
    }
  }

  /// Products of at least this many FLOPs (about 10 µs of work) are split into one block of
  /// C per core on the worker pool; smaller ones run on the calling thread. OpenBLAS itself
  /// stays single-threaded: its threading lost up to a fifth on the tall, thin products of a
  /// ViT or ConvNeXt (K = 96…768 against M in the tens of thousands), and its threads wait
  /// for cores that the pool's spinning workers hold (a small ViT's step: 13 ms with OpenBLAS
  /// threading the products under 2²⁴ FLOPs, 10 ms with this split).
  static let splitFlops = 1 << 21

  @inline(__always) static func call(
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
    _ b: UnsafePointer<Float>, _ ldb: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
  ) {
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), blasint(k), alpha, a,
      blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
  }

  /// `count` independent products of one shape (a batched matmul), split over `threads`
  /// callers that each run single-threaded sgemm: a product this small runs below half the
  /// machine's rate when OpenBLAS splits it over threads, and well above when whole products
  /// go to each core. `offsets(i)` gives product i's (A, B, C) element offsets.
  public static func batched(
    count: Int, threads: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: GEMMOperand, b: GEMMOperand,
    c: UnsafeMutablePointer<Float>, bf16: Bool = false, offsets: (Int) -> (Int, Int, Int)
  ) {
    guard m > 0, n > 0, count > 0 else { return }
    let t0 = DispatchTime.now().uptimeNanoseconds
    let lda = transA ? m : k, ldb = transB ? k : n
    let mixed = bf16 || a.bf16 || b.bf16
    if mixed { BF16GEMM.ensureWorkspaces(Swift.max(threads, 1)) }
    func one(_ i: Int, _ chunk: Int) {
      let (oa, ob, oc) = offsets(i)
      if mixed {
        BF16GEMM.one(transA, transB, m, n, k, 1, a.advanced(by: oa), lda, b.advanced(by: ob), ldb, 0, c + oc, n, chunk: chunk)
      } else {
        call(transA, transB, m, n, k, 1, a.f32 + oa, lda, b.f32 + ob, ldb, 0, c + oc, n)
      }
    }
    if threads > 1 && count >= threads {
      Parallel.chunks(count, grain: 1) { chunk, r in for i in r { one(i, chunk) } }
    } else {
      for i in 0..<count { one(i, 0) }
    }
    flops &+= 2 * m * n * k * count
    nanos &+= DispatchTime.now().uptimeNanoseconds - t0
  }

  /// Products at most this many FLOPs go to `batched`'s one-product-per-core path.
  public static let smallProductFlops = 1 << 25

  /// The machine's sgemm rate in GFLOP/s: a 4096×4096×4096 product on `threads` threads,
  /// one warm-up call, then the median of three.
  public static func peakGFLOPs(threads: Int, size: Int = 4096) -> Double {
    setThreads(threads)
    defer { setThreads(1) }
    let a = UnsafeMutablePointer<Float>.allocate(capacity: size * size)
    let b = UnsafeMutablePointer<Float>.allocate(capacity: size * size)
    let c = UnsafeMutablePointer<Float>.allocate(capacity: size * size)
    defer {
      a.deallocate()
      b.deallocate()
      c.deallocate()
    }
    for i in 0..<(size * size) {
      a[i] = Float(i % 7) * 0.25
      b[i] = Float(i % 5) * 0.5
    }
    var times: [Double] = []
    for run in 0..<4 {
      let t0 = DispatchTime.now().uptimeNanoseconds
      cblas_sgemm(
        CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(size), blasint(size), blasint(size), 1, a, blasint(size), b, blasint(size), 0,
        c, blasint(size))
      if run > 0 { times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9) }
    }
    return 2 * Double(size) * Double(size) * Double(size) / times.sorted()[1] / 1e9
  }

  /// Sets the number of OpenBLAS threads.
  public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
