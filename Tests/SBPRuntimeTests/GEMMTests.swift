// GEMMTests.swift: the OpenBLAS sgemm wrapper computes row-major products with every transpose.
import XCTest

@testable import SBPRuntime

final class GEMMTests: XCTestCase {
  /// alpha · op(A)·op(B) + beta · c, accumulated in double precision.
  func naive(
    _ a: [Float], _ b: [Float], m: Int, n: Int, k: Int, ta: Bool, tb: Bool, alpha: Double = 1, beta: Double = 0, c: [Float]? = nil
  ) -> [Double] {
    var out = [Double](repeating: 0, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var s: Double = 0
        for p in 0..<k { s += Double(ta ? a[p * m + i] : a[i * k + p]) * Double(tb ? b[j * k + p] : b[p * n + j]) }
        out[i * n + j] = alpha * s + beta * Double(c?[i * n + j] ?? 0)
      }
    }
    return out
  }

  /// `GEMM.sgemm` on arrays: c = alpha · op(A)·op(B) + beta · c.
  func sgemm(
    _ a: [Float], _ b: [Float], _ c: inout [Float], m: Int, n: Int, k: Int, ta: Bool, tb: Bool, alpha: Float = 1, beta: Float = 0
  ) {
    a.withUnsafeBufferPointer { pa in
      b.withUnsafeBufferPointer { pb in
        c.withUnsafeMutableBufferPointer { pc in
          GEMM.sgemm(
            transA: ta, transB: tb, m: m, n: n, k: k, alpha: alpha, a: pa.baseAddress!, b: pb.baseAddress!, beta: beta, c: pc.baseAddress!)
        }
      }
    }
  }

  func testAllTransposes() {
    let m = 5, n = 7, k = 3
    let a = (0..<(m * k)).map { Float($0 % 7) - 3 }, b = (0..<(k * n)).map { Float($0 % 5) * 0.5 }
    for ta in [false, true] {
      for tb in [false, true] {
        var c = [Float](repeating: 0, count: m * n)
        sgemm(a, b, &c, m: m, n: n, k: k, ta: ta, tb: tb)
        // Small halves and integers: every product and sum is exact, in f32 and in f64.
        XCTAssertEqual(c.map(Double.init), naive(a, b, m: m, n: n, k: k, ta: ta, tb: tb), "ta=\(ta) tb=\(tb)")
      }
    }
  }

  /// A product deep enough to be split along K over two threads (`splitDepth`) gives the
  /// double-precision result for every transpose, and keeps beta's share of C.
  func testDeepProductSplitAlongKMatchesNaive() {
    let saved = Parallel.threads
    Parallel.threads = 2
    defer { Parallel.threads = saved }
    let m = 16, n = 12, k = 1 << 16 + 1  // 2·m·n·k is past splitFlops, and k ≫ m, n
    XCTAssertGreaterThanOrEqual(2 * m * n * k, GEMM.splitFlops)
    let a = (0..<(m * k)).map { Float(($0 * 7919) % 17) / 16 - 0.5 }
    let b = (0..<(k * n)).map { Float(($0 * 104_729) % 13) / 12 - 0.5 }
    for ta in [false, true] {
      for tb in [false, true] {
        var c = [Float](repeating: 1, count: m * n)
        let want = naive(a, b, m: m, n: n, k: k, ta: ta, tb: tb, alpha: 0.5, beta: 2, c: c)
        sgemm(a, b, &c, m: m, n: n, k: k, ta: ta, tb: tb, alpha: 0.5, beta: 2)
        let worst = zip(c, want).map { abs(Double($0) - $1) / max(1, abs($1)) }.max()!
        XCTAssertLessThan(worst, 1e-4, "ta=\(ta) tb=\(tb)")
      }
    }
  }
}
