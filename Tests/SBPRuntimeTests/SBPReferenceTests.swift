// SBPReferenceTests.swift: SBP training steps match PyTorch's Algorithm 1 (models/reference/<model>/sbp/<config>) for the same mask.
import Foundation
import SBPONNX
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

/// Parses a reference config name such as `qkv_grid0.5_p1` or `none_random0.5_s0`.
func sbpOptions(config: String) throws -> SBPOptions {
  let parts = config.split(separator: "_")
  let attention = try XCTUnwrap(AttentionSplit(rawValue: String(parts[0])), config)
  let mode: MaskMode = parts[1].hasPrefix("grid") ? .grid : .random
  let keep = try XCTUnwrap(Double(parts[1].dropFirst(mode == .grid ? 4 : 6)), config)
  return SBPOptions(keep: keep, mask: mode, attention: attention)
}

/// Runs one SBP step of `onnx` on the reference input with the config's mask.
func runSBPStep(_ model: String, _ onnx: String, config: String, options: SBPOptions? = nil, mask: KeepMask? = nil) throws -> (
  Executor, Plan
) {
  let dir = repoRoot + "/models/reference/\(model)/sbp/\(config)"
  let x = try NPYArray.read(repoRoot + "/models/\(model).ref/input.npy")
  let labels = try NPYArray.read(dir + "/labels.npy")
  let (plan, _) = try Plan.compile(model: onnx, options: Plan.Options(batch: x.shape[0], sbp: try options ?? sbpOptions(config: config)))
  let ex = try Executor(graph: plan.train, threads: 1, retaining: Executor.gradientValues(plan.train))
  let inp = plan.train.inputs[0]
  x.data.withUnsafeBytes { ex.buffer(inp.value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
  labels.data.withUnsafeBytes { ex.input("labels")!.raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
  let layout = try XCTUnwrap(plan.layout, "\(model) \(config): the plan has no SBP layout")
  let mask = try mask ?? KeepMask(npy: try NPYArray.read(dir + "/mask.npy"), name: "mask.npy")
  let feed = try MaskFeed(layout: layout.mask, source: .explicit(mask), executor: ex)
  try feed.feed(mask)
  try ex.run()
  return (ex, plan)
}

final class SBPReferenceTests: XCTestCase {
  func testEverySBPConfigMatchesPyTorch() throws {
    var worst = (logits: Float(0), gradRel: Float(0), gradCos: Float(1), grads: 0, steps: 0)
    defer {
      print(
        "sbp reference: \(worst.steps) steps, \(worst.grads) gradients; worst logits rel \(worst.logits), gradient rel \(worst.gradRel), cosine \(worst.gradCos)"
      )
    }
    for (model, stem, onnx) in referenceCases() {
      let sbpDir = repoRoot + "/models/reference/\(model)/sbp"
      for config in ((try? FileManager.default.contentsOfDirectory(atPath: sbpDir)) ?? []).sorted() {
        let ref = sbpDir + "/" + config
        let what = "\(model) (\(stem)) \(config)"
        let (ex, _) = try runSBPStep(model, onnx, config: config)
        worst.steps += 1
        let (lrel, _) = compare(Array(ex.buffer(ex.graph.outputs[0].value).floats), try NPYArray.read(ref + "/logits.npy").floats)
        XCTAssertLessThan(lrel, 1e-4, "\(what): logits")
        worst.logits = max(worst.logits, lrel)
        XCTAssertEqual(ex.output("loss")!.f32[0], try NPYArray.read(ref + "/loss.npy").floats[0], accuracy: 1e-5, "\(what): loss")
        let g = try assertGradientsMatchPyTorch(
          ex, params: "\(repoRoot)/models/reference/\(model)/\(stem).params.json", refDir: ref, what: what)
        worst.gradRel = max(worst.gradRel, g.rel)
        worst.gradCos = min(worst.gradCos, g.cos)
        worst.grads += g.count
      }
    }
    XCTAssertGreaterThanOrEqual(worst.steps, 13)
  }

  /// The comparison can fail: the right mask flipped, or another attention mode, gives other gradients.
  func testAWrongMaskOrModeDoesNotMatch() throws {
    let model = "vit_p4_d6", onnx = "\(repoRoot)/models/vit_p4_d6_ts17.onnx", config = "qkv_grid0.5_p0"
    let ref = repoRoot + "/models/reference/\(model)/sbp/\(config)"
    var mask = try KeepMask(npy: try NPYArray.read(ref + "/mask.npy"), name: "mask.npy")
    mask.keep = mask.keep.map { !$0 }
    let expected = try NPYArray.read(ref + "/grads/blocks.3.attn.qkv.weight.npy")
    let m = try JSONDecoder().decode(
      [String: ParamMap].self, from: Data(contentsOf: URL(fileURLWithPath: "\(repoRoot)/models/reference/\(model)/ts17.params.json")))
    let name = try XCTUnwrap(m.first { $0.value.param == "blocks.3.attn.qkv.weight" })
    for (options, flipped) in [(SBPOptions(keep: 0.5), mask), (SBPOptions(keep: 0.5, attention: .query), nil)] {
      let (ex, _) = try runSBPStep(model, onnx, config: config, options: options, mask: flipped)
      let (rel, _) = compare(Array(gradients(ex)[name.key]!.floats), toONNXLayout(expected, name.value))
      XCTAssertGreaterThan(rel, 1e-2, "a wrong mask or mode still matched: \(options)")
    }
  }

  /// A step that keeps fewer rows than the buffers hold pads with −1 rows; the result equals a
  /// plan sized exactly for that count (21 of 64 patches: grid keep 0.3 holds 21–22, random
  /// keep 0.32 holds exactly 21).
  func testPaddedRowsChangeNothing() throws {
    let model = "vit_p4_d6", onnx = "\(repoRoot)/models/vit_p4_d6_ts17.onnx", config = "qkv_grid0.5_p0"
    let grid = try SBPLayout.make(try compiledEval(onnx), options: SBPOptions(keep: 0.3))!
    XCTAssertEqual(grid.spec.keptRange, 21...22)
    let mask = grid.spec.gridMask(phase: 0)
    XCTAssertEqual(mask.keptCount, 21)
    for attention in AttentionSplit.allCases {
      let (a, _) = try runSBPStep(model, onnx, config: config, options: SBPOptions(keep: 0.3, attention: attention), mask: mask)
      let (b, _) = try runSBPStep(
        model, onnx, config: config, options: SBPOptions(keep: 0.32, mask: .random, attention: attention), mask: mask)
      XCTAssertEqual(a.output("loss")!.f32[0], b.output("loss")!.f32[0], accuracy: 1e-6)
      let ga = gradients(a), gb = gradients(b)
      for (k, g) in ga {
        let (rel, _) = compare(Array(g.floats), Array(gb[k]!.floats))
        XCTAssertLessThan(rel, 1e-5, "\(attention): \(k)")
      }
    }
  }

  func compiledEval(_ onnx: String) throws -> Graph {
    try Plan.compile(model: onnx, options: Plan.Options(batch: 2)).0.eval
  }

  /// The fallback for downsamplers (forward kept, output gradient masked) computes the same
  /// gradients as the patch-row split the compiler prefers.
  func testDownsamplerFallbackMatchesPyTorchToo() throws {
    let model = "convnext_t1131", config = "none_grid0.5_p0"
    let dir = repoRoot + "/models/reference/\(model)/sbp/\(config)"
    let x = try NPYArray.read(repoRoot + "/models/\(model).ref/input.npy")
    var g = try importONNX(path: "\(repoRoot)/models/\(model)_ts17.onnx", options: ImportOptions(batch: x.shape[0])).graph
    var split = InsertSBP(try sbpOptions(config: config))
    split.patchDownsamplers = false
    try PassPipeline(passes: [Canonicalize(), Mark()], verifyEach: true).run(&g)
    let layout = try XCTUnwrap(try SBPLayout.make(g, options: split.options))
    try PassPipeline(passes: [split, DeadRows(), Autodiff(), PruneBackward(), Rematerialize(), Schedule(), PlanMemory()], verifyEach: true).run(&g)
    XCTAssertTrue(g.nodes.contains { $0.op == .conv(ConvGeometry(strides: [2, 2], pads: [0, 0, 0, 0], dilations: [1, 1], group: 1)) })
    let ex = try Executor(graph: g, threads: 1, retaining: Executor.gradientValues(g))
    x.data.withUnsafeBytes { ex.buffer(g.inputs[0].value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    try NPYArray.read(dir + "/labels.npy").data.withUnsafeBytes {
      ex.input("labels")!.raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count)
    }
    let mask = try KeepMask(npy: try NPYArray.read(dir + "/mask.npy"), name: "mask.npy")
    try MaskFeed(layout: layout.mask, source: .explicit(mask), executor: ex).feed(mask)
    try ex.run()
    let matched = try assertGradientsMatchPyTorch(
      ex, params: "\(repoRoot)/models/reference/\(model)/ts17.params.json", refDir: dir, what: "\(model) downsampler fallback")
    XCTAssertGreaterThan(matched.count, 0)
  }
}
