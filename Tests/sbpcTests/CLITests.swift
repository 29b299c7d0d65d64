// CLITests.swift: runs the built `sbpc` binary: bad input gives exit 1 and exactly one stderr line.
import Foundation
import XCTest

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Runs sbpc with `args`; returns exit status, stdout and stderr.
func sbpc(_ args: [String], in folder: String? = nil) throws -> (Int32, String, String) {
  try runProcess(URL(fileURLWithPath: sbpcBinary()), args, in: folder ?? root)
}

/// The sbpc binary: the test bundle sits in the products folder beside it (or is that folder, on Linux).
func sbpcBinary() -> String {
  let here = Bundle(for: CLITests.self).bundleURL
  return [here.appendingPathComponent("sbpc"), here.deletingLastPathComponent().appendingPathComponent("sbpc")]
    .first { FileManager.default.isExecutableFile(atPath: $0.path) }?.path ?? here.appendingPathComponent("sbpc").path
}

/// Runs a program to its end: exit status, standard output, standard error.
func runProcess(_ bin: URL, _ args: [String], in folder: String, environment: [String: String]? = nil) throws -> (Int32, String, String) {
  let p = Process()
  p.executableURL = bin
  p.arguments = args
  p.currentDirectoryURL = URL(fileURLWithPath: folder)
  if let environment { p.environment = environment }
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

/// A fresh scratch folder for one test's plans and dumps.
func tmp() throws -> String {
  let d = NSTemporaryDirectory() + "sbpc-test-" + UUID().uuidString
  try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}

final class TrainCLITests: XCTestCase {
  func testCompileTrainEvalAndDumps() throws {
    let d = try tmp()
    let (s1, out1, err1) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/v.plan"])
    XCTAssertEqual(s1, 0, err1)
    XCTAssertTrue(out1.contains("batch 2"))
    let args = [
      "train", d + "/v.plan", "--steps", "3", "--input", "models/vit_p4_d6.ref/input.npy", "--labels",
      "models/reference/vit_p4_d6/labels.npy",
      "--dump-loss", "--dump-logits", d + "/logits.npy", "--dump-grads", d + "/grads", "--threads", "1",
    ]
    let (s2, out2, err2) = try sbpc(args)
    XCTAssertEqual(s2, 0, err2)
    let losses = out2.split(separator: "\n").compactMap { Float(String($0)) }
    XCTAssertEqual(losses.count, 3, out2)
    XCTAssertLessThan(losses[2], losses[0])
    XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/logits.npy"))
    let grads = try FileManager.default.contentsOfDirectory(atPath: d + "/grads")
    XCTAssertEqual(grads.count, 80)
    XCTAssertTrue(grads.contains("blocks.0.attn.qkv.bias.npy"))
    let (s3, out3, err3) = try sbpc([
      "eval", d + "/v.plan", "--input", "models/vit_p4_d6.ref/input.npy", "--labels", "models/reference/vit_p4_d6/labels.npy",
    ])
    XCTAssertEqual(s3, 0, err3)
    XCTAssertTrue(out3.contains("top-1"), out3)
    // Synthetic data is seeded: the same seed gives the same losses.
    let (_, a, _) = try sbpc(["train", d + "/v.plan", "--steps", "2", "--seed", "5", "--dump-loss"])
    let (_, b, _) = try sbpc(["train", d + "/v.plan", "--steps", "2", "--seed", "5", "--dump-loss"])
    XCTAssertEqual(a, b)
  }

  func testBadPlansAndFlagsGiveOneLine() throws {
    let d = try tmp()
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/v.plan"])
    let good = try String(contentsOfFile: d + "/v.plan", encoding: .utf8)
    try "garbage\n".write(toFile: d + "/garbage.plan", atomically: true, encoding: .utf8)
    try good.replacingOccurrences(of: "sbpc-plan 5", with: "sbpc-plan 99").write(
      toFile: d + "/version.plan", atomically: true, encoding: .utf8)
    try String(good.prefix(good.count / 2)).write(toFile: d + "/truncated.plan", atomically: true, encoding: .utf8)
    try good.replacingOccurrences(of: "= softmax(", with: "= softmaxx(").write(toFile: d + "/badop.plan", atomically: true, encoding: .utf8)
    try NPYArray_i64([0, 99]).write(toFile: d + "/badlabels.npy")
    let cases: [([String], String)] = [
      (["train", d + "/garbage.plan"], "not an sbpc plan"),
      (["train", d + "/version.plan"], "not version 5"),
      (["train", d + "/truncated.plan"], "truncated.plan"),
      (["train", d + "/badop.plan"], "checksum mismatch"),
      (["train", d + "/missing.plan"], "cannot read"),
      (["train", d + "/v.plan", "--steps", "0"], "--steps"),
      (["train", d + "/v.plan", "--input", "models/vit_p4_d6.ref/input.npy"], "labels are missing"),
      (
        ["train", d + "/v.plan", "--input", "models/vit_p4_d6.ref/logits.npy", "--labels", "models/reference/vit_p4_d6/labels.npy"],
        "expected f32[N,3,32,32]"
      ),
      (["train", d + "/v.plan", "--input", "models/vit_p4_d6.ref/input.npy", "--labels", d + "/badlabels.npy"], "label 99"),
      (["compile", "models/vit_p4_d6_ts17.onnx", "-o", d + "/x.plan", "--keep", "0"], "--keep"),
      (["compile", "models/vit_p4_d6_ts17.onnx", "-o", d + "/x.plan", "--optimizer", "lbfgs"], "--optimizer"),
      (["compile", "models/vit_p4_d6_ts17.onnx", "-o", d + "/x.plan", "--lr", "-1"], "--lr"),
    ]
    for (args, fragment) in cases {
      let (status, _, err) = try sbpc(args)
      XCTAssertEqual(status == 0, false, "\(args)")
      XCTAssertEqual(err.split(separator: "\n").count, 1, "\(args): \(err)")
      XCTAssertTrue(err.contains(fragment), "\(args): '\(err)' lacks '\(fragment)'")
    }
  }
}

/// Writes an i64 vector as .npy without depending on the runtime module.
struct NPYArray_i64 {
  var values: [Int64]
  init(_ v: [Int64]) { values = v }
  func write(toFile path: String) throws {
    var header = "{'descr': '<i8', 'fortran_order': False, 'shape': (\(values.count),), }"
    header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
    var bytes: [UInt8] =
      [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)] + Array(header.utf8)
    values.withUnsafeBytes { bytes += $0 }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
  }
}

