// BadInputTests.swift: each kind of bad ONNX input gets a one-line error naming the culprit, never a crash.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPONNX

let fixtures = repoRoot + "/Tests/Fixtures"

/// A scratch folder removed after the test.
func scratchDir() throws -> String {
  let d = NSTemporaryDirectory() + "sbpc-test-" + UUID().uuidString
  try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}

final class BadInputTests: XCTestCase {
  /// Asserts that importing `path` fails with a one-line message containing every fragment.
  func assertRejects(
    _ path: String, _ fragments: [String], options: ImportOptions = ImportOptions(batch: 2), file: StaticString = #filePath,
    line: UInt = #line
  ) {
    do {
      _ = try importONNX(path: path, options: options)
      XCTFail("\(path) imported, expected an error", file: file, line: line)
    } catch {
      let m = "\(error)"
      XCTAssertFalse(m.contains("\n"), "multi-line error: \(m)", file: file, line: line)
      for f in fragments { XCTAssertTrue(m.contains(f), "'\(m)' does not mention '\(f)'", file: file, line: line) }
    }
  }

  func testValidFixturesImport() throws {
    for f in ["ok_linear.onnx", "ok_external/model.onnx"] {
      let g = try importONNX(path: fixtures + "/" + f, options: ImportOptions(batch: 3)).graph
      XCTAssertEqual(g.type(of: g.outputs[0].value), TensorType(.f32, [3, 3]))
    }
    let linear = try importONNX(path: fixtures + "/ok_linear.onnx").graph
    let external = try importONNX(path: fixtures + "/ok_external/model.onnx").graph
    for (a, b) in zip(linear.params, external.params) {
      XCTAssertEqual(Data(a.data!.buffer), Data(b.data!.buffer), "external bytes differ from inline ones for \(a.name)")
    }
  }

  /// Clip with constant bounds (ReLU6), HardSwish and HardSigmoid import as unary functions
  /// with their parameters; the bounds are not parameters.
  func testActivationsImportWithTheirParameters() throws {
    let g = try importONNX(path: fixtures + "/ok_activations.onnx", options: ImportOptions(batch: 2)).graph
    let ops = g.nodes.map(\.op).filter { if case .unary = $0 { return true } else { return false } }
    XCTAssertEqual(ops, [.unary(.clip(min: 0, max: 6)), .unary(.hardSwish), .unary(.hardSigmoid(alpha: Double(Float(0.2)), beta: 0.5))])
    XCTAssertEqual(g.params.map(\.name), ["W", "B"])
    // The text form prints the parameters and parses them back.
    XCTAssertEqual(try parseGraph(g.printed()).printed(), g.printed())
  }

  /// `W` feeds two MatMuls, the second through an Identity: as an exporter leaves tensors it
  /// merged. By default each reader trains its own copy and a warning says so; --keep-tied
  /// keeps one tensor.
  func testATiedInitializerIsUntiedWithAWarning() throws {
    let m = try importONNX(path: fixtures + "/ok_shared_identity.onnx", options: ImportOptions(batch: 2))
    XCTAssertEqual(m.graph.params.map(\.name).sorted(), ["B", "W", "W.copy1"])
    XCTAssertTrue(m.graph.params.allSatisfy(\.trainable))
    let readers = m.graph.nodes.filter { $0.op == .matMul }.map { n in m.graph.params.first { $0.value == n.inputs[1] }?.name }
    XCTAssertEqual(readers, ["W", "W.copy1"])
    XCTAssertEqual(m.notes.filter { $0.hasPrefix("warning: initializer 'W' feeds 2 layers ('matmul1', 'matmul2')") }.count, 1, "\(m.notes)")
    XCTAssertFalse(m.notes.joined().contains("\n"))

    let kept = try importONNX(path: fixtures + "/ok_shared_identity.onnx", options: ImportOptions(batch: 2, keepTied: true))
    XCTAssertEqual(kept.graph.params.map(\.name).sorted(), ["B", "W"])
    let w = try XCTUnwrap(kept.graph.params.first { $0.name == "W" })
    XCTAssertEqual(kept.graph.nodes.filter { $0.op == .matMul && $0.inputs[1] == w.value }.count, 2)
    XCTAssertTrue(kept.notes.contains { $0.contains("trained as one shared tensor (--keep-tied)") }, "\(kept.notes)")
  }

