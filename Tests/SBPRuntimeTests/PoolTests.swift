// PoolTests.swift: max and average pooling give what PyTorch's max_pool2d and avg_pool2d give, padding, ceil mode and divisors included.
import XCTest

@testable import SBPIR
@testable import SBPRuntime

final class PoolTests: XCTestCase {
  /// (i·7 mod 11) − 5 over a 5×5 plane.
  let x: [Float] = (0..<25).map { Float(($0 * 7) % 11 - 5) }

  func run(_ op: Op, _ backward: Bool = false) throws -> [Float] {
    var g = Graph(name: "pool")
    let input = g.addInput("x", TensorType(.f32, [1, 1, 5, 5]))
    var y = try g.append(op, [input])[0]
    if backward {
      let ones = try g.append(.constant(Literal(f32: [1], shape: [])), [])[0]
      let dy = try g.append(.expand(g.type(of: y).shape), [ones])[0]
      guard case .maxPool(let geo) = op else { throw XCTSkip("max pooling only") }
      y = try g.append(.maxPoolGrad(geo), [input, dy])[0]
    }
    g.outputs = [GraphInput(value: y, name: "y")]
    let ex = try Executor(graph: try g.laidOut())
    ex.buffer(input).f32.update(from: x, count: 25)
    try ex.run()
    return Array(ex.buffer(y).floats)
  }

  func geo(_ k: Int, _ s: Int, _ p: Int, ceil: Bool = false) -> PoolGeometry {
    PoolGeometry(kernel: [k, k], strides: [s, s], pads: [p, p, p, p], dilations: [1, 1], ceilMode: ceil)
  }

  /// The figures are PyTorch 2.13's on the same plane.
  func testPoolingMatchesPyTorch() throws {
    XCTAssertEqual(try run(.maxPool(geo(3, 2, 1))), [4, 5, 5, 4, 4, 5, 3, 4, 2])
    XCTAssertEqual(try run(.maxPool(geo(2, 2, 0, ceil: true))), [4, 5, 3, 1, 4, 5, 3, 2, -2])
    let cases: [(Op, [Double])] = [
      (.averagePool(geo(3, 2, 1), countIncludePad: true), [-2 / 9, 5 / 9, 5 / 9, -7 / 9, -4 / 9, -2 / 9, 0, -3 / 9, -4 / 9]),
      (.averagePool(geo(3, 2, 1), countIncludePad: false), [-0.5, 5 / 6, 1.25, -7 / 6, -4 / 9, -1 / 3, 0, -0.5, -1]),
      (.averagePool(geo(2, 2, 0, ceil: true), countIncludePad: true), [-0.5, -0.25, 2, -2, 1, 0.5, 1, -1.5, -2]),
    ]
    for (op, want) in cases {
      let got = try run(op)
      XCTAssertEqual(got.count, want.count, op.name)
      for (a, b) in zip(got, want) { XCTAssertEqual(Double(a), b, accuracy: 1e-6, "\(op.attributes)") }
    }
    // PoolFormer's token mixer: 3×3, stride 1, pad 1, divisor without the padding.
    XCTAssertEqual(
      Array(try run(.averagePool(geo(3, 1, 1), countIncludePad: false)).prefix(8)).map { ($0 * 1e6).rounded() / 1e6 },
      [-0.5, -0.666667, 0.833333, 0.5, 1.25, -1.333333, -0.888889, 0])
  }

  /// The gradient of a sum of max pools: each window's one goes to its first maximum.
  func testMaxPoolGradientRoutesToTheFirstMaximum() throws {
    XCTAssertEqual(
      try run(.maxPool(geo(3, 2, 1)), true),
      [0, 0, 0, 2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0])
  }
}
