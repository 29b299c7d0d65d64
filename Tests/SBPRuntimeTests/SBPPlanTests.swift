// SBPPlanTests.swift: SBP plans: the off switches give plain backpropagation, row liveness finds what DESIGN.md says, and the runtime's FLOP count agrees with the static one.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class SBPPlanTests: XCTestCase {
  let vit = "\(repoRoot)/models/vit_p4_d6_ts17.onnx"
  let avg = "\(repoRoot)/models/vit_avg_p4_d4_ts17.onnx"
  let convnext = "\(repoRoot)/models/convnext_t1131_ts17.onnx"

  func compile(_ model: String, _ sbp: SBPOptions, batch: Int = 2) throws -> Plan {
    try Plan.compile(model: model, options: Plan.Options(batch: batch, sbp: sbp)).0
  }

  func testKeepOneAndNoBlocksCompileThePlainStep() throws {
    for model in [vit, convnext] {
      let plain = try compile(model, .off)
      XCTAssertNil(plain.layout)
      for options in [SBPOptions(keep: 1), SBPOptions(keep: 1, attention: .query), SBPOptions(keep: 0.5, blocks: "none")] {
        let p = try compile(model, options)
        XCTAssertNil(p.layout, "\(options)")
        XCTAssertEqual(p.train.printed(), plain.train.printed(), "\(model) \(options)")
        XCTAssertEqual(p.eval.printed(), plain.eval.printed(), "\(model) \(options)")
      }
      // And SBP does change it.
      XCTAssertNotEqual(try compile(model, SBPOptions()).train.printed(), plain.train.printed())
    }
  }

  /// Class-token head with qkv: every dropped row of the SBP blocks is dead, so the dropped
  /// index vector is read by nothing. With an average-pool head or query attention the
  /// dropped rows are live and the analysis must keep them.
  func testRowLivenessFindsTheDeadDroppedRows() throws {
    func readersOfDropped(_ model: String, _ options: SBPOptions) throws -> Int {
      var g = try compile(model, .off).eval
      try PassPipeline(passes: [InsertSBP(options), DeadRows()], verifyEach: true).run(&g)
      guard let d = g.inputs.first(where: { $0.name == "sbp.dropped.0" }) else { return -1 }
      return g.nodes.filter { $0.inputs.contains(d.value) }.count
    }
    XCTAssertEqual(try readersOfDropped(vit, SBPOptions()), 0)
    XCTAssertGreaterThan(try readersOfDropped(vit, SBPOptions(attention: .query)), 0)
    XCTAssertGreaterThan(try readersOfDropped(avg, SBPOptions()), 0)
    // The dead rows take their FLOPs with them.
    let dead = StepCost(train: try compile(vit, SBPOptions()).train),
      live = StepCost(train: try compile(vit, SBPOptions(attention: .query)).train)
    XCTAssertLessThan(dead.forwardFlops, live.forwardFlops)
  }

  /// Row sparsity: with an average-pool head and qkv, the qkv weight gradient of an SBP block
  /// reads the kept rows only (32 of 64), and memory and FLOPs fall below plain backpropagation.
  func testRowSparsityShrinksTheQKVBackward() throws {
    let p = try compile(avg, SBPOptions())
    let dw = p.train.nodes.filter {
      if case .linearGradWeight = $0.op { return $0.attrs["sbp.from"] == .string("mhsa.qkv") && $0.attrs["sbp.block"] == .int(3) }
      return false
    }
    XCTAssertEqual(dw.count, 1)
    XCTAssertEqual(p.train.type(of: dw[0].inputs[0]).shape, [2, 32, 64])
    let sbp = StepCost(train: p.train), plain = StepCost(train: try compile(avg, .off).train)
    XCTAssertLessThan(sbp.savedBytes, plain.savedBytes)
    XCTAssertLessThan(sbp.backwardFlops, plain.backwardFlops)
  }

  /// The schedule puts every backward gelu(x) (the rematerialized activation) next to its
  /// gelu_grad(x, dy), so the runtime computes both in one pass over x; in an SBP block the
  /// activation is also read by fc2's weight gradient, which alone would pull it earlier.
  func testRecomputedGeluRunsBesideItsGradient() throws {
    for model in [vit, avg, convnext] {
      for options in [SBPOptions.off, SBPOptions()] {
        let nodes = try compile(model, options).train.nodes
        guard let loss = nodes.firstIndex(where: { $0.op == .softmaxCrossEntropy(smoothing: 0) }) else { return XCTFail("no loss in \(model)") }
        var pairs = 0
        for (i, n) in nodes.enumerated() where i > loss {
          guard case .unary(.gelu) = n.op else { continue }
          let beside = [i - 1, i + 1].filter { nodes.indices.contains($0) }.contains { j in
            if case .unaryGrad(.gelu) = nodes[j].op { return nodes[j].inputs[0] == n.inputs[0] }
            return false
          }
          XCTAssertTrue(beside, "\(model), \(options): \(n.name) is not beside its gelu_grad")
          pairs += 1
        }
        XCTAssertGreaterThan(pairs, 0, "\(model), \(options)")
      }
    }
  }

  /// A backward node that recomputes from forward values runs only when a reader of its
  /// result (seen through views such as a reshape) becomes ready with it, or when everything
  /// else that is ready also recomputes; it never runs early and holds its result across the
  /// backward. ConvNeXt's downsamplers recompute their norm and their permuted weight through
  /// a reshape, which once made them run at the start of the backward.
  func testRecomputationsWaitUntilTheirReaderIsReady() throws {
    for model in [vit, avg, convnext] {
      for options in [SBPOptions.off, SBPOptions()] {
        let g = try compile(model, options).train
        let nodes = g.nodes
        guard let loss = nodes.firstIndex(where: { $0.op == .softmaxCrossEntropy(smoothing: 0) }) else { return XCTFail("no loss in \(model)") }
        var producer: [ValueID: Int] = [:]
        for (i, n) in nodes.enumerated() { for o in n.outputs { producer[o] = i } }
        var readers: [ValueID: [Int]] = [:]
        for (i, n) in nodes.enumerated() { for v in Set(n.inputs) { readers[v, default: []].append(i) } }
        func fromForward(_ i: Int) -> Bool { nodes[i].inputs.allSatisfy { v in producer[v].map { $0 <= loss } ?? true } }
        var done = Set(0...loss)
        func ready(_ k: Int, with made: Set<ValueID>) -> Bool {
          nodes[k].inputs.allSatisfy { v in made.contains(v) || producer[v].map { done.contains($0) } ?? true }
        }
        var checked = 0
        for i in (loss + 1)..<nodes.count {
          defer { done.insert(i) }
          guard fromForward(i), !nodes[i].inputs.isEmpty, !nodes[i].op.isView, !nodes[i].op.isUpdate else { continue }
          // A reader, through views, that this node makes ready.
          var made = Set(nodes[i].outputs), frontier = nodes[i].outputs, close = false
          while let v = frontier.popLast(), !close {
            for r in readers[v] ?? [] where !done.contains(r) && r != i && ready(r, with: made) {
              if nodes[r].op.isView {
                made.formUnion(nodes[r].outputs)
                frontier += nodes[r].outputs
              } else {
                close = true
              }
            }
          }
          // Or nothing but recomputations was ready.
          let others = ((i + 1)..<nodes.count).contains { k in
            !fromForward(k) && !nodes[k].op.isUpdate && ready(k, with: [])
          }
          XCTAssertTrue(close || !others, "\(model), \(options.text): \(nodes[i].name) runs before any reader is ready")
          checked += 1
        }
        XCTAssertGreaterThan(checked, 0, "\(model), \(options.text)")
      }
    }
  }

  /// `sbpc memory`'s FLOPs are what the runtime executes: Σ2MNK of its real sgemm calls plus
  /// its own kernels, within 2%.
  func testStaticFLOPsMatchTheRuntimeCount() throws {
    for (model, options) in [(vit, SBPOptions.off), (vit, SBPOptions()), (avg, SBPOptions(attention: .query)), (convnext, SBPOptions())] {
      let p = try compile(model, options)
      let ex = try Executor(graph: p.train, threads: 1)
      if let layout = p.layout {
        let feed = try MaskFeed(layout: layout.mask, source: .sampled(seed: 1), executor: ex)
        try feed.feed(layout.spec.gridMask(phase: 0))
      }
      try ex.run()
      let counted = Double(ex.lastRunFlops), planned = Double(StepCost(train: p.train).stepFlops)
      XCTAssertEqual(counted / planned, 1, accuracy: 0.02, "\(model) \(options.text): runtime \(counted), plan \(planned)")
      XCTAssertGreaterThan(counted, 1e6)
      print("flops: \(URL(fileURLWithPath: model).lastPathComponent) \(options.text): runtime/plan = \(counted / planned)")
    }
  }

  /// Fused and unfused updates train identically; unfused ones hold the gradients in their own
  /// region, so the plan needs more memory.
  func testFusedAndUnfusedOptimizerAgree() throws {
    var losses: [[Float]] = []
    var totals: [Int] = []
    for fuse in [true, false] {
      let p = try Plan.compile(model: vit, options: Plan.Options(batch: 2, sbp: SBPOptions(), fuseOptimizer: fuse)).0
      let ex = try Executor(graph: p.train, threads: 1)
      let feed = try MaskFeed(layout: p.layout!.mask, source: .phase(1), executor: ex)
      try feed.feed(feed.layout.spec.gridMask(phase: 1))
      for i in 0..<ex.buffer(p.train.inputs[0].value).count { ex.buffer(p.train.inputs[0].value).f32[i] = Float(i % 7) * 0.1 }
      var l: [Float] = []
      for _ in 0..<3 {
        try ex.run()
        l.append(ex.output("loss")!.f32[0])
      }
      losses.append(l)
      totals.append(ex.totalBytes)
      XCTAssertEqual(ex.ownBufferBytes > 0, !fuse)
    }
    XCTAssertEqual(losses[0], losses[1])
    XCTAssertLessThan(totals[0], totals[1])
  }
}

