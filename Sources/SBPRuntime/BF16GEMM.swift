// BF16GEMM.swift: GEMM with bf16 operands and fp32 accumulation, on the kernel this CPU runs faster, split over the worker pool.
import CBF16
import Dispatch
import Foundation

/// Row-major GEMM whose operands are bf16 (the upper 16 bits of an fp32) and whose result
/// and accumulation are fp32: the product of a bf16 plan. Two kernels compute it
/// (`Sources/CBF16`), both with OpenBLAS-style packed panels:
/// - `widen` turns the operands into fp32 while packing and multiplies with fp32 FMA;
/// - `dot` keeps bf16 pairs and multiplies them with AVX512-BF16's vdpbf16ps.
/// The products are exact in fp32 either way, so both give the same result up to the order
/// of the sums. vdpbf16ps does twice FMA's multiply-adds per instruction, but not at the
/// same rate on every CPU: on this project's Emerald Rapids machine it issues at a quarter
/// of FMA's rate, half the FLOPs (BENCHMARKS.md). So the kernel is chosen by measuring.
public enum BF16GEMM {
  public enum Kernel: Int32, Sendable, CaseIterable {
    case widen = 0
    case dot = 1

    public var available: Bool { sbp_bf16_kernel_available(rawValue) != 0 }
  }

  /// The kernel `gemm` runs: `SBPC_BF16_GEMM=widen|dot` when given (and available);
  /// otherwise `dot` only where vdpbf16ps chains outrun FMA chains by half, measured once
  /// per process (about 10 ms). The margin is wide so that the choice, which changes the
  /// order of the sums, does not flip between runs on one machine: a CPU whose vdpbf16ps
  /// runs at its full rate does twice FMA's FLOPs, this one half.
  public static var kernel: Kernel { choice.kernel }

  /// Why `kernel` was chosen, in one line (what a bf16 run says once).
  public static var why: String { choice.why }

  private static let choice: (kernel: Kernel, why: String) = {
    if let name = ProcessInfo.processInfo.environment["SBPC_BF16_GEMM"],
      let k = Kernel.allCases.first(where: { "\($0)" == name }), k.available
    {
      return (k, "SBPC_BF16_GEMM=\(name)")
    }
    guard Kernel.dot.available else {
      return (.widen, "this CPU has no AVX512-BF16: bf16 operands are widened to fp32 and multiplied in fp32, with the same memory")
    }
    let dot = peakGFLOPs(.dot), fma = peakGFLOPs(.widen)
    let k: Kernel = dot > 1.5 * fma ? .dot : .widen
    return (
      k,
      String(
        format: "on this core vdpbf16ps chains reach %.0f GFLOP/s and fp32 FMA chains %.0f: %@", dot, fma,
        k == .dot ? "bf16 pairs are multiplied with vdpbf16ps" : "bf16 operands are widened to fp32 and multiplied in fp32")
    )
  }()

  /// GFLOP/s of independent chains of the kernel's multiply-add instruction on one core: the
  /// rate its GEMM can approach (0 when the CPU lacks the instruction).
  public static func peakGFLOPs(_ k: Kernel, iterations: Int = 200_000) -> Double {
    sbp_bf16_peak_gflops(k.rawValue, iterations)
  }