/// Replays every row of README.md's bad-input table: same message, same exit code.
final class BadInputTableTests: XCTestCase {
  func testEveryRowOfTheREADMETableHolds() throws {
    let readme = try String(contentsOfFile: root + "/README.md", encoding: .utf8)
    guard let start = readme.range(of: "<!-- bad-inputs:begin"), let end = readme.range(of: "<!-- bad-inputs:end -->") else {
      return XCTFail("README.md has no bad-input table")
    }
    let rows = readme[start.upperBound..<end.lowerBound].split(separator: "\n").filter {
      $0.hasPrefix("| ") && !$0.hasPrefix("| input") && !$0.hasPrefix("| ---")
    }
    XCTAssertGreaterThanOrEqual(rows.count, 20)
    var kinds = Set<String>()
    for row in rows {
      // | what | `sbpc ARGS` | `MESSAGE` | EXIT |
      let cells = row.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
      guard cells.count >= 6 else { XCTFail("malformed row: \(row)"); continue }
      kinds.insert(String(cells[1].prefix { $0 != ":" }))
      let command = cells[2].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
      let message = cells[3].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
      let args = command.split(separator: " ").dropFirst().map(String.init)
      let (status, _, err) = try sbpc(args)
      XCTAssertEqual(String(status), cells[4], "\(command)")
      let lines = err.split(separator: "\n")
      XCTAssertEqual(lines.count, 1, "\(command): \(err)")
      let got = err.hasPrefix("sbpc: error: ") ? String(err.dropFirst("sbpc: error: ".count).dropLast()) : err
      // "…" stands for the checkout's absolute path.
      let pieces = message.components(separatedBy: "…")
      var rest = Substring(got)
      for (i, piece) in pieces.enumerated() {
        guard let r = rest.range(of: piece), i > 0 || r.lowerBound == rest.startIndex else {
          XCTFail("\(command): message '\(got)' differs from the table's '\(message)'")
          break
        }
        rest = rest[r.upperBound...]
      }
      if pieces.count == 1 { XCTAssertEqual(got, message, command) }
    }
    XCTAssertEqual(kinds, ["ONNX", "external data", "text IR", "plan", ".npy", "images", "flag", "checkpoint", "mask"])
  }
}

/// Replays the fuzz seeds and every past finding (Tests/Fixtures/fuzz/<target>/) through the
/// fuzz targets' checks, so a fixed crash stays fixed.
final class FuzzRegressionTests: XCTestCase {
  func testSeedsAndFindingsReplayCleanly() throws {
    let fuzz = Bundle(for: CLITests.self).bundleURL
    let bin = [fuzz.appendingPathComponent("sbpc-fuzz"), fuzz.deletingLastPathComponent().appendingPathComponent("sbpc-fuzz")]
      .first { FileManager.default.isExecutableFile(atPath: $0.path) }
    let exe = try XCTUnwrap(bin, "sbpc-fuzz is not built")
    for target in ["onnx", "ir", "plan", "data"] {
      var files: [String] = []
      for dir in ["Fuzz/corpus/\(target)", "Tests/Fixtures/fuzz/\(target)"] {
        let d = root + "/" + dir
        for f in ((try? FileManager.default.contentsOfDirectory(atPath: d)) ?? []).sorted() { files.append(d + "/" + f) }
      }
      XCTAssertFalse(files.isEmpty, target)
      let p = Process()
      p.executableURL = exe
      p.arguments = [target] + files
      p.currentDirectoryURL = URL(fileURLWithPath: root)
      let out = Pipe()
      p.standardOutput = out
      p.standardError = out
      try p.run()
      let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      p.waitUntilExit()
      XCTAssertEqual(p.terminationStatus, 0, "\(target): \(text)")
      XCTAssertTrue(text.contains("replayed \(files.count) input(s): no crash"), text)
    }
  }
}

final class NumericGuardTests: XCTestCase {
  func testDivergenceIsCaughtAndNamed() throws {
    let d = NSTemporaryDirectory() + "sbpc-nan-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--lr", "1e6", "-o", d + "/big-lr.plan"])
    XCTAssertEqual(s, 0, e)
    // --check-numerics names the op, the node, its block (when it is in one) and the step.
    let (s1, _, e1) = try sbpc(["train", d + "/big-lr.plan", "--steps", "5", "--threads", "1", "--check-numerics"])
    XCTAssertEqual(s1, 1)
    XCTAssertEqual(e1.split(separator: "\n").count, 1, e1)
    XCTAssertNotNil(e1.range(of: #"step \d+: \w+ at node '[^']+'( in block \d+)? produced (NaN|-?inf)"#, options: .regularExpression), e1)
    // Without it, the loss is still checked every step.
    let (s2, _, e2) = try sbpc(["train", d + "/big-lr.plan", "--steps", "5", "--threads", "1"])
    XCTAssertEqual(s2, 1)
    XCTAssertTrue(e2.contains("training diverged"), e2)
  }
}
