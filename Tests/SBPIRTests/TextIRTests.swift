// TextIRTests.swift: the text IR parses back byte-identically and rejects malformed input with a line number.
import XCTest

@testable import SBPIR

final class TextIRTests: XCTestCase {
  let sample = """
    graph @g {
      input %0 : f32[2,4] loc("x")
      param @w : f32[3,4]
      param @"onnx::b" : f32[3]
      const @table : i64[2,2]
      %1 = linear(%0, @w, @"onnx::b") {axis=1, layout="oi"} : f32[2,3] loc("fc")
      %2 = constant() {value=[0.5]} : f32[] loc("half")
      %3 = mul(%1, %2) {sbp.block=7, sbp.role="mlp.fc1"} : f32[2,3]
      %4, %5 = split(%3) {axis=1, sizes=[1,2]} : f32[2,1], f32[2,2]
      %6 = layer_norm(%5, @w2, @b2) {axis=-1, epsilon=1e-06} : f32[2,2]
      output %6 loc("y")
    }

    """

  /// The sample without its last node, which reads undeclared params.
  var valid: String {
    sample.replacingOccurrences(of: "  %6 = layer_norm(%5, @w2, @b2) {axis=-1, epsilon=1e-06} : f32[2,2]\n", with: "")
      .replacingOccurrences(of: "output %6", with: "output %5")
  }

  func testRoundTripIsByteIdentical() throws {
    let g = try parseGraph(valid)
    try g.verify()
    let printed = g.printed()
    XCTAssertEqual(printed, valid)
    XCTAssertEqual(try parseGraph(printed).printed(), printed)
  }

  func testAnnotationsAreKeptApartFromPayload() throws {
    let g = try parseGraph(valid)
    let mul = try XCTUnwrap(g.nodes.first { $0.op == .mul })
    XCTAssertEqual(mul.attrs["sbp.role"], .string("mlp.fc1"))
    XCTAssertEqual(mul.attrs["sbp.block"], .int(7))
    XCTAssertEqual(mul.op.attributes, [:])
  }

  func testUndeclaredParamNamesTheLine() {
    XCTAssertThrowsError(try parseGraph(sample)) { e in
      XCTAssertEqual(e as? IRError, .parse(line: 10, "@w2 is not declared"))
    }
  }

  func testMalformedLinesGiveTheirLineNumber() {
    let cases: [(String, Int)] = [
      ("graph @g {\n  input %0 : f32[2\n}\n", 2),
      ("graph @g {\n  input %0 : f32[2]\n  %1 = nosuchop(%0) : f32[2]\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n  %1 = relu(%9) : f32[2]\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n  %1 = relu(%0) : f32[3]\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n  %0 = relu(%0) : f32[2]\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n  %1 = relu(%0) {bogus=1} : f32[2]\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n  output %0 loc(\"unterminated)\n}\n", 3),
      ("graph @g {\n  input %0 : f32[2]\n", 2),
      ("graph @g {\n}\nextra\n", 3),
      ("not a graph\n", 1),
      ("graph @g {\n  input %0 : f32[1099511627776,1099511627776]\n}\n", 2),
    ]
    for (text, line) in cases {
      XCTAssertThrowsError(try parseGraph(text), text) { e in
        guard case .parse(let l, _)? = e as? IRError else { return XCTFail("not a parse error: \(e)") }
        XCTAssertEqual(l, line, "\(text) -> \(e)")
      }
    }
  }

  func testFloatsPrintInTheirShortestForm() throws {
    let g = try parseGraph("graph @g {\n  %0 = constant() {value=[0.1,1e-06,-inf,2.0]} : f32[4]\n  output %0\n}\n")
    XCTAssertTrue(g.printed().contains("value=[0.1,1e-06,-inf,2.0]"), g.printed())
  }

  func testQuotedNamesRoundTrip() throws {
    let text = "graph @\"main graph\" {\n  input %0 : f32[1] loc(\"a \\\"quoted\\\" name\\n\")\n  output %0 loc(\"out\")\n}\n"
    XCTAssertEqual(try parseGraph(text).printed(), text)
  }
}

final class TextIRUnicodeTests: XCTestCase {
  /// Found by the ir fuzz target: a combining mark right after an escape or a quote.
  func testCombiningMarksAndControlCharactersRoundTrip() throws {
    for name in ["a\u{0}\u{0364}b", "\"\u{0301}", "tab\there\u{1b}", "x}\u{0301}y", "\u{2028}line"] {
      var g = Graph(name: "g")
      let v = g.addInput(name, TensorType(.f32, [1]))
      g.outputs = [GraphInput(value: v, name: name)]
      let text = g.printed()
      let back = try parseGraph(text)
      XCTAssertEqual(back.inputs[0].name, name)
      XCTAssertEqual(back.printed(), text)
    }
  }

  func testWindowsLineEndingsParse() throws {
    let g = try parseGraph("graph @g {\r\n  input %0 : f32[2]\r\n  %1 = relu(%0) : f32[2]\r\n  output %1\r\n}\r\n")
    XCTAssertEqual(g.nodes.count, 1)
  }
}
