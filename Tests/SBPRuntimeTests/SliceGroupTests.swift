// SliceGroupTests.swift: steps run slice by slice (attention's chain) give exactly what they give one after the other, and unsafe layouts are not grouped.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class SliceGroupTests: XCTestCase {
  /// One training step of the tiny ViT, with and without SBP, on two threads: the executor
  /// groups attention's forward and backward, and every gradient equals, bit for bit, the
  /// step run node by node (numerics checks turn the groups off).
  func testGroupedAttentionEqualsStepByStep() throws {
    let model = "vit_p4_d6", onnx = repoRoot + "/models/vit_p4_d6_ts17.onnx"
    let x = try NPYArray.read(repoRoot + "/models/\(model).ref/input.npy")
    let labels = try NPYArray.read(repoRoot + "/models/reference/\(model)/labels.npy")
    let config = "qkv_grid0.5_p1"
    let mask = try KeepMask(npy: try NPYArray.read(repoRoot + "/models/reference/\(model)/sbp/\(config)/mask.npy"), name: "mask.npy")
    for sbp in [SBPOptions.off, try sbpOptions(config: config)] {
      let (plan, _) = try Plan.compile(model: onnx, options: Plan.Options(batch: x.shape[0], sbp: sbp))
      var grads: [[String: [Float]]] = []
      for checked in [false, true] {
        let ex = try Executor(graph: plan.train, threads: 2, retaining: Executor.gradientValues(plan.train))
        let labels0 = (0..<plan.train.nodes.count).compactMap { ex.groupLabel(at: $0) }
        if !checked {
          // The memory plan lays every run out so that the runtime can run it by slice.
          let runs = SliceRun.find(plan.train, outputs: Set(plan.train.outputs.map(\.value)).union(Executor.gradientValues(plan.train)))
          let leaders = ex.steps.indices.filter { ex.steps[$0].pre.group != nil && !ex.steps[$0].pre.grouped }
          XCTAssertEqual(leaders, runs.map { $0.nodes[0] }, "every slice run of the plan runs as a group")

          XCTAssertTrue(labels0.contains { $0.contains("softmax+matmul") }, "no group runs the attention forward: \(Set(labels0))")
          XCTAssertTrue(labels0.contains { $0.contains("softmax_grad") }, "no group runs the attention backward: \(Set(labels0))")
        }
        let inp = plan.train.inputs[0]
        x.data.withUnsafeBytes { ex.buffer(inp.value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        labels.data.withUnsafeBytes { ex.input("labels")!.raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        if let layout = plan.layout {
          let feed = try MaskFeed(layout: layout.mask, source: .explicit(mask), executor: ex)
          try feed.feed(mask)
        }
        try ex.run(checkNumerics: checked)
        grads.append(gradients(ex).mapValues { Array($0.floats) })
      }
      XCTAssertFalse(grads[0].isEmpty)
      for (name, g) in grads[0] { XCTAssertEqual(g, grads[1][name], "\(plan.layout == nil ? "no SBP" : config): gradient of \(name)") }
    }
  }

  /// softmax(x) → y, then softmax(y) → z, over 4 slices, with y in memory: grouped when z
  /// has memory of its own (and equal to the two kernels), not when z overlaps x without
  /// being x: the second softmax's first slice would overwrite slices of x the first has not
  /// read yet. The memory plan never lays a run out so; the runtime checks anyway.
  func testOverlapOnlyGroupsWhenSafe() throws {
    let shape = [2, 2, 3, 8], n = 2 * 2 * 3 * 8
    let t = TensorType(.f32, shape)
    var g = Graph(name: "g")
    let x = g.addInput("x", t)
    let y = try g.append(.softmax(axis: 3), [x])[0]
    let z = try g.append(.softmax(axis: 3), [y])[0]
    g.outputs = [GraphInput(value: y, name: "y"), GraphInput(value: z, name: "z")]
    let runs = SliceRun.find(g, outputs: [y, z])
    XCTAssertEqual(runs, [SliceRun(nodes: [0, 1], members: [0, 1], hoisted: [], scratch: [], slices: 4)])
    let arena = Buffer(TensorType(.f32, [3 * n]))
    let xs = (0..<n).map { Float(($0 * 37) % 23) / 7 - 1.5 }
    func steps(zAt: Int) -> [Executor.Step] {
      let bx = Buffer(viewing: arena.raw, t, base: arena)
      let by = Buffer(viewing: arena.raw + 4 * n, t, base: arena)
      let bz = Buffer(viewing: arena.raw + 4 * zAt, t, base: arena)
      bx.f32.update(from: xs, count: n)
      return [(g.nodes[0], [bx], [by], nil, Executor.Prepared()), (g.nodes[1], [by], [bz], nil, Executor.Prepared())]
    }
    // Step by step, for the expected z.
    let reference = steps(zAt: 2 * n)
    Norm.softmax(axis: 3, reference[0].ins[0], reference[0].outs[0])
    Norm.softmax(axis: 3, reference[1].ins[0], reference[1].outs[0])
    let want = Array(reference[1].outs[0].floats)

    let apart = steps(zAt: 2 * n)
    let group = try XCTUnwrap(SliceGroup.build(runs[0], apart, g, 1))
    group.run()
    XCTAssertEqual(Array(apart[1].outs[0].floats), want)

    XCTAssertNil(SliceGroup.build(runs[0], steps(zAt: 24), g, 1), "z over x's later slices")
    // z exactly over x, sliced alike: each slice of x is read before its slice of z is written.
    let same = steps(zAt: 0)
    let inPlace = try XCTUnwrap(SliceGroup.build(runs[0], same, g, 1))
    inPlace.run()
    XCTAssertEqual(Array(same[1].outs[0].floats), want)
  }
}
