// FusedKernelTests.swift: kernels that the executor runs in place of two nodes give exactly what the two nodes give.
import SBPIR
import XCTest

@testable import SBPRuntime

final class FusedKernelTests: XCTestCase {
  func buffer(_ values: [Float]) -> Buffer {
    let b = Buffer(TensorType(.f32, [values.count]))
    b.f32.update(from: values, count: values.count)
    return b
  }

  /// gelu and its gradient in one pass equal the separate kernels bit for bit, for both
  /// approximations, over a length with a partial vector at the end, also when the results
  /// overwrite their operands (as the memory plan may arrange).
  func testGeluAndGradEqualsTheTwoKernels() {
    let n = 8 * 300 + 5  // more than one thread's grain, and a tail
    let xs = (0..<n).map { Float(($0 * 7919) % 2001) / 250 - 4 }
    let dys = (0..<n).map { Float(($0 * 104_729) % 977) / 300 - 1.6 }
    let saved = Parallel.threads
    Parallel.threads = 2  // chunks split mid-array
    defer { Parallel.threads = saved }
    for a in [GeluApproximation.none, .tanh] {
      let x = buffer(xs), dy = buffer(dys)
      let y0 = buffer(xs), dx0 = buffer(dys)
      Elementwise.unary(.gelu(a), x, y0)
      Elementwise.geluGrad(a, x, dy, dx0)
      let y1 = buffer(xs), dx1 = buffer(dys)
      Elementwise.geluAndGrad(a, x, dy, y1, dx1)
      XCTAssertEqual(Array(y1.floats), Array(y0.floats), "\(a): gelu")
      XCTAssertEqual(Array(dx1.floats), Array(dx0.floats), "\(a): gelu_grad")
      // In place: y over x and dx over dy.
      let xi = buffer(xs), dyi = buffer(dys)
      Elementwise.geluAndGrad(a, xi, dyi, xi, dyi)
      XCTAssertEqual(Array(xi.floats), Array(y0.floats), "\(a): gelu in place")
      XCTAssertEqual(Array(dyi.floats), Array(dx0.floats), "\(a): gelu_grad in place")
    }
  }
}
