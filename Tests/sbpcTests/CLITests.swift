// CLITests.swift: runs the built `sbpc` binary: bad input gives exit 1 and exactly one stderr line.
import Foundation
import XCTest

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Runs sbpc with `args`; returns exit status, stdout and stderr.
func sbpc(_ args: [String]) throws -> (Int32, String, String) {
  // The test bundle sits in the products folder beside the sbpc binary (or is that folder, on Linux).
  let here = Bundle(for: CLITests.self).bundleURL
  let bin =
    [here.appendingPathComponent("sbpc"), here.deletingLastPathComponent().appendingPathComponent("sbpc")]
    .first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? here.appendingPathComponent("sbpc")
  let p = Process()
  p.executableURL = bin
  p.arguments = args
  p.currentDirectoryURL = URL(fileURLWithPath: root)
  let out = Pipe(), err = Pipe()
  p.standardOutput = out
  p.standardError = err
  try p.run()
  let o = out.fileHandleForReading.readDataToEndOfFile()
  let e = err.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

final class CLITests: XCTestCase {
  func assertOneLineError(_ args: [String], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let (status, out, err) = try sbpc(args)
    XCTAssertNotEqual(status, 0, "\(args) succeeded", file: file, line: line)
    XCTAssertLessThan(status, 128, "\(args) crashed with signal \(status - 128)", file: file, line: line)
    XCTAssertEqual(out, "", file: file, line: line)
    let lines = err.split(separator: "\n")
    XCTAssertEqual(lines.count, 1, "\(args): \(err)", file: file, line: line)
    XCTAssertTrue(err.contains(fragment), "\(args): '\(err)' lacks '\(fragment)'", file: file, line: line)
  }

  func testBadInputsGiveOneLineAndExitOne() throws {
    let cases: [([String], String)] = [
      (["inspect", "Tests/Fixtures/unknown_op.onnx"], "FancyOp"),
      (["inspect", "Tests/Fixtures/cycle.onnx"], "cycle"),
      (["inspect", "Tests/Fixtures/ext_escape/model.onnx"], "'..'"),
      (["inspect", "Tests/Fixtures/ext_absolute/model.onnx"], "absolute"),
      (["inspect", "Tests/Fixtures/ext_missing/model.onnx"], "not found"),
      (["inspect", "Tests/Fixtures/ext_past_end/model.onnx"], "past the end"),
      (["inspect", "Tests/Fixtures/bad_size.onnx"], "40 bytes"),
      (["inspect", "Tests/Fixtures/symbolic_dim.onnx"], "'features'"),
      (["inspect", "Tests/Fixtures/huge_tensor.onnx"], "too large"),
      (["inspect", "Tests/Fixtures/no_graph.onnx"], "no graph"),
      (["inspect", "Tests/Fixtures/nope.onnx"], "cannot open"),
      (["inspect", "models/vit_p4_d6_ts17.onnx", "--batch", "0"], "--batch"),
      (["inspect", "models/vit_p4_d6_ts17.onnx", "--dim", "oops"], "--dim"),
      (["opt", "Tests/Fixtures/ok_linear.onnx", "--passes", "canonicalize,nosuch"], "unknown pass 'nosuch'"),
      (["opt", "Tests/Fixtures/ok_linear.onnx", "--print-after", "nosuch"], "unknown pass 'nosuch'"),
    ]
    for (args, fragment) in cases { try assertOneLineError(args, fragment) }
  }

  func testMalformedTextIRNamesTheLine() throws {
    let d = NSTemporaryDirectory() + "sbpc-cli-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    let f = d + "/bad.sbpir"
    try "graph @g {\n  input %0 : f32[2]\n  %1 = relu(%0 : f32[2]\n}\n".write(toFile: f, atomically: true, encoding: .utf8)
    try assertOneLineError(["opt", f], "line 3")
  }

  func testInspectJSONIsValid() throws {
    let (status, out, err) = try sbpc(["inspect", "models/vit_p4_d6_ts17.onnx", "--json"])
    XCTAssertEqual(status, 0, err)
    let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
    XCTAssertEqual((obj?["canonicalOps"] as? [String: Int])?["gelu"], 6)
    XCTAssertEqual(obj?["batch"] as? Int, 32)
    XCTAssertTrue(err.contains("defaults to 32"))
  }

  func testOptPrintsAfterChosenPassesAndVerifies() throws {
    let (status, out, _) = try sbpc([
      "opt", "models/vit_p4_d6_ts14.onnx", "--batch", "2", "--passes", "canonicalize,dce", "--print-after", "canonicalize", "--verify-each",
    ])
    XCTAssertEqual(status, 0)
    XCTAssertEqual(out.components(separatedBy: "IR after canonicalize").count, 2)
    XCTAssertFalse(out.contains("IR after dce"))
    let (s2, all, _) = try sbpc(["opt", "models/vit_p4_d6_ts14.onnx", "--batch", "2", "--passes", "canonicalize,dce", "--print-after-all"])
    XCTAssertEqual(s2, 0)
    XCTAssertTrue(all.contains("IR after canonicalize") && all.contains("IR after dce"))
  }
}
