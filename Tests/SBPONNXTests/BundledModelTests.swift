// BundledModelTests.swift: every bundled export imports, canonicalizes, round-trips, and the exporters agree.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPONNX
@testable import SBPPasses

/// The repository root, found from this file's path.
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Every bundled ONNX model: single files in models/ and the dynamo exports in their folders.
func bundledModels() -> [String] {
  let dir = repoRoot + "/models"
  let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
  var out: [String] = []
  for n in names.sorted() {
    if n.hasSuffix(".onnx") { out.append(dir + "/" + n) }
    if FileManager.default.fileExists(atPath: dir + "/" + n + "/model.onnx") { out.append(dir + "/" + n + "/model.onnx") }
  }
  return out
}

final class BundledModelTests: XCTestCase {
  func testThereAreBundledModelsFromBothExporters() {
    let models = bundledModels()
    XCTAssertGreaterThanOrEqual(models.count, 6, "\(models)")
    XCTAssertTrue(models.contains { $0.hasSuffix("_dynamo/model.onnx") })
    XCTAssertTrue(models.contains { $0.hasSuffix("_ts14.onnx") })
  }

  func testPrintParsePrintIsByteIdenticalAfterEveryPass() throws {
    for path in bundledModels() {
      var g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
      for stage in ["import"] + PassRegistry.all.map(\.name) {
        if let p = PassRegistry.named(stage) { try p.run(&g) }
        try g.verify()
        let text = g.printed()
        let reparsed = try parseGraph(text)
        try reparsed.verify()
        XCTAssertEqual(reparsed.printed(), text, "\(path) after \(stage)")
      }
    }
  }

  func canonicalHistogram(_ path: String) throws -> [String: Int] {
    var g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
    try Canonicalize().run(&g)
    try g.verify()
    return g.opHistogram
  }

  func testExportersAndOpsetsAgreeOnTheOpsThatMatter() throws {
    let keyOps = ["linear", "gelu", "layer_norm", "softmax", "conv", "matmul", "global_average_pool"]
    for model in ["vit_p4_d6", "convnext_t1131"] {
      let paths = ["\(model)_ts17.onnx", "\(model)_ts14.onnx", "\(model)_dynamo/model.onnx"].map { repoRoot + "/models/" + $0 }
      let hists = try paths.map(canonicalHistogram)
      for op in keyOps {
        XCTAssertEqual(Set(hists.map { $0[op] ?? 0 }).count, 1, "\(model): exporters disagree on \(op): \(hists.map { $0[op] ?? 0 })")
      }
    }
    let vit = try canonicalHistogram(repoRoot + "/models/vit_p4_d6_ts14.onnx")
    XCTAssertEqual(vit["gelu"], 6)
    XCTAssertEqual(vit["layer_norm"], 13)  // 2 per block and the final norm
    XCTAssertEqual(vit["linear"], 25)  // qkv, proj, fc1, fc2 per block and the head
    XCTAssertEqual(vit["softmax"], 6)
  }

  func testNoShapeArithmeticSurvivesCanonicalization() throws {
    for path in bundledModels() {
      var g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
      try Canonicalize().run(&g)
      let ud = g.index()
      for n in g.nodes {
        if case .cast = n.op { XCTFail("\(path): cast left at \(n.name)") }
        if case .constant = n.op { continue }
        // A node computing only from constants is an unfolded constant chain.
        let fromConstants = !n.inputs.isEmpty && n.inputs.allSatisfy { ud.literal($0) != nil }
        XCTAssertFalse(fromConstants, "\(path): \(n.op.name) at '\(n.name)' computes only from constants")
      }
    }
  }

  func testBatchDefaultsTo32AndSaysSo() throws {
    let path = repoRoot + "/models/vit_p4_d6_ts17.onnx"
    let m = try importONNX(path: path)
    XCTAssertEqual(m.batch, 32)
    XCTAssertEqual(m.graph.type(of: m.graph.inputs[0].value).shape, [32, 3, 32, 32])
    XCTAssertTrue(m.notes.contains { $0.contains("defaults to 32") }, "\(m.notes)")
    let m4 = try importONNX(path: path, options: ImportOptions(batch: 4))
    XCTAssertEqual(m4.graph.type(of: m4.graph.outputs[0].value).shape, [4, 10])
    XCTAssertTrue(m4.notes.isEmpty)
  }

  func testClassTokenStaysATrainableParameterFeedingExpand() throws {
    for path in bundledModels() where path.contains("vit_p4") || path.contains("deit") {
      let g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
      let cls = try XCTUnwrap(g.params.first { $0.name == "cls_token" }, path)
      XCTAssertTrue(cls.trainable)
      XCTAssertTrue(g.nodes.contains { $0.op == .expand([2, 1, 1]) && $0.inputs == [cls.value] }, path)
    }
  }

  func testParametersAreTheModelsWeightsWithTheirBytes() throws {
    for path in bundledModels() {
      let g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
      // timm's parameter counts (sum(p.numel() for p in model.parameters())).
      let counts = ["vit_p4_d6": 308_042, "convnext_t1131": 306_778]
      if let expected = counts.first(where: { path.contains("/\($0.key)_") })?.value {
        XCTAssertEqual(g.trainableParameterCount.elements, expected, path)
      }
      for p in g.params {
        XCTAssertEqual(p.data?.count, g.type(of: p.value).byteCount, "\(path): @\(p.name)")
      }
    }
  }

  func testSingleFileWeightsAreReadInPlace() throws {
    let path = repoRoot + "/models/vit_p4_d6_ts17.onnx"
    let file = try Data(contentsOf: URL(fileURLWithPath: path))
    let g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
    for p in g.params where p.trainable {
      XCTAssertTrue(p.data?.owner is MappedFile, "@\(p.name) was copied out of the file")
      XCTAssertNotNil(file.range(of: Data(p.data!.buffer)), "@\(p.name) bytes are not the file's")
    }
  }

  func testExternalWeightsAreReadInPlace() throws {
    let path = repoRoot + "/models/vit_p4_d6_dynamo/model.onnx"
    let data = try Data(contentsOf: URL(fileURLWithPath: path + ".data"))
    let g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
    let w = try XCTUnwrap(g.params.first { $0.name == "pos_embed" }?.data)
    // The bytes equal the file's and live in the mapping, not in a copy on the heap.
    XCTAssertNotNil(data.range(of: Data(w.buffer)))
    for p in g.params where p.trainable {
      XCTAssertTrue(p.data?.owner is MappedFile, "@\(p.name) was copied instead of borrowed from the mapped data file")
    }
  }
}
