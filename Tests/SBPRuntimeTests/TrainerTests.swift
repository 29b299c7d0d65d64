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