  /// Readers in one TorchScript module scope are one layer reading its weight twice, unless a
  /// reader goes through an Identity alias, the trace of an exporter's merge.
  func testTiesWithinOneModuleScope() throws {
    func model(aliased: Bool) -> OModel {
      let w = OTensor(name: "attn.bias", onnxType: 1, dims: [2], data: .bytes([Float(0.5), 1.5].withUnsafeBytes { TensorBytes(copying: $0) }))
      var nodes = [
        ONode(name: "/attn/Add", opType: "Add", domain: "", inputs: ["x", "attn.bias"], outputs: ["a"], attrs: [:]),
        ONode(name: "/attn/Add_1", opType: "Add", domain: "", inputs: ["a", aliased ? "onnx::Add_9" : "attn.bias"], outputs: ["y"], attrs: [:]),
      ]
      if aliased { nodes.insert(ONode(name: "/Identity", opType: "Identity", domain: "", inputs: ["attn.bias"], outputs: ["onnx::Add_9"], attrs: [:]), at: 0) }
      return OModel(opsets: ["": 17], producer: "", graphName: "g", nodes: nodes, initializers: [w], inputs: [], outputs: [], valueInfo: [], functionCount: 0)
    }
    XCTAssertTrue(findTiedWeights(model(aliased: false)).isEmpty, "one layer reading its bias twice")
    let ties = findTiedWeights(model(aliased: true))
    XCTAssertEqual(ties.map(\.name), ["attn.bias"])
    XCTAssertEqual(ties.first?.copies.map(\.copy), ["attn.bias.copy1"])
  }

  /// A dense bias added to attention scores (a folded relative-position lookup) and a q/k/v
  /// bias with a zero middle third (a folded cat(q_bias, 0, v_bias)) each get one warning
  /// line naming the initializer; the bundled exports for training get none.
  func testExporterArtefactsAreReported() throws {
    let a = try importONNX(path: fixtures + "/warn_attention_bias.onnx", options: ImportOptions(batch: 2)).notes
    XCTAssertEqual(a.filter { $0.hasPrefix("warning: @rel_bias f32[1,3,3] is added to the attention scores of 'softmax'") }.count, 1, "\(a)")
    let q = try importONNX(path: fixtures + "/warn_qkv_bias.onnx", options: ImportOptions(batch: 2)).notes
    XCTAssertEqual(q.filter { $0.hasPrefix("warning: @qkv_bias looks like q, k and v biases") }.count, 1, "\(q)")
    for f in ["ok_linear", "ok_activations", "ok_norms"] {
      let n = try importONNX(path: fixtures + "/\(f).onnx", options: ImportOptions(batch: 2)).notes
      XCTAssertFalse(n.contains { $0.hasPrefix("warning:") }, "\(f): \(n)")
    }
  }

  /// --freeze takes names, dotted prefixes and wildcards; what it names does not train, and a
  /// pattern that names nothing is an error naming it.
  func testFreezeLeavesInitializersOut() throws {
    let m = try importONNX(path: fixtures + "/warn_attention_bias.onnx", options: ImportOptions(batch: 2, freeze: ["W?"]))
    XCTAssertEqual(m.graph.params.filter(\.trainable).map(\.name), ["rel_bias"])
    XCTAssertEqual(m.initializers.first { $0.name == "Wq" }?.reason, "frozen by --freeze W?")
    XCTAssertTrue(m.notes.contains { $0.hasPrefix("--freeze: 2 initializers (32 values) frozen; 1 initializers (9 values) train") }, "\(m.notes)")
    XCTAssertEqual(ImportOptions(freeze: ["blocks.1"]).frozenBy("blocks.1.attn.qkv.weight"), "blocks.1")
    XCTAssertNil(ImportOptions(freeze: ["blocks.1"]).frozenBy("blocks.10.attn.qkv.weight"))
    XCTAssertEqual(ImportOptions(freeze: ["*.bias"]).frozenBy("head.bias"), "*.bias")
    XCTAssertNil(ImportOptions(freeze: ["*.bias"]).frozenBy("head.bias.x"))
    XCTAssertThrowsError(try importONNX(path: fixtures + "/warn_attention_bias.onnx", options: ImportOptions(batch: 2, freeze: ["head.*"]))) { e in
      XCTAssertEqual("\(e)".components(separatedBy: "\n").count, 1)
      XCTAssertTrue("\(e)".contains("--freeze head.*: names no trainable initializer"), "\(e)")
    }
  }

