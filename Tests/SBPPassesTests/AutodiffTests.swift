// AutodiffTests.swift: the training-step structure autodiff appends, and its errors.
import XCTest

@testable import SBPIR
@testable import SBPPasses

final class AutodiffTests: XCTestCase {
  let forward = """
    graph @g {
      input %x : f32[2,4] loc("input")
      param @w : f32[3,4]
      param @b : f32[3]
      %1 = linear(%x, @w, @b) {axis=1, layout="oi"} : f32[2,3] loc("fc")
      output %1 loc("logits")
    }
    """

  func testTrainingStepStructure() throws {
    var g = try parseGraph(forward)
    try Autodiff().run(&g)
    try g.verify()
    XCTAssertEqual(g.inputs.map(\.name), ["input", "labels"])
    XCTAssertEqual(g.outputs.map(\.name), ["logits", "loss", "w", "opt.velocity.w", "b", "opt.velocity.b"])
    XCTAssertEqual(g.nodes.filter { if case .sgd = $0.op { return true } else { return false } }.count, 2)
    XCTAssertEqual(g.printed(), try parseGraph(g.printed()).printed())
    var a = try parseGraph(forward)
    try Autodiff(optimizer: .adamw(lr: 1e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.05)).run(&a)
    XCTAssertEqual(a.inputs.map(\.name), ["input", "labels", "step"])
    XCTAssertTrue(a.params.contains { $0.name == "opt.m.w" } && a.params.contains { $0.name == "opt.v.b" })
  }

  func testMissingRuleNamesTheOpAndTheNode() throws {
    var g = try parseGraph(
      """
      graph @g {
        input %x : f32[2,3]
        param @w : f32[2,3]
        %1 = pow(%x, @w) : f32[2,3] loc("my_pow")
        output %1
      }
      """)
    XCTAssertThrowsError(try Autodiff().run(&g)) { e in
      XCTAssertTrue("\(e)".contains("no gradient rule for pow at node 'my_pow'"), "\(e)")
    }
  }

  func testLogitsMustBeTwoDimensional() throws {
    var g = try parseGraph("graph @g {\n  input %0 : f32[2,3,4]\n  output %0\n}\n")
    XCTAssertThrowsError(try Autodiff().run(&g)) { e in XCTAssertTrue("\(e)".contains("f32[B,C]"), "\(e)") }
  }
}
