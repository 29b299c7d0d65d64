// SIMDMathTests.swift: the 8-lane exp, erf and tanh against libm over the ranges the kernels feed them.
import Glibc
import XCTest

@testable import SBPRuntime

final class SIMDMathTests: XCTestCase {
  /// Worst error of `f` against `ref` over [lo, hi] in `n` steps, relative to max(|ref|, floor).
  func worst(_ lo: Float, _ hi: Float, n: Int = 200_001, floor: Float, _ f: (V8) -> V8, _ ref: (Float) -> Float) -> (Float, Float) {
    var (err, at): (Float, Float) = (0, lo)
    var i = 0
    while i < n {
      var v = V8()
      for l in 0..<8 { v[l] = lo + (hi - lo) * Float(min(i + l, n - 1)) / Float(n - 1) }
      let y = f(v)
      for l in 0..<8 {
        let want = ref(v[l]), e = abs(y[l] - want) / max(abs(want), floor)
        if e > err { (err, at) = (e, v[l]) }
      }
      i += 8
    }
    return (err, at)
  }

  /// exp over the whole finite range (softmax feeds it x − max ≤ 0), erf and tanh over the
  /// ranges GELU uses, within 4e-7 of libm, with or without FMA: relative for exp and erf
  /// (erf below 1e-3 absolute), absolute for tanh, whose 1 − 2/(e^{2x} + 1) form cancels near 0.
  func testAgainstLibm() {
    let exp = worst(-87, 88, floor: 0, { VMath.exp($0) }, { expf($0) })
    XCTAssertLessThan(exp.0, 4e-7, "exp at \(exp.1)")
    let erf = worst(-6, 6, floor: 1e-3, { VMath.erf($0) }, { erff($0) })
    XCTAssertLessThan(erf.0, 4e-7, "erf at \(erf.1)")
    let tanh = worst(-10, 10, floor: 1, { VMath.tanh($0) }, { tanhf($0) })
    XCTAssertLessThan(tanh.0, 4e-7, "tanh at \(tanh.1)")
    // The clamped ends.
    XCTAssertEqual(VMath.exp(V8(repeating: -100))[0], expf(-87.33), accuracy: 1e-38)
    XCTAssertEqual(VMath.erf(V8(repeating: 9))[0], 1)
    XCTAssertEqual(VMath.tanh(V8(repeating: -20))[0], -1)
  }
}
