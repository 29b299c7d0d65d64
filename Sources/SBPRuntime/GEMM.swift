// GEMM.swift: the runtime's matrix-multiply kernel, a thin checked wrapper over OpenBLAS sgemm.
import COpenBLAS
import Dispatch

/// Row-major single-precision GEMM kernels backed by OpenBLAS.
public enum GEMM {
  /// Σ 2·M·N·K over every sgemm call since the counter was last reset. The executor calls
  /// sgemm from one thread (OpenBLAS threads inside a call), so a plain counter is safe.
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
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
      blasint(m), blasint(n), blasint(k), alpha, a, blasint(transA ? m : k), b, blasint(transB ? k : n),
      beta, c, blasint(n))
  }

  /// The machine's sgemm rate in GFLOP/s: a 4096×4096×4096 product on `threads` threads,
  /// one warm-up call, then the median of three.
  public static func peakGFLOPs(threads: Int, size: Int = 4096) -> Double {
    setThreads(threads)
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
