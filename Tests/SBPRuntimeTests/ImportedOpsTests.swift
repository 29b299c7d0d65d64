// ImportedOpsTests.swift: ONNX ops the importer lowers to other ops compute what ONNX defines, and train.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPONNX
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class ImportedOpsTests: XCTestCase {
  /// InstanceNormalization and ReduceL2 (Tests/Fixtures/ok_norms.onnx, checked against
  /// onnxruntime by make_fixtures.py --check) against the definitions in double precision.
  func testInstanceNormAndReduceL2MatchTheirDefinitions() throws {
    var g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_norms.onnx", options: ImportOptions(batch: 2)).graph
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    XCTAssertEqual(Set(g.params.map(\.name)), ["scale", "bias"], "the norm's scale and bias are parameters")
    let ex = try Executor(graph: g)
    let x = (0..<24).map { Float((Double($0) * 0.37).truncatingRemainder(dividingBy: 1.9) - 0.8) }
    ex.buffer(g.inputs[0].value).f32.update(from: x, count: 24)
    try ex.run()
    let scale = [1.5, -0.5], bias = [0.25, 2.0]
    for n in 0..<2 {
      for c in 0..<2 {
        let row = (0..<6).map { Double(x[(n * 2 + c) * 6 + $0]) }
        let mean = row.reduce(0, +) / 6
        let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 6
        let y = row.map { ($0 - mean) / (variance + 1e-5).squareRoot() * scale[c] + bias[c] }
        let want = y.map { $0 * $0 }.reduce(0, +).squareRoot()
        XCTAssertEqual(Double(ex.buffer(g.outputs[0].value).f32[n * 2 + c]), want, accuracy: 1e-5 * max(1, want), "n \(n) c \(c)")
      }
    }
  }

  /// GroupNormalization (opset 18: scale and bias per group) against its definition.
  func testGroupNormMatchesItsDefinition() throws {
    var g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_groupnorm.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertEqual(Set(g.params.filter(\.trainable).map(\.name)), ["gscale", "gbias"])
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    let x = (0..<24).map { Float(cos(Double(Float($0) * 0.9)) * 2) }
    ex.buffer(g.inputs[0].value).f32.update(from: x, count: 24)
    try ex.run()
    let scale = [1.5, -0.5], bias = [0.25, 2.0]
    for n in 0..<2 {
      for grp in 0..<2 {
        let vals = (0..<6).map { Double(x[n * 12 + grp * 6 + $0]) }
        let mean = vals.reduce(0, +) / 6, v = vals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 6
        for cc in 0..<2 {
          let want = (0..<3).map { (vals[cc * 3 + $0] - mean) / (v + 1e-5).squareRoot() * scale[grp] + bias[grp] }.reduce(0, +) / 3
          XCTAssertEqual(Double(ex.buffer(g.outputs[0].value).f32[n * 4 + grp * 2 + cc]), want, accuracy: 1e-5)
        }
      }
    }
  }

  /// MaxPool (pads), AveragePool (ceil mode, divisor without pads) and GlobalMaxPool as
  /// onnxruntime runs them (its output for the same input is ok_pools.expected.npy).
  func testPoolingImportsAsOnnxruntimeRunsIt() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_pools.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertEqual(g.nodes.map(\.op.name).filter { $0.hasSuffix("pool") }, ["max_pool", "average_pool", "max_pool"])
    try assertMatchesOnnxruntime(g, "ok_pools", shape: [2, 2])
  }

  /// Runs imported `g` on sin(0.37·i)·3 and holds its output to onnxruntime's for the same
  /// input (`<name>.expected.npy`, written by make_fixtures.py --check) within 1e-5.
  func assertMatchesOnnxruntime(_ graph: Graph, _ name: String, shape: [Int]) throws {
    var g = graph
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    let n = g.type(of: g.inputs[0].value).elementCount
    ex.buffer(g.inputs[0].value).f32.update(from: (0..<n).map { Float(sin(Double(Float($0) * 0.37)) * 3) }, count: n)
    try ex.run()
    let want = try NPYArray.read(repoRoot + "/Tests/Fixtures/\(name).expected.npy")
    let got = Array(ex.buffer(g.outputs[0].value).floats)
    XCTAssertEqual(want.shape, shape)
    XCTAssertEqual(want.floats.count, got.count)
    for (i, w) in want.floats.enumerated() where i < got.count { XCTAssertEqual(got[i], w, accuracy: 1e-5, "\(name): y[\(i)]") }
  }

  /// Resize (nearest, bilinear, align-corners, cubic, half-pixel nearest) as per-axis
  /// interpolation products, and ReduceMax / ReduceMin as max pools, as onnxruntime runs them
  /// (its output for the same input is ok_resize.expected.npy); their gradients are the
  /// products' and the max pool's.
  func testResizeAndReduceExtremesImportAsOnnxruntimeRunsThem() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_resize.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertEqual(g.nodes.filter { $0.op == .matMul }.count, 10, "two interpolation products per Resize")
    XCTAssertEqual(g.nodes.map(\.op.name).filter { $0 == "max_pool" }.count, 2)
    try assertMatchesOnnxruntime(g, "ok_resize", shape: [2, 297])
  }

  /// Antialiased Resize (the filter stretched by 1/scale when downsampling), with taps past
  /// the ends excluded (as dynamo exports PyTorch's antialias) or reading the edge, as
  /// onnxruntime runs it (ok_resize_aa.expected.npy; the reference evaluator agrees, and
  /// PyTorch's interpolate where taps outside are excluded).
  func testAntialiasedResizeImportsAsOnnxruntimeRunsIt() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_resize_aa.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertEqual(g.nodes.filter { $0.op == .matMul }.count, 7, "one product per resized axis")
    try assertMatchesOnnxruntime(g, "ok_resize_aa", shape: [2, 336])
  }

  /// LSTM, unrolled, as the ONNX spec runs it (ok_lstm.expected.npy, from onnx's reference
  /// evaluator): batch-first layout, a reverse pass with both biases and an initial h, a
  /// forward pass with an initial c, and all three outputs of each.
  func testLSTMUnrollsAsTheSpecRunsIt() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_lstm.onnx", options: ImportOptions(batch: 2)).graph
    // One product for the input gates and one h·Rᵀ per step (3 steps), per LSTM.
    XCTAssertEqual(g.nodes.filter { $0.op == .matMul }.count, 8)
    try assertMatchesOnnxruntime(g, "ok_lstm", shape: [2, 25])
  }

  /// Einsum lowers to transposes, sums and one batched matmul per pair of operands, and
  /// ScatterND into a computed tensor to a gather of the updates plus the data left in place,
  /// as onnxruntime runs them (ok_einsum.expected.npy; onnx's reference evaluator agrees).
  func testEinsumAndScatterNDImportAsOnnxruntimeRunsThem() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_einsum.onnx", options: ImportOptions(batch: 2)).graph
    // Six Einsums of one or more pairs (e4 has three operands: two products) and the two
    // updates' Einsums; e3 (one operand) needs none.
    XCTAssertEqual(g.nodes.filter { $0.op == .matMul }.count, 8)
    XCTAssertEqual(g.nodes.filter { $0.op == .gather(axis: 0) }.count, 1, "the partial scatter gathers; the in-order one is a reshape")
    try assertMatchesOnnxruntime(g, "ok_einsum", shape: [2, 180])
  }

  /// A slice assignment as TorchScript writes it: ScatterND with one index triple per
  /// element, computed in the graph from Shape, Range and Expand (6.3 million integers at
  /// batch 2, more than the importer folds as it reads). The indices are computed once when
  /// the scatter needs them, the ops that made them are dropped, and the step is a gather.
  func testSliceAssignmentWithIndicesTooLargeToFoldImports() throws {
    var g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_scatter_slice.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertFalse(g.nodes.contains { g.type(of: $0.outputs[0]).dtype == .i64 && g.type(of: $0.outputs[0]).elementCount > 1 << 20 },
      "no index tensor is computed per step")
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    let n = g.type(of: g.inputs[0].value).elementCount
    let x = (0..<n).map { Float(($0 * 7919) % 1009) - 504 }
    ex.buffer(g.inputs[0].value).f32.update(from: x, count: n)
    try ex.run()
    let y = Array(ex.buffer(g.outputs[0].value).floats)
    XCTAssertEqual(y.count, n)
    var wrong = 0
    for i in 0..<n where y[i] != ((i / 1024) % 1030 == 0 ? x[i] : 2 * x[i]) { wrong += 1 }
    XCTAssertEqual(wrong, 0, "row 0 of axis 1 kept, rows 1... doubled")
  }

  /// An inference-mode BatchNormalization whose statistics the graph computes is its formula,
  /// statistics included (ok_bn_computed_stats.expected.npy, from onnxruntime).
  func testBatchNormWithComputedStatisticsIsItsFormula() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_bn_computed_stats.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertFalse(g.nodes.contains { if case .batchNorm = $0.op { return true } else { return false } })
    XCTAssertTrue(g.params.allSatisfy(\.trainable), "the scale and bias train; nothing is running state")
    try assertMatchesOnnxruntime(g, "ok_bn_computed_stats", shape: [2, 3, 4])
    // Statistics computed from something else (running statistics behind a product) would
    // normalize as eval mode does: refused, not trained that way.
    XCTAssertThrowsError(try importONNX(path: repoRoot + "/Tests/Fixtures/bad_bn_stats_elsewhere.onnx", options: ImportOptions(batch: 2))) {
      XCTAssertTrue("\($0)".contains("node 'bn' (BatchNormalization)"), "\($0)")
    }
  }

  /// 1-D convolutions and pools run as 2-D ones over a 1×L grid, and a 3-D convolution with
  /// a kernel-1 axis as a 2-D one with that axis in the batch (ok_conv_nd.expected.npy).
  func testOneAndThreeDimensionalConvolutionsImportAsOnnxruntimeRunsThem() throws {
    let g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_conv_nd.onnx", options: ImportOptions(batch: 2)).graph
    for n in g.nodes where n.op.name == "conv" { XCTAssertEqual(g.type(of: n.inputs[0]).rank, 4, "\(n.name) runs 2-D") }
    XCTAssertEqual(g.nodes.filter { $0.op.name == "conv" }.count, 3)
    try assertMatchesOnnxruntime(g, "ok_conv_nd", shape: [2, 64])
  }

  /// Mod folds at import, with Python's sign for integers and C's fmod for floats.
  func testModFoldsAsOnnxDefinesIt() throws {
    var g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_mod.onnx", options: ImportOptions(batch: 1)).graph
    try PassPipeline(passes: [PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    try ex.run()
    XCTAssertEqual(Array(ex.buffer(g.outputs[0].value).floats), [3.5, 0.5, 1, 2])
  }

  /// A weight tiled over the batch is a broadcast that trains (its gradient is dy summed over
  /// the batch), and a sine encoding built from constants (Range, CumSum, Sin, Cos, Not, Ceil, Floor)
  /// folds at import to numbers that match numpy's.
  func testTileAndConstantEncodings() throws {
    let p = try Plan.compile(model: repoRoot + "/Tests/Fixtures/ok_encodings.onnx", options: Plan.Options(batch: 3, sbp: .off)).0
    XCTAssertEqual(p.train.params.filter(\.trainable).map(\.name), ["P"])
    XCTAssertFalse(p.eval.nodes.contains { if case .unary = $0.op { return true } else { return false } }, "the encoding folds")
    var o = TrainerOptions()
    o.steps = 1
    o.threads = 1
    o.retainGradients = true
    let t = try Trainer(plan: p, path: "encodings", options: o)
    let x = (0..<12).map { Float($0) * 0.25 - 1 }
    var eval = p.eval
    try PassPipeline(passes: [PlanMemory()], verifyEach: true).run(&eval)
    let ex = try Executor(graph: eval)
    x.withUnsafeBufferPointer { src in ex.buffer(eval.inputs[0].value).f32.update(from: src.baseAddress!, count: 12) }
    try ex.run()
    let pv: [Float] = [0.5, -1, 2, 0.25]
    let enc = (0..<4).map { Float(sin([0.0, 1, 3, 6][$0]) + cos(Double($0)) + 1 + Double($0 % 2)) }
    for (i, y) in ex.buffer(eval.outputs[0].value).floats.enumerated() { XCTAssertEqual(y, x[i] + pv[i % 4] + enc[i % 4], accuracy: 1e-5, "y[\(i)]") }
    try t.run { _ in }
    let g = try XCTUnwrap(t.gradients().first { $0.name == "P" }).gradient
    // P adds to every row of the logits: its gradient is dy summed over the batch, and each
    // row of a softmax cross-entropy's dy sums to 0 over the classes.
    XCTAssertEqual(g.count, 4)
    XCTAssertTrue(g.floats.contains { abs($0) > 1e-4 }, "P gets a gradient")
    XCTAssertEqual(Double(g.floats.reduce(0, +)), 0, accuracy: 1e-6)
  }

  /// Every float initializer of the model trains, one-element ones included (StarReLU's
  /// scale and bias); a scalar named as exporters name their constants folds instead.
  func testScalarParametersTrain() throws {
    let p = try Plan.compile(model: repoRoot + "/Tests/Fixtures/ok_scalar_params.onnx", options: Plan.Options(batch: 2, sbp: .off)).0
    XCTAssertEqual(Set(p.train.params.filter(\.trainable).map(\.name)), ["W", "B", "act.scale", "act.bias"])
    XCTAssertFalse(p.eval.params.contains { $0.name == "onnx::Mul_7" })
    var o = TrainerOptions()
    o.steps = 1
    o.threads = 1
    o.retainGradients = true
    let t = try Trainer(plan: p, path: "scalars", options: o)
    let before = try ["act.scale", "act.bias"].map { name in try XCTUnwrap(p.train.params.first { $0.name == name }) }.map {
      t.executor.buffer($0.value).f32[0]
    }
    try t.run { _ in }
    let grads = Dictionary(uniqueKeysWithValues: t.gradients().map { ($0.name, $0.gradient.f32[0]) })
    for (k, name) in ["act.scale", "act.bias"].enumerated() {
      let g = try XCTUnwrap(grads[name])
      XCTAssertTrue(g != 0 && g.isFinite, name)
      let after = t.executor.buffer(p.train.params.first { $0.name == name }!.value).f32[0]
      XCTAssertEqual(after, before[k] - 0.01 * g, accuracy: 1e-6, "\(name): one SGD step")
    }
  }

  /// Pad in reflect, constant (opset 18's axes input) and edge modes, as onnxruntime runs it.
  func testPadImportsAsOnnxruntimeRunsIt() throws {
    var g = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_pad.onnx", options: ImportOptions(batch: 2)).graph
    XCTAssertEqual(g.nodes.filter { $0.op.name == "pad" }.count, 3)
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    let x = (0..<12).map { Float($0) * 0.7 - 3 }
    ex.buffer(g.inputs[0].value).f32.update(from: x, count: 12)
    try ex.run()
    let want = try NPYArray.read(repoRoot + "/Tests/Fixtures/ok_pad.expected.npy").floats
    let got = Array(ex.buffer(g.outputs[0].value).floats)
    XCTAssertEqual(got.count, want.count)
    for (a, b) in zip(got, want) { XCTAssertEqual(a, b, accuracy: 1e-5) }
  }

  /// A named scalar multiplied by a constant still trains: the product is not folded.
  func testANamedScalarIsNotFoldedAway() throws {
    let p = try Plan.compile(model: repoRoot + "/Tests/Fixtures/ok_scalar_with_constant.onnx", options: Plan.Options(batch: 2, sbp: .off)).0
    XCTAssertTrue(p.train.params.contains { $0.name == "act.shift" && $0.trainable })
    var o = TrainerOptions()
    o.steps = 1
    o.threads = 1
    o.retainGradients = true
    let t = try Trainer(plan: p, path: "shift", options: o)
    try t.run { _ in }
    let g = try XCTUnwrap(t.gradients().first { $0.name == "act.shift" }).gradient.f32[0]
    XCTAssertTrue(g != 0 && g.isFinite)
  }

  /// A scalar that is both a constant bound and a trained factor is refused in one line.
  func testAScalarBothBoundAndParameterIsRefused() throws {
    XCTAssertThrowsError(try importONNX(path: repoRoot + "/Tests/Fixtures/bad_scalar_bound_and_weight.onnx")) { e in
      XCTAssertTrue("\(e)".contains("the scalar @act.lo trains where computation reads it, but node 'clip' needs it as a constant"), "\(e)")
      XCTAssertFalse("\(e)".contains("\n"))
    }
  }

  /// A dropout that drops in PyTorch's training is refused, not silently skipped.
  func testDropoutInATrainingExportIsRefused() throws {
    XCTAssertThrowsError(try importONNX(path: repoRoot + "/Tests/Fixtures/bad_dropout_training.onnx")) { e in
      XCTAssertTrue("\(e)".contains("node 'dropout' (Dropout): dropout with rate 0.1"), "\(e)")
      XCTAssertTrue("\(e)".contains("drop_rate=0"), "\(e)")
    }
  }

  /// `inspect`'s list: every initializer, trained or not, with the reason.
  func testEveryInitializerHasARole() throws {
    let m = try importONNX(path: repoRoot + "/Tests/Fixtures/ok_scalar_params.onnx", options: ImportOptions(batch: 2))
    XCTAssertEqual(m.initializers.map(\.name), ["W", "B", "act.scale", "act.bias", "onnx::Mul_7"])
    XCTAssertEqual(m.initializers.map(\.trainable), [true, true, true, true, false])
    XCTAssertEqual(m.initializers.last?.reason, "a constant the exporter made (its name), folded")
    let bn = try importONNX(path: repoRoot + "/models/reference_bn/cnn_bn.onnx", options: ImportOptions(batch: 2))
    let stats = bn.initializers.filter { $0.name.contains("running") }
    XCTAssertEqual(stats.count, 4)
    XCTAssertTrue(stats.allSatisfy { !$0.trainable && $0.reason.hasPrefix("BatchNorm running") })
    // The roles agree with the graph: exactly the trained initializers are trainable parameters.
    XCTAssertEqual(Set(bn.initializers.filter(\.trainable).map(\.name)), Set(bn.graph.params.filter(\.trainable).map(\.name)))
  }

  /// PyTorch's GroupNorm through TorchScript: InstanceNormalization whose scale and bias are
  /// Constant nodes. The lowering's own constants (its epsilon) must not take their place.
  func testTorchScriptGroupNormMatchesPyTorch() throws {
    let dir = repoRoot + "/models/reference_bn"
    var g = try importONNX(path: dir + "/groupnorm.onnx", options: ImportOptions(batch: 2)).graph
    try PassPipeline(passes: [Canonicalize(), PlanMemory()], verifyEach: true).run(&g)
    let ex = try Executor(graph: g)
    let x = try NPYArray.read(dir + "/groupnorm/input.npy")
    x.data.withUnsafeBytes { ex.buffer(g.inputs[0].value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    try ex.run()
    let (rel, _) = compare(Array(ex.buffer(g.outputs[0].value).floats), try NPYArray.read(dir + "/groupnorm/logits.npy").floats)
    XCTAssertLessThan(rel, 1e-4)
  }

  /// The lowered ops train: a step of the compiled plan gives every parameter a gradient.
  func testTheLoweredOpsHaveGradients() throws {
    for model in ["ok_norms", "ok_activations", "ok_groupnorm", "ok_scalar_params"] {
      let p = try Plan.compile(model: repoRoot + "/Tests/Fixtures/\(model).onnx", options: Plan.Options(batch: 2, sbp: .off)).0
      var o = TrainerOptions()
      o.steps = 1
      o.threads = 1
      o.retainGradients = true
      let t = try Trainer(plan: p, path: model, options: o)
      try t.run { _ in }
      let grads = t.gradients()
      XCTAssertEqual(Set(grads.map(\.name)), Set(p.train.params.filter(\.trainable).map(\.name)), model)
      for (name, g) in grads { XCTAssertTrue(g.floats.contains { $0 != 0 } && g.floats.allSatisfy(\.isFinite), "\(model): @\(name)") }
    }
  }
}
