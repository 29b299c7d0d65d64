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

/// BatchNorm's kernels against their definitions: evaluation with running statistics, the
/// batch statistics training returns, and PyTorch's running-average update (unbiased variance).
final class BatchNormKernelTests: XCTestCase {
  func testBatchNormKernelsFollowTheirDefinitions() throws {
    let (n, c, s) = (3, 2, 4)
    let x = (0..<(n * c * s)).map { Float(sin(Double($0) * 0.7) * 2 + Double($0 % 3)) }
    var g = Graph(name: "bn")
    let input = g.addInput("x", TensorType(.f32, [n, c, 2, 2]))
    func param(_ name: String, _ v: [Float]) -> ValueID {
      v.withUnsafeBytes { g.addParam(name, TensorType(.f32, [c]), trainable: name.count == 1, data: TensorBytes(copying: $0)) }
    }
    let scale = param("w", [1.5, -0.5]), bias = param("b", [0.25, 2]), rm = param("rm", [0.1, -0.2]), rv = param("rv", [1.2, 0.8])
    let t = try g.append(.batchNormTraining(epsilon: 1e-5), [input, scale, bias])
    let e = try g.append(.batchNorm(epsilon: 1e-5, momentum: 0.9), [input, scale, bias, rm, rv])[0]
    let u = try g.append(.runningStats(momentum: 0.9, count: n * s), [rm, rv, t[1], t[2]])
    g.outputs = [GraphInput(value: t[0], name: "y"), GraphInput(value: e, name: "eval")] + u.map { GraphInput(value: $0, name: "stat") }
    let ex = try Executor(graph: try g.laidOut())
    ex.buffer(input).f32.update(from: x, count: x.count)
    let before = (Array(ex.buffer(rm).floats), Array(ex.buffer(rv).floats))
    try ex.run()
    for ch in 0..<c {
      let vals = (0..<n).flatMap { b in (0..<s).map { Double(x[(b * c + ch) * s + $0]) } }
      let mu = vals.reduce(0, +) / Double(vals.count)
      let v = vals.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / Double(vals.count)
      let w = [1.5, -0.5][ch], b = [0.25, 2.0][ch]
      for bi in 0..<n {
        for k in 0..<s {
          let i = (bi * c + ch) * s + k
          XCTAssertEqual(Double(ex.buffer(t[0]).f32[i]), (Double(x[i]) - mu) / (v + 1e-5).squareRoot() * w + b, accuracy: 1e-5)
          let r = (Double(x[i]) - Double(before.0[ch])) / (Double(before.1[ch]) + 1e-5).squareRoot() * w + b
          XCTAssertEqual(Double(ex.buffer(e).f32[i]), r, accuracy: 1e-5)
        }
      }
      // The update ran in place: the running statistics' own buffers hold the new values.
      XCTAssertEqual(Double(ex.buffer(rm).f32[ch]), 0.9 * Double(before.0[ch]) + 0.1 * mu, accuracy: 1e-6)
      XCTAssertEqual(Double(ex.buffer(rv).f32[ch]), 0.9 * Double(before.1[ch]) + 0.1 * v * 12 / 11, accuracy: 1e-5)
    }
  }
}