  /// GFLOP/s of a `size`³ product of bf16 operands on kernel `k`, split over `threads` (the
  /// rate a large product reaches; 1 warm-up, median of 3).
  public static func productGFLOPs(_ k: Kernel, threads: Int, size: Int = 2048) -> Double {
    let saved = Parallel.threads
    Parallel.threads = threads
    defer { Parallel.threads = saved }
    let a = [UInt16](repeating: 0x3F80, count: size * size)
    var c = [Float](repeating: 0, count: size * size)
    var times: [Double] = []
    a.withUnsafeBufferPointer { pa in
      c.withUnsafeMutableBufferPointer { pc in
        for run in 0..<4 {
          let t0 = DispatchTime.now().uptimeNanoseconds
          gemm(
            transA: false, transB: false, m: size, n: size, k: size, a: GEMMOperand(pa.baseAddress!), b: GEMMOperand(pa.baseAddress!),
            c: pc.baseAddress!, kernel: k)
          if run > 0 { times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9) }
        }
      }
    }
    return 2 * Double(size * size) * Double(size) / times.sorted()[1] / 1e9
  }

  /// Per-chunk panel memory, grown once to the pool's size: no allocation inside a step.
  nonisolated(unsafe) private static var workspaces: [UnsafeMutableRawPointer] = []

  static func ensureWorkspaces(_ count: Int) {
    while workspaces.count < count { workspaces.append(.allocate(byteCount: sbp_bf16_gemm_workspace(), alignment: 64)) }
  }

  /// One single-threaded product on chunk `chunk`'s panels (`ensureWorkspaces` first).
  @inline(__always) static func one(
    _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float, _ a: GEMMOperand, _ lda: Int, _ b: GEMMOperand,
    _ ldb: Int, _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int, chunk: Int, kernel: Kernel = BF16GEMM.kernel
  ) {
    sbp_bf16_gemm(
      kernel.rawValue, transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a.base, a.bf16 ? 0 : 1, Int32(lda), b.base,
      b.bf16 ? 0 : 1, Int32(ldb), beta, c, Int32(ldc), workspaces[chunk])
  }

  /// C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C, all row-major and contiguous; A
  /// and B bf16 or fp32 (an fp32 operand is rounded to bf16 as it is packed), C fp32. Split
  /// into one block of C's rows (or columns) per worker, as `GEMM.sgemm` splits; counted in
  /// `GEMM.flops` and `GEMM.nanos`.
  public static func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1, a: GEMMOperand, b: GEMMOperand, beta: Float = 0,
    c: UnsafeMutablePointer<Float>, kernel: Kernel = BF16GEMM.kernel
  ) {
    precondition(m >= 0 && n >= 0 && k >= 0, "bf16 gemm: negative dimension")
    guard m > 0, n > 0 else { return }
    GEMM.flops &+= 2 * m * n * k
    let t0 = DispatchTime.now().uptimeNanoseconds
    defer { GEMM.nanos &+= DispatchTime.now().uptimeNanoseconds - t0 }
    let lda = transA ? m : k, ldb = transB ? k : n
    let large = Parallel.threads > 1 && 2 * m * n * k >= GEMM.splitFlops
    // A product much deeper than wide (a weight gradient): each core a slice of K, as sgemm.
    if large, k >= 4 * Swift.max(m, n) {
      ensureWorkspaces(Parallel.threads)
      GEMM.splitDepth(m: m, n: n, k: k, beta: beta, c: c, parts: Parallel.threads) { chunk, lo, hi, beta, out in
        one(
          transA, transB, m, n, hi - lo, alpha, a.advanced(by: transA ? lo * lda : lo), lda, b.advanced(by: transB ? lo : lo * ldb), ldb, beta,
          out, n, chunk: chunk, kernel: kernel)
      }
      return
    }
    let alongM = m >= n, extent = alongM ? m : n
    let parts = large ? Swift.min(Parallel.threads, Swift.max(1, extent / 32)) : 1
    ensureWorkspaces(Parallel.chunkCount(parts, grain: 1))
    Parallel.chunks(parts, grain: 1) { chunk, r in
      for p in r {
        let lo = extent * p / parts / 16 * 16, hi = p == parts - 1 ? extent : extent * (p + 1) / parts / 16 * 16
        guard hi > lo else { continue }
        if alongM {
          one(
            transA, transB, hi - lo, n, k, alpha, a.advanced(by: transA ? lo : lo * lda), lda, b, ldb, beta, c + lo * n, n, chunk: chunk,
            kernel: kernel)
        } else {
          one(
            transA, transB, m, hi - lo, k, alpha, a, lda, b.advanced(by: transB ? lo * ldb : lo), ldb, beta, c + lo, n, chunk: chunk,
            kernel: kernel)
        }
      }
    }
  }

  /// fp32 to bf16, rounding to nearest even; and back (exact).
  public static func narrow(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<UInt16>, count: Int) { sbp_f32_to_bf16(x, y, count) }
  public static func widen(_ x: UnsafePointer<UInt16>, _ y: UnsafeMutablePointer<Float>, count: Int) { sbp_bf16_to_f32(x, y, count) }
}
