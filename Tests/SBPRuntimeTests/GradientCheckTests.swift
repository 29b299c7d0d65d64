// GradientCheckTests.swift: every gradient rule against central finite differences on small random graphs.
//
// The second oracle, sharing no code with the PyTorch references. Each case builds one op (or a
// short chain) on random trainable inputs, takes loss = Σ out·R for a fixed random R, and compares
// autodiff's gradient with central differences in float32: ε = 2e-3, at up to 12 coordinates per
// input, passing when ‖fd − g‖₂ ≤ 2e-2 · max(‖g‖₂, 1e-3). float32 rounding adds about
// 6e-8·|loss|/ε ≈ 1e-4 (absolute) and the O(ε²) truncation error stays far below the bound even
// when a gradient's terms nearly cancel (with ε = 1e-2 about 3% of random graphs failed that way;
// with 2e-3, none of 121 did: SBPC_GRADCHECK_SALT=N draws other graphs).
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPRuntime

struct LCG {
  var s: UInt64
  mutating func next() -> Float {
    s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return Float(s >> 40) / Float(1 << 24)
  }
  /// Uniform in [lo, hi).
  mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * next() }
}

struct GradCase {
  var name: String
  var shapes: [[Int]]
  /// Inputs are drawn from this range (kept away from kinks and poles where an op has them).
  var range: (Float, Float) = (-1, 1)
  var build: (inout Graph, [ValueID]) throws -> ValueID
}

/// Extra seed bits; SBPC_GRADCHECK_SALT lets the check be rerun on other random graphs.
let seedSalt = UInt64(ProcessInfo.processInfo.environment["SBPC_GRADCHECK_SALT"] ?? "") ?? 0

final class GradientCheckTests: XCTestCase {
  func constParam(_ g: inout Graph, _ name: String, _ t: TensorType, _ bytes: [UInt8]) -> ValueID {
    bytes.withUnsafeBytes { g.addParam(name, t, trainable: false, data: TensorBytes(copying: $0)) }
  }

  func check(_ c: GradCase, file: StaticString = #filePath, line: UInt = #line) throws {
    for (k, rel) in try relativeErrors(c).enumerated() {
      XCTAssertLessThan(
        rel, 2e-2, "\(c.name): input \(k) gradient differs from finite differences (relative \(rel))", file: file, line: line)
    }
  }

