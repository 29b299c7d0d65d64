// BF16GEMMTests.swift: the bf16 GEMM kernels against OpenBLAS on the same (widened) operands, and the bf16 casts.
import COpenBLAS
import SBPIR
import XCTest

@testable import SBPRuntime

final class BF16GEMMTests: XCTestCase {
  /// Every available kernel, on shapes that leave partial register and cache blocks (odd
  /// depth for the pair-packing kernel, a depth past one 256 block), both transposes, and
  /// beta: within float rounding of sgemm on the widened operands (the products are exact
  /// in fp32; only the order of the sums differs).
  func testKernelsMatchSgemmOnWidenedOperands() {
    var rng = SplitMix64(seed: 11)
    let kernels = BF16GEMM.Kernel.allCases.filter(\.available)
    XCTAssertTrue(kernels.contains(.widen))
    for (m, n, k) in [(1, 1, 1), (13, 33, 7), (37, 70, 257), (150, 40, 300), (5, 1100, 19)] {
      for transA in [false, true] {
        for transB in [false, true] {
          let af = (0..<(m * k)).map { _ in Float(rng.normal()) }, bf = (0..<(k * n)).map { _ in Float(rng.normal()) }
          var a = [UInt16](repeating: 0, count: m * k), b = [UInt16](repeating: 0, count: k * n)
          BF16GEMM.narrow(af, &a, count: a.count)
          BF16GEMM.narrow(bf, &b, count: b.count)
          var aw = [Float](repeating: 0, count: a.count), bw = [Float](repeating: 0, count: b.count)
          BF16GEMM.widen(a, &aw, count: a.count)
          BF16GEMM.widen(b, &bw, count: b.count)
          let c0 = (0..<(m * n)).map { _ in Float(rng.normal()) }
          var ref = c0, bound = [Float](repeating: 0, count: m * n)
          let (lda, ldb) = (transA ? m : k, transB ? k : n)
          cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), blasint(k), 0.5,
            aw, blasint(lda), bw, blasint(ldb), 2, &ref, blasint(n))
          cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), blasint(k), 1,
            aw.map(abs), blasint(lda), bw.map(abs), blasint(ldb), 0, &bound, blasint(n))
          // Each kernel on bf16 operands, and on the unrounded fp32 ones (rounded as packed):
          // both must be the product of the rounded values.
          for kernel in kernels {
            for fp32Operands in [false, true] {
              var c = c0
              a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                  af.withUnsafeBufferPointer { fa in
                    bf.withUnsafeBufferPointer { fb in
                      let (oa, ob) =
                        fp32Operands
                        ? (GEMMOperand(fa.baseAddress!), GEMMOperand(fb.baseAddress!)) : (GEMMOperand(pa.baseAddress!), GEMMOperand(pb.baseAddress!))
                      BF16GEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: oa, b: ob, beta: 2, c: &c, kernel: kernel)
                    }
                  }
                }
              }
              for i in 0..<(m * n) {
                let tolerance = 1e-6 * Float(k) * bound[i] + 1e-6 * abs(c0[i])
                if abs(c[i] - ref[i]) > tolerance {
                  XCTFail("\(kernel) fp32 operands \(fp32Operands) m\(m) n\(n) k\(k) tA \(transA) tB \(transB) at \(i): \(c[i]) vs \(ref[i])")
                  break
                }
              }
            }
          }
        }
      }
    }
  }

  /// Round to nearest, ties to even; infinities stay, NaN stays NaN; widening is exact.
  func testCastsRoundToNearestEven() {
    let x: [Float] = [1, 1 + 1.0 / 256, 1 + 3.0 / 256, 1 + 1.0 / 512, -2.5, .infinity, -.infinity, .nan, 3.0e38, 1e-40]
    var y = [UInt16](repeating: 0, count: x.count)
    BF16GEMM.narrow(x, &y, count: x.count)
    var back = [Float](repeating: 0, count: x.count)
    BF16GEMM.widen(y, &back, count: x.count)
    XCTAssertEqual(back[0], 1)
    XCTAssertEqual(back[1], 1, "a tie rounds to the even neighbour, 1")
    XCTAssertEqual(back[2], 1 + 4.0 / 256, "a tie rounds to the even neighbour, 1 + 2⁻⁶")
    XCTAssertEqual(back[3], 1)
    XCTAssertEqual(back[4], -2.5)
    XCTAssertEqual(back[5], .infinity)
    XCTAssertEqual(back[6], -.infinity)
    XCTAssertTrue(back[7].isNaN)
    XCTAssertLessThanOrEqual(abs(back[8] - 3.0e38), 3.0e38 / 512, "within half a bf16 ulp (2⁻⁹ relative)")
    XCTAssertEqual(back[9], Float(sign: .plus, exponent: -133, significand: 1), "a subnormal rounds to bf16's spacing there, 2⁻¹³³")
  }
}
