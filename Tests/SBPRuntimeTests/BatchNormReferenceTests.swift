// BatchNormReferenceTests.swift: a BatchNorm CNN exported for training takes PyTorch's train-mode step: logits, loss, every gradient and the running statistics.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class BatchNormReferenceTests: XCTestCase {
  let ref = repoRoot + "/models/reference_bn/cnn_bn"

  func floats(_ path: String) throws -> [Float] { try NPYArray.read(path).floats }

  /// One training step of `model` on the reference batch, checked for logits and loss.
  func step(_ model: String) throws -> (Executor, Plan, notes: [String]) {
    let x = try NPYArray.read(ref + "/input.npy"), labels = try NPYArray.read(ref + "/labels.npy")
    let (plan, notes) = try Plan.compile(model: repoRoot + "/models/reference_bn/" + model, options: Plan.Options(batch: 4))
    let ex = try Executor(graph: plan.train, threads: 1, retaining: Executor.gradientValues(plan.train))
    x.data.withUnsafeBytes { ex.buffer(plan.train.inputs[0].value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    labels.data.withUnsafeBytes { ex.input("labels")!.raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    try ex.run()
    let (lrel, _) = compare(Array(ex.buffer(plan.train.outputs[0].value).floats), try floats(ref + "/logits.npy"))
    XCTAssertLessThan(lrel, 1e-4, "\(model): logits")
    XCTAssertEqual(ex.output("loss")!.f32[0], try floats(ref + "/loss.npy")[0], accuracy: 1e-5, "\(model): loss")
    return (ex, plan, notes)
  }

  /// models/bn_reference.py: conv, BatchNorm, ReLU, max pool, 1×1 conv, BatchNorm, ReLU,
  /// mean, linear; one step of PyTorch in train() mode at batch 4.
  func testOneStepMatchesPyTorchInTrainMode() throws {
    let (ex, plan, _) = try step("cnn_bn.onnx")
    XCTAssertEqual(plan.train.nodes.filter { $0.op.category == .stateUpdate }.count, 2)
    XCTAssertEqual(Set(plan.train.stateParameters.map(\.name)), ["bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"])
    XCTAssertFalse(plan.train.params.contains { $0.trainable && $0.name.contains("running") })
    let grads = gradients(ex)
    XCTAssertEqual(grads.count, 9, "every weight, bias and BatchNorm scale and shift trains")
    // A bias right before a BatchNorm in train mode has a gradient of exactly zero (the
    // batch mean takes it out again); both frameworks then hold rounding noise, whose cosine
    // means nothing. Such a gradient must stay at noise level against the step's largest.
    let scale = try grads.keys.map { try floats(ref + "/grads/\($0).npy").map(abs).max() ?? 0 }.max() ?? 1
    for (name, g) in grads {
      let want = try floats(ref + "/grads/\(name).npy")
      if (want.map(abs).max() ?? 0) < 1e-6 * scale {
        XCTAssertLessThan(g.floats.map(abs).max() ?? 0, 1e-6 * scale, "@\(name) should be zero up to rounding")
        continue
      }
      let (rel, cos) = compare(Array(g.floats), want)
      XCTAssertGreaterThan(cos, 0.9999, "@\(name)")
      XCTAssertLessThan(rel, 1e-3, "@\(name)")
    }
    XCTAssertTrue(grads.keys.contains("conv1.bias"))
    for p in plan.train.stateParameters {
      let (rel, _) = compare(Array(ex.buffer(p.value).floats), try floats(ref + "/state/\(p.name).npy"))
      XCTAssertLessThan(rel, 1e-5, "@\(p.name) after the step")
    }
  }

  /// dynamo writes a train-mode BatchNorm without `training_mode` (ONNX's inference form); its
  /// fx metadata says training. sbpc trains it as PyTorch did and does not call it an eval export.
  func testDynamoTrainModeBatchNormTrainsWithoutAnEvalNote() throws {
    let (ex, plan, notes) = try step("cnn_bn_dynamo/model.onnx")
    XCTAssertFalse(notes.contains { $0.contains("eval mode") }, "\(notes)")
    XCTAssertEqual(plan.train.nodes.filter { if case .batchNormTraining = $0.op { return true } else { return false } }.count, 2)
    let grads = gradients(ex)
    XCTAssertEqual(grads.count, 9)
    for (name, g) in grads where name.hasSuffix("weight") {
      let (_, cos) = compare(Array(g.floats), try floats(ref + "/grads/\(name).npy"))
      XCTAssertGreaterThan(cos, 0.9999, "@\(name)")
    }
  }

  /// Evaluation normalizes with the running statistics the training step left, and a
  /// checkpoint carries them.
  func testEvaluationReadsTheUpdatedRunningStatistics() throws {
    let (plan, _) = try Plan.compile(model: repoRoot + "/models/reference_bn/cnn_bn.onnx", options: Plan.Options(batch: 4))
    XCTAssertTrue(plan.eval.nodes.contains { if case .batchNorm = $0.op { return true } else { return false } })
    let train = try Executor(graph: plan.train, threads: 1)
    try train.run()
    let eval = try Executor(graph: plan.eval, threads: 1)
    eval.copyParameters(from: train)
    for p in plan.train.stateParameters {
      let q = try XCTUnwrap(plan.eval.params.first { $0.name == p.name })
      XCTAssertEqual(Array(eval.buffer(q.value).floats), Array(train.buffer(p.value).floats), p.name)
    }
    XCTAssertEqual(Set(Checkpoint.tensors(train).map(\.name)).intersection(plan.train.stateParameters.map(\.name)).count, 4)
  }
}

/// What a user hears about BatchNorms sbpc cannot train as PyTorch would, or trains differently
/// from the export's mode.
final class BatchNormInputTests: XCTestCase {
  /// Running statistics shared by two BatchNorms are an exporter's merge: by default each
  /// BatchNorm gets its own copy, with a warning. Kept shared (--keep-tied) they would be
  /// updated twice per step: one line names both nodes and the tensor.
  func testSharedRunningStatisticsAreUntiedOrRefused() throws {
    let (plan, notes) = try Plan.compile(model: repoRoot + "/Tests/Fixtures/bad_bn_shared.onnx", options: Plan.Options(batch: 2))
    XCTAssertEqual(plan.train.stateParameters.count, 4)
    XCTAssertTrue(notes.contains { $0.hasPrefix("warning: initializer 'm1' feeds 2 layers") }, "\(notes)")
    XCTAssertThrowsError(
      try Plan.compile(model: repoRoot + "/Tests/Fixtures/bad_bn_shared.onnx", options: Plan.Options(batch: 2, keepTied: true))
    ) { e in
      let m = "\(e)"
      XCTAssertFalse(m.contains("\n"), m)
      XCTAssertTrue(m.contains("'bn2' and 'bn1' share the running statistics @m1"), m)
    }
  }

  /// A statistic of the wrong size or type: one line naming the node and what it got.
  func testBadStatisticsAreRefusedInOneLine() throws {
    for (file, says) in [("bad_bn_stat_size", "got [\"f32[2]\", \"f32[2]\", \"f32[2]\", \"f32[3]\"]"), ("bad_bn_stat_dtype", "running mean must be a float initializer with one value per channel, got i64[2]")] {
      XCTAssertThrowsError(try Plan.compile(model: repoRoot + "/Tests/Fixtures/\(file).onnx", options: Plan.Options(batch: 2))) { e in
        let m = "\(e)"
        XCTAssertFalse(m.contains("\n"), m)
        XCTAssertTrue(m.contains("node 'bn' (BatchNormalization)") && m.contains(says), m)
      }
    }
  }

  /// An eval-mode export trains with batch statistics all the same, and says so.
  func testAnEvalModeExportIsNoted() throws {
    let (plan, notes) = try Plan.compile(model: repoRoot + "/Tests/Fixtures/ok_bn_eval_mode.onnx", options: Plan.Options(batch: 2))
    XCTAssertEqual(notes.filter { $0.contains("exported in eval mode") }.count, 2, "\(notes)")
    XCTAssertEqual(plan.train.nodes.filter { if case .batchNormTraining = $0.op { return true } else { return false } }.count, 2)
  }
}
