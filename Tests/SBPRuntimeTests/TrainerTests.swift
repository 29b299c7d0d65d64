// TrainerTests.swift: a program trains through the library's Trainer, without the CLI: events, epochs, checkpoints and resume.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class TrainerTests: XCTestCase {
  func plan() throws -> Plan {
    try Plan.compile(
      model: repoRoot + "/models/vit_p4_d6_ts17.onnx", options: Plan.Options(batch: 2, sbp: SBPOptions(keep: 0.5))
    ).0
  }

  func losses(_ t: Trainer) throws -> [Float] {
    var out: [Float] = []
    try t.run { event in
      if case .step(_, _, _, let loss, _) = event { out.append(loss) }
    }
    return out
  }

  /// Four steps in one run equal two steps, a checkpoint, and a resumed run of the other two:
  /// the data, the masks and the optimizer state all continue where they were.
  func testResumeThroughTheLibraryContinuesTheRun() throws {
    let p = try plan()
    var o = TrainerOptions()
    o.steps = 4
    o.seed = 5
    o.threads = 1
    let whole = try losses(try Trainer(plan: p, path: "vit.plan", options: o))
    XCTAssertEqual(whole.count, 4)
    let dir = NSTemporaryDirectory() + "sbpc-trainer-" + UUID().uuidString
    var a = o
    a.steps = 2
    a.checkpoint = dir
    let firstHalf = try losses(try Trainer(plan: p, path: "vit.plan", options: a))
    var b = o
    b.resume = dir
    let resumed = try Trainer(plan: p, path: "vit.plan", options: b)
    XCTAssertEqual(resumed.first, 2)
    XCTAssertEqual(firstHalf + (try losses(resumed)), whole)
  }

  /// With a data set and epochs, the trainer reports each epoch once, after its last step.
  func testEpochEventsFollowTheirSteps() throws {
    let p = try plan()
    var o = TrainerOptions()
    o.input = repoRoot + "/models/vit_p4_d6.ref/input.npy"
    o.labels = repoRoot + "/models/reference/vit_p4_d6/labels.npy"
    o.epochs = 2
    o.threads = 1
    let t = try Trainer(plan: p, path: "vit.plan", options: o)
    var events: [String] = []
    try t.run { event in
      switch event {
      case .step(let s, let total, let epoch, _, _): events.append("step \(s)/\(total) epoch \(epoch!.0)/\(epoch!.1)")
      case .epoch(let e, let n, _, let v, _): events.append("epoch \(e)/\(n)\(v == nil ? "" : " val")")
      }
    }
    let perEpoch = t.total / 2
    XCTAssertEqual(events.count, t.total + 2)
    XCTAssertEqual(events[perEpoch], "epoch 1/2")
    XCTAssertEqual(events.last, "epoch 2/2")
  }
}

/// Data-parallel pieces that need no MPI: how ranks cut the data, synthetic samples, buckets.
final class DataParallelPieceTests: XCTestCase {
  /// P ranks at batch B visit, batch by batch, exactly the samples one process at P·B does,
  /// padding included, and count the same real samples.
  func testRanksCutEachGlobalBatchInRankOrder() {
    for last in LastBatch.allCases {
      let one = BatchOrder(count: 13, batch: 6, shuffle: true, last: last, seed: 7)
      let ranks = (0..<3).map { BatchOrder(count: 13, batch: 2, shuffle: true, last: last, seed: 7, rank: $0, ranks: 3) }
      XCTAssertEqual(ranks[0].batchesPerEpoch, one.batchesPerEpoch)
      for epoch in 0..<2 {
        let order = one.permutation(epoch: epoch)
        XCTAssertEqual(ranks[1].permutation(epoch: epoch), order)
        for b in 0..<one.batchesPerEpoch {
          XCTAssertEqual(ranks.flatMap { Array($0.batch(b, of: order)) }, Array(one.batch(b, of: order)), "\(last) batch \(b)")
          XCTAssertEqual(ranks.reduce(0) { $0 + $1.samples(in: b) }, one.samples(in: b))
        }
      }
    }
  }

  /// A synthetic sample depends on its index in the global batch, not on how many rows a
  /// process holds.
  func testSyntheticSamplesAreDefinedPerGlobalIndex() throws {
    func plan(_ batch: Int) throws -> Plan {
      try Plan.compile(model: repoRoot + "/models/vit_p4_d6_ts17.onnx", options: Plan.Options(batch: batch)).0
    }
    let (p4, p2) = (try plan(4), try plan(2))
    let e4 = try Executor(graph: p4.train), e2 = try Executor(graph: p2.train)
    let f4 = try Feeder(plan: p4, executor: e4, path: "p4"), f2 = try Feeder(plan: p2, executor: e2, path: "p2")
    f4.synthetic(seed: 3, step: 5)
    f2.synthetic(seed: 3, step: 5, first: 2)
    let half = f2.input.count
    XCTAssertEqual(Array(UnsafeBufferPointer(start: f4.input.f32 + half, count: half)), Array(UnsafeBufferPointer(start: f2.input.f32, count: half)))
    XCTAssertEqual(f4.labels.i64[2], f2.labels.i64[0])
    XCTAssertEqual(f4.labels.i64[3], f2.labels.i64[1])
  }

  /// The buckets read back from a --distributed plan: every update in one, each bucket's
  /// reduction starting after its last gradient is made and waited for at its first update.
  func testBucketsCoverEveryUpdateInBackwardOrder() throws {
    let p = try Plan.compile(
      model: repoRoot + "/models/vit_p4_d6_ts17.onnx", options: Plan.Options(batch: 2, sbp: SBPOptions(keep: 0.5), bucketBytes: 100_000)
    ).0
    let g = p.train, buckets = g.gradientBuckets
    XCTAssertGreaterThan(buckets.count, 3)
    XCTAssertEqual(buckets.reduce(0) { $0 + $1.updates.count }, g.nodes.filter(\.op.isUpdate).count)
    let producer = g.producerIndex()
    for (k, b) in buckets.enumerated() {
      XCTAssertLessThanOrEqual(b.bytes, 100_000 + b.gradients.map { g.type(of: $0).byteCount }.max()!)
      XCTAssertLessThan(b.start, b.wait)
      for v in b.gradients { XCTAssertLessThanOrEqual(producer[v]!, b.start) }
      if k + 1 < buckets.count { XCTAssertGreaterThan(b.wait, buckets[k + 1].start, "bucket \(k) is reduced while bucket \(k + 1) is computed") }
    }
  }
}
