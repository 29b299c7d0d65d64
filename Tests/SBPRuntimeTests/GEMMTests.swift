// GEMMTests.swift: the OpenBLAS sgemm wrapper computes row-major products with every transpose.
import XCTest

@testable import SBPRuntime

final class GEMMTests: XCTestCase {
  func naive(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int, ta: Bool, tb: Bool) -> [Float] {
    var c = [Float](repeating: 0, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var s: Float = 0
        for p in 0..<k { s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]) }
        c[i * n + j] = s
      }
    }
    return c
  }

  func testAllTransposes() {
    let m = 5, n = 7, k = 3
    let a = (0..<(m * k)).map { Float($0 % 7) - 3 }, b = (0..<(k * n)).map { Float($0 % 5) * 0.5 }
    for ta in [false, true] {
      for tb in [false, true] {
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { pa in
          b.withUnsafeBufferPointer { pb in
            c.withUnsafeMutableBufferPointer { pc in
              GEMM.sgemm(transA: ta, transB: tb, m: m, n: n, k: k, a: pa.baseAddress!, b: pb.baseAddress!, c: pc.baseAddress!)
            }
          }
        }
        XCTAssertEqual(c, naive(a, b, m: m, n: n, k: k, ta: ta, tb: tb), "ta=\(ta) tb=\(tb)")
      }
    }
  }
}
