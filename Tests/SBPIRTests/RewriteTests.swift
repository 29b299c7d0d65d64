// RewriteTests.swift: the rewrite API keeps types, removes dead code, and finds cycles.
import XCTest

@testable import SBPIR

/// Replaces relu(relu(x)) by relu(x).
struct FoldDoubleRelu: RewritePattern {
  let name = "fold-double-relu"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard root.op == .unary(.relu), let inner = ud.definingNode(root.inputs[0]), inner.op == .unary(.relu) else { return nil }
    return .forward(inner.outputs[0])
  }
}

/// A broken pattern that changes a value's type.
struct BadPattern: RewritePattern {
  let name = "bad"
  func match(_ root: Node, _ ud: UseDef) -> Replacement? {
    guard root.op == .unary(.relu) else { return nil }
    return Replacement(nodes: [NewNode(.reshape([4]), [.value(root.inputs[0])], name: "r")], results: [.result(node: 0, output: 0)])
  }
}

final class RewriteTests: XCTestCase {
  func graph() throws -> Graph {
    try parseGraph(
      """
      graph @g {
        input %0 : f32[2,2]
        %1 = relu(%0) : f32[2,2]
        %2 = relu(%1) : f32[2,2]
        %3 = relu(%2) : f32[2,2]
        output %3
      }
      """)
  }

  func testPatternsRunToFixpointAndDeadCodeGoes() throws {
    var g = try graph()
    let n = try g.applyPatterns([FoldDoubleRelu()])
    XCTAssertGreaterThan(n, 0)
    try g.verify()
    XCTAssertEqual(g.nodes.count, 1)
  }

  func testAPatternCannotChangeAType() throws {
    var g = try graph()
    XCTAssertThrowsError(try g.applyPatterns([BadPattern()]))
  }

  func testCycleIsNamed() throws {
    var g = Graph(name: "c")
    let x = g.addInput("x", TensorType(.f32, [2]))
    let a = g.newValue(TensorType(.f32, [2]))
    let b = g.newValue(TensorType(.f32, [2]))
    g.nodes = [Node(op: .add, inputs: [x, b], outputs: [a], name: "n1"), Node(op: .unary(.relu), inputs: [a], outputs: [b], name: "n2")]
    g.outputs = [GraphInput(value: b, name: "y")]
    XCTAssertThrowsError(try g.sortTopologically()) { e in
      XCTAssertTrue("\(e)".contains("cycle"), "\(e)")
    }
    XCTAssertThrowsError(try g.verify())
  }
}
