// FusedKernelTests.swift: kernels that run two nodes as one give what the two nodes give, the blocked transpose gives what an element-by-element copy gives, every unary kernel matches its reference, and a layer norm's gradient from its saved x̂ matches the one from x.
import SBPIR
import SBPPasses
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
      Elementwise.unaryGrad(.gelu(a), x, dy, dx0)
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

  /// Attention's data movement as the executor runs it, one kernel per pair: transpose →
  /// split (q, k, v out of the qkv projection) and concat → transpose (their gradients back),
  /// equal to the transpose, split and concat kernels run one after the other.
  func testMovementPairsEqualTheirTwoKernels() throws {
    let shape = [2, 5, 3, 2, 4], perm = [2, 0, 3, 1, 4]
    var g = Graph(name: "movement")
    let x = g.addInput("x", TensorType(.f32, shape))
    let t = try g.append(.transpose(perm), [x])[0]
    let parts = try g.append(.split(axis: 0, sizes: [1, 1, 1]), [t])
    let c = try g.append(.concat(axis: 0), [parts[2], parts[0], parts[1]])[0]
    let y = try g.append(.transpose([1, 3, 0, 2, 4]), [c])[0]
    g.outputs = parts.map { GraphInput(value: $0, name: "part") } + [GraphInput(value: y, name: "y")]
    XCTAssertEqual(MemoryPlan.movementPairs(g.nodes, outputs: Set(g.outputs.map(\.value))), [0: 1, 2: 3])
    let ex = try Executor(graph: try g.laidOut(), threads: 2)
    XCTAssertNotNil(ex.steps[1].pre.movement, "transpose → split runs as one kernel")
    XCTAssertNotNil(ex.steps[3].pre.movement, "concat → transpose runs as one kernel")
    let count = shape.reduce(1, *)
    let xs: [Float] = (0..<count).map { Float($0) * 0.5 - 3 }
    ex.buffer(x).f32.update(from: xs, count: xs.count)
    try ex.run()
    // The same through the plain kernels.
    let bx = buffer(xs)
    let bt = Buffer(g.type(of: t)), bparts = parts.map { Buffer(g.type(of: $0)) }, bc = Buffer(g.type(of: c))
    let by = Buffer(g.type(of: y))
    Movement.strided(Buffer(viewing: bx.raw, g.type(of: x), base: bx), base: 0, strides: [Movement.transposeStrides(perm, shape)], bt)
    Movement.split(axis: 0, bt, bparts)
    Movement.concat(axis: 0, [bparts[2], bparts[0], bparts[1]], bc)
    Movement.strided(bc, base: 0, strides: [Movement.transposeStrides([1, 3, 0, 2, 4], g.type(of: c).shape)], by)
    for (v, b) in zip(parts, bparts) { XCTAssertEqual(Array(ex.buffer(v).floats), Array(b.floats), "split result") }
    XCTAssertEqual(Array(ex.buffer(y).floats), Array(by.floats), "transposed concat")
  }

  /// Transposes that move the contiguous axis (the tiled path, 8×8 blocks in registers plus
  /// element-by-element edges) equal an index-by-index copy, for sizes below, at and past the
  /// block and tile widths and with the moved axes anywhere among the others.
  func testTiledTransposesEqualAnElementByElementCopy() throws {
    let cases: [([Int], [Int])] = [
      ([8, 8], [1, 0]), ([7, 9], [1, 0]), ([64, 16], [1, 0]), ([65, 17], [1, 0]), ([3, 130, 24], [0, 2, 1]),
      ([2, 96, 7, 9], [0, 2, 3, 1]), ([2, 9, 11, 40], [0, 3, 1, 2]), ([5, 3, 16, 8], [2, 0, 3, 1]),
    ]
    for (shape, perm) in cases {
      let count = shape.reduce(1, *)
      let x = Buffer(TensorType(.f32, shape))
      for i in 0..<count { x.f32[i] = Float(i) }
      let outShape = perm.map { shape[$0] }
      let y = Buffer(TensorType(.f32, outShape))
      Movement.strided(x, base: 0, strides: [Movement.transposeStrides(perm, shape)], y)
      // out[i] = x[Σ i_d · stride(perm[d])], walked as an odometer over the output's indices.
      let inStrides = shape.indices.map { d in shape[(d + 1)...].reduce(1, *) }
      var index = [Int](repeating: 0, count: outShape.count), wrong = 0
      for o in 0..<count {
        let source = zip(index, perm).reduce(0) { $0 + $1.0 * inStrides[$1.1] }
        if y.f32[o] != Float(source) { wrong += 1 }
        var d = outShape.count - 1
        while d >= 0 {
          index[d] += 1
          if index[d] < outShape[d] { break }
          index[d] = 0
          d -= 1
        }
      }
      XCTAssertEqual(wrong, 0, "\(shape) by \(perm)")
    }
  }
}

