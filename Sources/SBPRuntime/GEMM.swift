// GEMM.swift: the runtime's matrix-multiply kernel, a thin checked wrapper over OpenBLAS sgemm.
import COpenBLAS

/// Row-major single-precision GEMM kernels backed by OpenBLAS.
public enum GEMM {
  /// Σ 2·M·N·K over every sgemm call since the counter was last reset. The executor calls
  /// sgemm from one thread (OpenBLAS threads inside a call), so a plain counter is safe.
  nonisolated(unsafe) public static var flops = 0

  /// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, all row-major and contiguous.
  public static func sgemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
    a: UnsafePointer<Float>, b: UnsafePointer<Float>, beta: Float = 0, c: UnsafeMutablePointer<Float>
  ) {
    precondition(m >= 0 && n >= 0 && k >= 0, "sgemm: negative dimension")
    guard m > 0, n > 0 else { return }
    flops &+= 2 * m * n * k
    cblas_sgemm(
      CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
      blasint(m), blasint(n), blasint(k), alpha, a, blasint(transA ? m : k), b, blasint(transB ? k : n),
      beta, c, blasint(n))
  }

  /// Sets the number of OpenBLAS threads.
  public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
