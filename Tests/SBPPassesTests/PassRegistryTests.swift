// PassRegistryTests.swift: passes are uniquely named kebab-case values; pipelines resolve, verify and dump.
import XCTest

@testable import SBPIR
@testable import SBPPasses

final class PassRegistryTests: XCTestCase {
  func testNamesAreUniqueKebabCase() {
    let names = PassRegistry.all.map(\.name)
    XCTAssertEqual(Set(names).count, names.count)
    for n in names {
      XCTAssertNotNil(n.range(of: "^[a-z][a-z0-9]*(-[a-z0-9]+)*$", options: .regularExpression), n)
    }
    for p in Canonicalize.patterns {
      XCTAssertNotNil(p.name.range(of: "^[a-z][a-z0-9]*(-[a-z0-9]+)*$", options: .regularExpression), p.name)
    }
  }

  func testPipelineResolvesAndRejectsUnknownNames() throws {
    XCTAssertEqual(try PassRegistry.pipeline("canonicalize, dce").map(\.name), ["canonicalize", "dce"])
    XCTAssertThrowsError(try PassRegistry.pipeline("canonicalize,nope")) { e in
      XCTAssertTrue("\(e)".contains("unknown pass 'nope'"))
      XCTAssertTrue("\(e)".contains("canonicalize"), "lists the known passes")
    }
    XCTAssertThrowsError(try PassRegistry.pipeline("canonicalize,,dce"))
  }

  func testPrintAfterDumpsOnlyTheChosenPasses() throws {
    var g = try parseGraph("graph @g {\n  input %0 : f32[2]\n  %1 = relu(%0) : f32[2]\n  output %0\n}\n")
    var dumped: [String] = []
    try PassPipeline(passes: try PassRegistry.pipeline("canonicalize,dce"), verifyEach: true, printAfter: ["dce"]).run(&g) { name, text in
      dumped.append(name)
      XCTAssertFalse(text.contains("relu"))
    }
    XCTAssertEqual(dumped, ["dce"])
  }

  /// A pass that breaks the graph, to show --verify-each catches it and names the pass.
  struct Breaker: Pass {
    let name = "breaker"
    let summary = "test-only: leaves a node reading an undefined value"
    func run(_ graph: inout Graph) throws {
      let ghost = graph.newValue(TensorType(.f32, [2]))
      graph.nodes.insert(Node(op: .unary(.relu), inputs: [ghost], outputs: [graph.newValue(TensorType(.f32, [2]))], name: "bad"), at: 0)
    }
  }

  func testVerifyEachNamesTheBreakingPass() throws {
    var g = try parseGraph("graph @g {\n  input %0 : f32[2]\n  output %0\n}\n")
    XCTAssertThrowsError(try PassPipeline(passes: [Breaker()], verifyEach: true).run(&g)) { e in
      XCTAssertTrue("\(e)".contains("after pass breaker"), "\(e)")
    }
  }

  func testCanonicalizeIsIdempotent() throws {
    var g = try parseGraph(
      """
      graph @g {
        input %0 : f32[2,4]
        param @w : f32[4,3]
        param @b : f32[3]
        %1 = matmul(%0, @w) : f32[2,3]
        %2 = add(%1, @b) : f32[2,3]
        output %2
      }
      """)
    try Canonicalize().run(&g)
    let once = g.printed()
    try Canonicalize().run(&g)
    XCTAssertEqual(g.printed(), once)
    XCTAssertTrue(once.contains("linear(%0, @w, @b) {axis=1, layout=\"io\"}"))
  }
}