/// The plan is self-describing: what `plan-memory` decided comes back from the annotations
/// exactly, and a layout that was tampered with is refused with one line naming the node.
final class BufferLayoutTests: XCTestCase {
  func testTheAnnotationsCarryTheWholeMemoryPlan() throws {
    for (model, keep) in [("vit_p4_d6_ts17", 0.5), ("convnext_t1131_ts17", 0.5), ("vit_avg_p4_d4_ts17", 1.0)] {
      let p = try Plan.compile(
        model: repoRoot + "/models/\(model).onnx", options: Plan.Options(batch: 2, sbp: SBPOptions(keep: keep))
      ).0
      for g in [p.train, p.eval] {
        let want = MemoryPlan(g), got = try g.bufferLayout()
        XCTAssertEqual(got.arenaBytes, want.arenaBytes, model)
        XCTAssertEqual(got.offsets, Dictionary(uniqueKeysWithValues: want.slots.map { ($0.value, $0.offset) }), model)
        XCTAssertEqual(got.owner, want.owner, model)
        XCTAssertEqual(got.movementPairs, want.movementPairs, model)
        XCTAssertEqual(got.sliceRuns, want.sliceRuns, model)
      }
      XCTAssertEqual(try Executor(graph: p.train).totalBytes, MemoryPlan(p.train).totalBytes, model)
    }
  }

  func testATamperedLayoutIsRefused() throws {
    let p = try Plan.compile(model: repoRoot + "/models/vit_p4_d6_ts17.onnx", options: Plan.Options(batch: 1, sbp: .off)).0
    let i = try XCTUnwrap(p.train.nodes.firstIndex { if case .ints(let o)? = $0.attrs["mem.offsets"] { return o[0] > 0 } else { return false } })
    for (key, value, message) in [
      ("mem.offsets", AttrValue.ints([3]), "is not aligned"), ("mem.shares", .ints([7]), "mem.shares names no operand"),
      ("mem.offsets", .ints([]), "wrong length"), ("mem.pair", .int(1), "not a movement pair"),
    ] {
      var g = p.train
      g.annotate(node: i, key, value)
      XCTAssertThrowsError(try Executor(graph: g)) { e in
        XCTAssertTrue("\(e)".contains(message) && "\(e)".contains(p.train.nodes[i].name) && "\(e)".contains("recompile"), "\(e)")
      }
    }
  }
}