/// Each unary function's forward and gradient kernels against `Unary`'s double-precision
/// reference, over a range with a partial vector at the end: the table a new function is
/// held to when it is added.
extension FusedKernelTests {
  func testEveryUnaryKernelMatchesItsReference() {
    let n = 8 * 40 + 3
    for f in Unary.all {
      let (lo, hi): (Float, Float) =
        switch f {
        case .sqrt, .reciprocal: (0.25, 4)
        case .exp: (-4, 4)
        case .erf, .tanh, .neg, .relu, .sigmoid, .silu, .gelu, .hardSigmoid, .hardSwish, .clip: (-8, 8)
        }
      let xs = (0..<n).map { lo + (hi - lo) * Float($0) / Float(n - 1) + 1e-3 }
      let dys = (0..<n).map { Float(($0 * 37) % 19) / 9 - 1 }
      let x = buffer(xs), dy = buffer(dys), y = buffer(xs), dx = buffer(dys)
      Elementwise.unary(f, x, y)
      Elementwise.unaryGrad(f, x, dy, dx)
      for i in 0..<n {
        let want = f.apply(Double(xs[i])), wantGrad = Double(dys[i]) * f.derivative(Double(xs[i]))
        XCTAssertEqual(Double(y.f32[i]), want, accuracy: 2e-6 * max(1, abs(want)), "\(f.name)(\(xs[i]))")
        XCTAssertEqual(Double(dx.f32[i]), wantGrad, accuracy: 2e-6 * max(1, abs(wantGrad)), "\(f.name)_grad(\(xs[i]))")
      }
    }
  }

  /// The reference derivative is the reference function's slope (central differences in double).
  func testEveryReferenceDerivativeIsTheSlope() {
    for f in Unary.all {
      // Points away from every kink (0, ±3, 6).
      for x in stride(from: 0.3, through: 2.9, by: 0.4) {
        let h = 1e-6
        let slope = (f.apply(x + h) - f.apply(x - h)) / (2 * h)
        XCTAssertEqual(f.derivative(x), slope, accuracy: 1e-6 * max(1, abs(slope)), "\(f.name)′(\(x))")
        // The negative side, where the function is defined and smooth there.
        switch f {
        case .relu, .sqrt: continue
        case .erf, .tanh, .exp, .neg, .sigmoid, .reciprocal, .silu, .gelu, .hardSigmoid, .hardSwish, .clip: break
        }
        let slopeNeg = (f.apply(-x + h) - f.apply(-x - h)) / (2 * h)
        XCTAssertEqual(f.derivative(-x), slopeNeg, accuracy: 1e-6 * max(1, abs(slopeNeg)), "\(f.name)′(\(-x))")
      }
    }
  }