  func testEmptyFile() throws {
    let d = try scratchDir()
    FileManager.default.createFile(atPath: d + "/empty.onnx", contents: Data())
    assertRejects(d + "/empty.onnx", ["empty.onnx", "empty"])
  }

  func testTruncatedFiles() throws {
    let d = try scratchDir()
    let whole = try Data(contentsOf: URL(fileURLWithPath: repoRoot + "/models/vit_p4_d6_ts17.onnx"))
    // Cut at many points: inside the header, inside a weight, inside the node list.
    for cut in [1, 7, 100, 5_000, whole.count / 3, whole.count / 2, whole.count - 10] {
      let p = d + "/cut\(cut).onnx"
      FileManager.default.createFile(atPath: p, contents: whole.prefix(cut))
      assertRejects(p, ["cut\(cut).onnx"])
    }
  }

  func testRandomBytes() throws {
    let d = try scratchDir()
    var rng = SystemRandomNumberGenerator()
    for i in 0..<20 {
      let bytes = (0..<(64 + i * 97)).map { _ in UInt8.random(in: 0...255, using: &rng) }
      let p = d + "/random\(i).onnx"
      FileManager.default.createFile(atPath: p, contents: Data(bytes))
      assertRejects(p, ["random\(i).onnx"])
    }
  }

  func testMissingExternalDataFile() throws {
    assertRejects(fixtures + "/ext_missing/model.onnx", ["'W'", "weights.bin", "not found"])
    // A real dynamo export copied without its data file.
    let d = try scratchDir()
    try FileManager.default.copyItem(atPath: repoRoot + "/models/vit_p4_d6_dynamo/model.onnx", toPath: d + "/model.onnx")
    assertRejects(d + "/model.onnx", ["model.onnx.data", "not found"])
  }

  func testExternalLocationsMustStayInTheModelFolder() {
    assertRejects(fixtures + "/ext_absolute/model.onnx", ["'W'", "/etc/hostname", "absolute"])
    assertRejects(fixtures + "/ext_escape/model.onnx", ["'W'", "'..'"])
    assertRejects(fixtures + "/ext_symlink/model.onnx", ["'W'", "outside the model's folder"])
  }

  func testExternalRangePastTheEnd() {
    assertRejects(fixtures + "/ext_past_end/model.onnx", ["'B'", "offset 48 + length 12", "past the end"])
  }

  func testTensorSizeMustMatchShape() {
    assertRejects(fixtures + "/bad_size.onnx", ["'W'", "40 bytes", "f32[4,3]", "48"])
  }

  func testHugeDeclaredTensorIsRefusedWithoutAllocating() {
    assertRejects(fixtures + "/huge_tensor.onnx", ["'H'", "too large"])
  }

  func testUnknownOpNamesOpAndNode() {
    assertRejects(fixtures + "/unknown_op.onnx", ["'fancy_node'", "FancyOp", "unsupported op"])
  }

  func testSymbolicDimensionOtherThanBatch() throws {
    assertRejects(fixtures + "/symbolic_dim.onnx", ["'features'", "'x'", "--dim"])
    let g = try importONNX(path: fixtures + "/symbolic_dim.onnx", options: ImportOptions(batch: 2, dims: ["features": 4])).graph
    XCTAssertEqual(g.type(of: g.inputs[0].value), TensorType(.f32, [2, 4]))
  }

  func testCycle() {
    assertRejects(fixtures + "/cycle.onnx", ["cycle", "'n1'"])
  }

  func testOtherStructuralErrors() {
    assertRejects(fixtures + "/opset_12.onnx", ["opset 12", "13 to 21"])
    assertRejects(fixtures + "/no_graph.onnx", ["no graph"])
    assertRejects(fixtures + "/dangling_input.onnx", ["'ghost'", "'add'"])
    assertRejects(fixtures + "/does-not-exist.onnx", ["does-not-exist.onnx", "cannot open"])
  }
}