  /// ‖fd − g‖₂ / max(‖g‖₂, 1e-3) per input, over the sampled coordinates.
  func relativeErrors(_ c: GradCase) throws -> [Float] {
    // FNV-1a of the name: String.hashValue is randomized per process, and the check must be repeatable.
    var rng = LCG(s: c.name.utf8.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 } ^ seedSalt)
    var g = Graph(name: c.name)
    var params: [ValueID] = []
    for (i, s) in c.shapes.enumerated() {
      let vals = (0..<s.reduce(1, *)).map { _ in rng.uniform(c.range.0, c.range.1) }
      params.append(vals.withUnsafeBytes { g.addParam("p\(i)", TensorType(.f32, s), trainable: true, data: TensorBytes(copying: $0)) })
    }
    let out = try c.build(&g, params)
    let t = g.type(of: out)
    let r = (0..<t.elementCount).map { _ in rng.uniform(-1, 1) }
    let rv = constParam(&g, "r", t, r.withUnsafeBytes { Array($0) })
    let prod = try g.append(.mul, [out, rv])[0]
    let loss = try g.append(.reduceSum(axes: Array(0..<t.rank), keepDims: false), [prod])[0]
    let grads = try appendGradients(&g, loss: loss, wrt: params)
    g.outputs = [GraphInput(value: loss, name: "loss")] + params.map { GraphInput(value: grads[$0]!, name: "grad") }
    try g.verify()
    let ex = try Executor(graph: try g.laidOut())
    try ex.run()
    var errors: [Float] = []
    for p in params {
      let analytic = Array(ex.buffer(grads[p]!).floats)
      let buf = ex.buffer(p)
      let n = buf.count
      let coords = n <= 12 ? Array(0..<n) : (0..<12).map { _ in Int(rng.next() * Float(n)) % n }
      var diff: Float = 0, norm: Float = 0
      for j in coords {
        let x = buf.f32[j]
        let eps: Float = 2e-3
        buf.f32[j] = x + eps
        try ex.run()
        let up = ex.buffer(loss).f32[0]
        buf.f32[j] = x - eps
        try ex.run()
        let down = ex.buffer(loss).f32[0]
        buf.f32[j] = x
        let fd = (up - down) / (2 * eps)
        diff += (fd - analytic[j]) * (fd - analytic[j])
        norm += analytic[j] * analytic[j]
      }
      errors.append(diff.squareRoot() / max(norm.squareRoot(), 1e-3))
    }
    return errors
  }

  func lit(_ g: inout Graph, _ v: Double) throws -> ValueID { try g.append(.constant(Literal(f32: [v], shape: [])), [])[0] }

  func unary(_ op: Op, _ range: (Float, Float) = (-1, 1)) -> GradCase {
    GradCase(name: op.name, shapes: [[3, 4]], range: range) { g, p in try g.append(op, [p[0]])[0] }
  }

  func binary(_ op: Op, _ a: [Int], _ b: [Int], _ range: (Float, Float) = (-1, 1)) -> GradCase {
    GradCase(name: "\(op.name) \(a) \(b)", shapes: [a, b], range: range) { g, p in try g.append(op, [p[0], p[1]])[0] }
  }

  func testElementwiseRules() throws {
    for c in [
      binary(.add, [2, 3, 4], [3, 1]), binary(.sub, [2, 3], [2, 3]), binary(.sub, [4], [2, 3, 4]),
      binary(.mul, [2, 3, 4], [4]), binary(.div, [2, 3], [2, 1], (0.5, 2)),
      unary(.cast(.f32)),
    ]
      + Unary.all.map({ f in
      // Every unary function's rule, on a range where it is smooth.
      switch f {
      case .sqrt, .reciprocal: return unary(.unary(f), (0.5, 2))
      case .relu, .clip: return unary(.unary(f), (0.2, 1))
      case .erf, .tanh, .exp, .neg, .sigmoid, .silu, .gelu, .hardSigmoid, .hardSwish: return unary(.unary(f))
      }
    })
    {
      try check(c)
    }
    // relu on both sides of the kink (entries never within ε of 0).
    try check(
      GradCase(name: "relu both signs", shapes: [[6]], range: (0.2, 1)) { g, p in
        try g.append(
          .unary(.relu), [try g.append(.mul, [p[0], try g.append(.constant(Literal(f32: [1, -1, 1, -1, 1, -1], shape: [6])), [])[0]])[0]])[0]
      })
    try check(
      GradCase(name: "pow by constant", shapes: [[2, 3]], range: (0.5, 2)) { g, p in
        try g.append(.pow, [p[0], try self.lit(&g, 3)])[0]
      })
    try check(
      GradCase(name: "select", shapes: [[2, 3], [3]]) { g, p in
        let c = try g.append(.constant(Literal(type: TensorType(.bool, [2, 3]), elements: .ints([1, 0, 1, 0, 0, 1]))), [])[0]
        return try g.append(.select, [c, p[0], p[1]])[0]
      })
  }

  /// p · stop_gradient(p): autodiff gives p (one path is constant by design) where finite
  /// differences see 2p, so the harness must report a relative error of 1. This also shows
  /// the check catches a gradient that is off.
  func testStopGradientAndTheCheckItself() throws {
    let errors = try relativeErrors(
      GradCase(name: "stop_gradient", shapes: [[3]], range: (0.5, 1)) { g, p in
        try g.append(.mul, [p[0], try g.append(.stopGradient, [p[0]])[0]])[0]
      })
    XCTAssertEqual(errors[0], 1, accuracy: 0.02)
  }

  func testLinearAlgebraRules() throws {
    try check(binary(.matMul, [2, 3, 4], [4, 5]))
    try check(binary(.matMul, [2, 1, 3, 4], [3, 4, 2]))
    // Kᵀ as attention has it: a transpose read only by matmuls runs as a view with the BLAS
    // transpose flag, in the forward and in the backward.
    try check(
      GradCase(name: "matmul with a transposed operand", shapes: [[2, 3, 4], [2, 5, 4]]) { g, p in
        try g.append(.matMul, [p[0], try g.append(.transpose([0, 2, 1]), [p[1]])[0]])[0]
      })
    for layout in [WeightLayout.outIn, .inOut] {
      let w = layout == .outIn ? [5, 4] : [4, 5]
      try check(
        GradCase(name: "linear last axis \(layout)", shapes: [[2, 3, 4], w, [5]]) { g, p in
          try g.append(.linear(axis: 2, layout: layout), p)[0]
        })
      try check(
        GradCase(name: "linear axis 1 \(layout)", shapes: [[2, 4, 3, 2], w]) { g, p in try g.append(.linear(axis: 1, layout: layout), p)[0]
        })
    }
    try check(
      GradCase(name: "linear 1x1 conv weight", shapes: [[2, 4, 3, 3], [5, 4, 1, 1], [5]]) { g, p in
        try g.append(.linear(axis: 1, layout: .outIn), p)[0]
      })
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
      try check(
        GradCase(name: "gemm \(ta) \(tb)", shapes: [ta ? [4, 3] : [3, 4], tb ? [5, 4] : [4, 5], [5]]) { g, p in
          try g.append(.gemm(transA: ta, transB: tb, alpha: 0.7, beta: 1.3), p)[0]
        })
    }
  }

  func conv(_ name: String, x: [Int], w: [Int], stride: Int, pad: Int, group: Int, dilation: Int = 1, bias: Bool = true) -> GradCase {
    GradCase(name: name, shapes: [x, w] + (bias ? [[w[0]]] : [])) { g, p in
      try g.append(
        .conv(ConvGeometry(strides: [stride, stride], pads: [pad, pad, pad, pad], dilations: [dilation, dilation], group: group)), p)[0]
    }
  }

  func testConvolutionRules() throws {
    try check(conv("conv 3x3 pad 1", x: [2, 3, 5, 5], w: [4, 3, 3, 3], stride: 1, pad: 1, group: 1))
    try check(conv("conv patchify", x: [1, 3, 8, 8], w: [4, 3, 4, 4], stride: 4, pad: 0, group: 1))
    try check(conv("conv strided dilated", x: [1, 2, 7, 7], w: [3, 2, 3, 3], stride: 2, pad: 1, group: 1, dilation: 2, bias: false))
    try check(conv("conv grouped", x: [1, 4, 5, 5], w: [6, 2, 3, 3], stride: 1, pad: 1, group: 2))
    try check(conv("conv depthwise 7x7", x: [2, 3, 6, 6], w: [3, 1, 7, 7], stride: 1, pad: 3, group: 3))
    // The padded-plane kernels with rows that are not whole vectors, and with dilation.
    try check(conv("conv depthwise 7x7, 11 wide", x: [1, 2, 5, 11], w: [2, 1, 7, 7], stride: 1, pad: 3, group: 2))
    // Each tile shape (8 rows × 8, 4 × 16, 2 × 32 columns) with a partial last tile both ways.
    try check(conv("conv depthwise 7x7, 37 wide, 5 rows", x: [1, 2, 5, 37], w: [2, 1, 7, 7], stride: 1, pad: 3, group: 2))
    try check(conv("conv depthwise 7x7, 13 wide, 7 rows", x: [1, 2, 7, 13], w: [2, 1, 7, 7], stride: 1, pad: 3, group: 2))
    try check(conv("conv depthwise 3x3, 7 wide, 11 rows", x: [1, 2, 11, 7], w: [2, 1, 3, 3], stride: 1, pad: 1, group: 2))
    try check(conv("conv depthwise dilated", x: [1, 2, 6, 6], w: [2, 1, 3, 3], stride: 1, pad: 2, group: 2, dilation: 2))
    // The direct depthwise path (stride 2), and taps right of a one-column image for every
    // output column, in both the direct path and im2col.
    try check(conv("conv depthwise stride 2", x: [1, 2, 7, 7], w: [2, 1, 3, 3], stride: 2, pad: 1, group: 2))
    try check(conv("conv depthwise stride 2, one column", x: [1, 2, 3, 1], w: [2, 1, 3, 3], stride: 2, pad: 1, group: 2))
    try check(conv("conv stride 2, one column", x: [1, 2, 3, 1], w: [3, 2, 3, 3], stride: 2, pad: 1, group: 1))
  }

  /// Padding: the gradient of a mirror or an edge copy adds back into the elements copied.
  func testPaddingRules() throws {
    for mode in [PadMode.constant, .reflect, .edge] {
      try check(
        GradCase(name: "pad \(mode)", shapes: [[2, 3, 4]]) { g, p in
          try g.append(.pad(pads: [0, 2, 1, 0, 1, 3], mode: mode, value: 0.5), [p[0]])[0]
        })
    }
  }

  func pool(_ name: String, _ op: Op, x: [Int]) -> GradCase {
    GradCase(name: name, shapes: [x]) { g, p in try g.append(op, [p[0]])[0] }
  }

  /// Pooling: overlapping and ceil-mode windows, padding on both sides, both divisors. Max
  /// pooling's gradient is piecewise: random inputs keep every window's maximum apart by
  /// more than the step.
  func testPoolingRules() throws {
    func geo(_ k: Int, _ s: Int, _ p: Int, ceil: Bool = false, dilation: Int = 1) -> PoolGeometry {
      PoolGeometry(kernel: [k, k], strides: [s, s], pads: [p, p, p, p], dilations: [dilation, dilation], ceilMode: ceil)
    }
    try check(pool("max_pool 3x3 s2 p1", .maxPool(geo(3, 2, 1)), x: [2, 2, 7, 7]))
    try check(pool("max_pool 2x2 s2 ceil", .maxPool(geo(2, 2, 0, ceil: true)), x: [1, 2, 5, 5]))
    try check(pool("max_pool 3x3 dilated", .maxPool(geo(3, 1, 2, dilation: 2)), x: [1, 1, 6, 6]))
    for include in [false, true] {
      try check(pool("average_pool 3x3 s1 p1 \(include)", .averagePool(geo(3, 1, 1), countIncludePad: include), x: [2, 2, 5, 6]))
      try check(pool("average_pool 2x2 s2 ceil \(include)", .averagePool(geo(2, 2, 0, ceil: true), countIncludePad: include), x: [1, 2, 5, 5]))
    }
  }

  func testNormalizationRules() throws {
    // BatchNorm with batch statistics: every input's gradient flows through the mean and
    // variance too (N = 3, a 2×2 plane: 12 values per channel).
    try check(
      GradCase(name: "batch_norm_training", shapes: [[3, 2, 2, 2], [2], [2]]) { g, p in
        try g.append(.batchNormTraining(epsilon: 1e-5), p)[0]
      })
    try check(
      GradCase(name: "batch_norm_training on [N, C]", shapes: [[5, 3], [3], [3]]) { g, p in
        try g.append(.batchNormTraining(epsilon: 1e-3), p)[0]
      })
    try check(
      GradCase(name: "layer_norm", shapes: [[2, 3, 6], [6], [6]]) { g, p in try g.append(.layerNorm(axis: 2, epsilon: 1e-5), p)[0] })
    try check(
      GradCase(name: "layer_norm no bias, two axes", shapes: [[2, 3, 4], [3, 4]]) { g, p in
        try g.append(.layerNorm(axis: 1, epsilon: 1e-5), p)[0]
      })
    try check(GradCase(name: "softmax last", shapes: [[2, 5]], range: (-2, 2)) { g, p in try g.append(.softmax(axis: 1), p)[0] })
    try check(GradCase(name: "softmax middle", shapes: [[2, 4, 3]], range: (-2, 2)) { g, p in try g.append(.softmax(axis: 1), p)[0] })
    try check(
      GradCase(name: "softmax cross-entropy", shapes: [[3, 5]], range: (-2, 2)) { g, p in
        let labels = try g.append(.constant(Literal(i64: [4, 0, 2], shape: [3])), [])[0]
        return try g.append(.softmaxCrossEntropy(smoothing: 0), [p[0], labels])[0]
      })
    try check(
      GradCase(name: "softmax cross-entropy, label smoothing 0.1", shapes: [[3, 5]], range: (-2, 2)) { g, p in
        let labels = try g.append(.constant(Literal(i64: [4, 0, 2], shape: [3])), [])[0]
        return try g.append(.softmaxCrossEntropy(smoothing: 0.1), [p[0], labels])[0]
      })
    try check(
      GradCase(name: "softmax cross-entropy, soft targets", shapes: [[3, 5]], range: (-2, 2)) { g, p in
        let targets = try g.append(.constant(Literal(f32: [0, 0.3, 0, 0, 0.7, 1, 0, 0, 0, 0, 0.2, 0.2, 0.6, 0, 0], shape: [3, 5])), [])[0]
        return try g.append(.softmaxCrossEntropy(smoothing: 0.1), [p[0], targets])[0]
      })
  }

  /// Label smoothing against PyTorch's `cross_entropy(label_smoothing=0.1)` and its gradient,
  /// and soft targets (Mixup's, λ 0.7, smoothed by the op) against timm's mixup_target and
  /// SoftTargetCrossEntropy (models/smoothing_reference.py).
  func testLabelSmoothingMatchesPyTorch() throws {
    try checkSmoothedLoss(labels: "labels.npy", loss: "loss.npy", grad: "grad.npy")
    try checkSmoothedLoss(labels: "targets.npy", loss: "soft_loss.npy", grad: "soft_grad.npy")
  }

  func checkSmoothedLoss(labels labelFile: String, loss lossFile: String, grad gradFile: String) throws {
    let dir = repoRoot + "/Tests/Fixtures/smoothing"
    let x = try NPYArray.read(dir + "/logits.npy"), y = try NPYArray.read(dir + "/" + labelFile)
    var g = Graph(name: "smoothing")
    let logits = g.addInput("logits", TensorType(.f32, x.shape)), labels = g.addInput("labels", TensorType(y.dtype, y.shape))
    let loss = try g.append(.softmaxCrossEntropy(smoothing: 0.1), [logits, labels])[0]
    let one = try g.append(.constant(Literal(f32: [1], shape: [])), [])[0]
    let grad = try g.append(.softmaxCrossEntropyGrad(smoothing: 0.1), [logits, labels, one])[0]
    g.outputs = [GraphInput(value: loss, name: "loss"), GraphInput(value: grad, name: "grad")]
    try PassPipeline(passes: try PassRegistry.pipeline(PassRegistry.evaluationPipeline, PipelineOptions()), verifyEach: true).run(&g)
    let ex = try Executor(graph: g, threads: 1)
    x.data.withUnsafeBytes { ex.buffer(logits).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    y.data.withUnsafeBytes { ex.buffer(labels).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    try ex.run()
    XCTAssertEqual(ex.buffer(loss).f32[0], try NPYArray.read(dir + "/" + lossFile).floats[0], accuracy: 1e-6)
    let want = try NPYArray.read(dir + "/" + gradFile).floats
    for (a, b) in zip(Array(ex.buffer(grad).floats), want) { XCTAssertEqual(a, b, accuracy: 1e-6) }
  }

  func testDataMovementAndReductionRules() throws {
    let cases: [GradCase] = [
      GradCase(name: "reshape", shapes: [[2, 6]]) { g, p in try g.append(.reshape([3, 4]), p)[0] },
      GradCase(name: "transpose", shapes: [[2, 3, 4]]) { g, p in try g.append(.transpose([2, 0, 1]), p)[0] },
      // Moves the contiguous axis away from last place: the tiled copy, over several tiles.
      GradCase(name: "transpose, tiled", shapes: [[2, 20, 35]]) { g, p in try g.append(.transpose([0, 2, 1]), p)[0] },
      GradCase(name: "slice step 2", shapes: [[3, 7]]) { g, p in
        try g.append(.slice(SliceSpec(starts: [1], ends: [7], axes: [1], steps: [2])), p)[0]
      },
      GradCase(name: "slice reversed", shapes: [[5, 2]]) { g, p in
        try g.append(.slice(SliceSpec(starts: [4], ends: [-1], axes: [0], steps: [-1])), p)[0]
      },
      GradCase(name: "gather repeated", shapes: [[2, 5, 3]]) { g, p in
        let idx = try g.append(.constant(Literal(i64: [0, 3, 3, -1], shape: [2, 2])), [])[0]
        return try g.append(.gather(axis: 1), [p[0], idx])[0]
      },
      GradCase(name: "gather scalar (class token)", shapes: [[2, 5, 3]]) { g, p in
        let idx = try g.append(.constant(Literal(i64: [0], shape: [])), [])[0]
        return try g.append(.gather(axis: 1), [p[0], idx])[0]
      },
      GradCase(name: "concat", shapes: [[2, 1, 3], [2, 4, 3]]) { g, p in try g.append(.concat(axis: 1), p)[0] },
      GradCase(name: "split (middle output unused)", shapes: [[2, 6]]) { g, p in
        let parts = try g.append(.split(axis: 1, sizes: [1, 2, 3]), p)
        return try g.append(.add, [parts[0], try g.append(.reduceSum(axes: [1], keepDims: true), [parts[2]])[0]])[0]
      },
      GradCase(name: "squeeze/unsqueeze", shapes: [[2, 1, 3]]) { g, p in
        try g.append(.unsqueeze([0]), [try g.append(.squeeze([1]), p)[0]])[0]
      },
      GradCase(name: "expand", shapes: [[1, 1, 3]]) { g, p in try g.append(.expand([2, 4, 3]), p)[0] },
      GradCase(name: "reduce_mean keepdims", shapes: [[2, 3, 4]]) { g, p in try g.append(.reduceMean(axes: [1, 2], keepDims: true), p)[0] },
      GradCase(name: "reduce_sum", shapes: [[2, 3, 4]]) { g, p in try g.append(.reduceSum(axes: [0], keepDims: false), p)[0] },
      GradCase(name: "global_average_pool", shapes: [[2, 3, 4, 4]]) { g, p in try g.append(.globalAveragePool, p)[0] },
    ]
    for c in cases { try check(c) }
  }
}