  /// `layer_norm_saving` gives `layer_norm`'s result bit for bit, x̂ to bf16 rounding and
  /// 1/σ; the gradient and the affine rebuilt from x̂ (here unrounded, in f32) give what
  /// `layer_norm_grad` and `layer_norm` give from x, over rows split between two threads and
  /// a row length with a partial vector.
  func testLayerNormFromSavedNormalizedInput() {
    let rows = 37, n = 20, shape = [rows, n]
    let xs = (0..<rows * n).map { Float(($0 * 7919) % 2003) / 97 - 9 + Float($0 / n) }
    let dys = (0..<rows * n).map { Float(($0 * 104_729) % 977) / 300 - 1.6 }
    let gs = (0..<n).map { 0.5 + Float($0) / 16 }, bs = (0..<n).map { Float($0) / 8 - 1 }
    let saved = Parallel.threads
    Parallel.threads = 2
    defer { Parallel.threads = saved }
    func make(_ v: [Float], _ s: [Int]) -> Buffer {
      let b = Buffer(TensorType(.f32, s))
      b.f32.update(from: v, count: v.count)
      return b
    }
    let x = make(xs, shape), g = make(gs, [n]), b = make(bs, [n]), dy = make(dys, shape)
    let y0 = make(xs, shape), y1 = make(xs, shape)
    Norm.layerNorm(axis: 1, eps: 1e-5, x, g, b, y0)
    let xhat = Buffer(TensorType(.bf16, shape)), rstd = Buffer(TensorType(.f32, [rows]))
    Norm.layerNormSaving(axis: 1, eps: 1e-5, x, g, b, y1, xhat, rstd)
    XCTAssertEqual(Array(y1.floats), Array(y0.floats))
    var exact = [Float](repeating: 0, count: rows * n)
    for r in 0..<rows {
      let row = xs[(r * n)..<((r + 1) * n)]
      let mean = row.reduce(0, +) / Float(n)
      let inv = 1 / (row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(n) + 1e-5).squareRoot()
      XCTAssertEqual(rstd.f32[r], inv, accuracy: inv * 1e-5, "row \(r): 1/σ")
      for i in 0..<n {
        exact[r * n + i] = (xs[r * n + i] - mean) * inv
        let rounded = Float(bitPattern: UInt32(xhat.bf16[r * n + i]) << 16)
        XCTAssertEqual(rounded, exact[r * n + i], accuracy: abs(exact[r * n + i]) / 256 + 1e-6, "row \(r): x̂ to bf16")
      }
    }
    let xh32 = make(exact, shape)
    let dx0 = make(dys, shape), dg0 = make(gs, [n]), db0 = make(gs, [n])
    let dx1 = make(dys, shape), dg1 = make(gs, [n]), db1 = make(gs, [n])
    Norm.layerNormGrad(axis: 1, eps: 1e-5, x, g, dy, dx0, dg0, db0)
    Norm.layerNormGradSaved(axis: 1, xh32, g, dy, rstd, dx1, dg1, db1)
    for (got, want, what) in [(dx1, dx0, "dx"), (dg1, dg0, "dscale"), (db1, db0, "dbias")] {
      let scale = want.floats.map(abs).max()!
      for i in 0..<want.count { XCTAssertEqual(got.f32[i], want.f32[i], accuracy: scale * 1e-5, "\(what)[\(i)]") }
    }
    // From the bf16 x̂ the gradient moves by about bf16's rounding, no more.
    let dx2 = make(dys, shape), dg2 = make(gs, [n]), db2 = make(gs, [n])
    Norm.layerNormGradSaved(axis: 1, xhat, g, dy, rstd, dx2, dg2, db2)
    let scale = dx0.floats.map(abs).max()!
    for i in 0..<dx0.count { XCTAssertEqual(dx2.f32[i], dx0.f32[i], accuracy: scale / 64, "dx[\(i)] from bf16 x̂") }
    let y2 = make(xs, shape)
    Norm.layerNormAffine(axis: 1, xh32, g, b, y2)
    for i in 0..<y0.count { XCTAssertEqual(y2.f32[i], y0.f32[i], accuracy: 1e-4, "affine[\(i)]") }
  }
}
