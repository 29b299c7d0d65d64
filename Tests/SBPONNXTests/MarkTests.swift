// MarkTests.swift: the block tables of the bundled models, identical across exporters, opsets and renaming.
import XCTest

@testable import SBPIR
@testable import SBPONNX
@testable import SBPPasses

func blockTable(_ path: String) throws -> BlockTable {
  var g = try importONNX(path: path, options: ImportOptions(batch: 2)).graph
  try Canonicalize().run(&g)
  try Mark().run(&g)
  try g.verify()
  return BlockTable(g)
}

/// A block's description without its node count, which varies with how an exporter spells data movement.
func structure(_ t: BlockTable) -> [BlockInfo] {
  t.blocks.map {
    var b = $0
    b.nodes = 0
    return b
  }
}

final class MarkTests: XCTestCase {
  func testTinyViT() throws {
    let t = try blockTable(repoRoot + "/models/vit_p4_d6_ts17.onnx")
    XCTAssertEqual(t.blocks.count, 6)
    XCTAssertEqual(t.stageCount, 1)
    XCTAssertTrue(t.unmatched.isEmpty, "\(t.unmatched)")
    for b in t.blocks {
      XCTAssertEqual(b.kind, "mhsa+mlp")
      XCTAssertEqual(b.grid, [8, 8])
      XCTAssertEqual(b.prefix, 1)
      XCTAssertEqual(b.tokenAxes, [1])
      XCTAssertEqual(
        b.roles,
        ["mhsa.context", "mhsa.norm", "mhsa.proj", "mhsa.qkv", "mhsa.scores", "mhsa.softmax", "mlp.act", "mlp.fc1", "mlp.fc2", "mlp.norm"])
      // 2 LayerNorms, qkv, proj, fc1, fc2 with biases, for dim 64 and MLP 256.
      XCTAssertEqual(b.parameters, 4 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64))
    }
    XCTAssertEqual(t.stemNodes, 1)
    XCTAssertEqual(t.defaultSelection, [2, 3, 4, 5])
  }

  func testTinyConvNeXt() throws {
    let t = try blockTable(repoRoot + "/models/convnext_t1131_ts17.onnx")
    XCTAssertEqual(t.blocks.map(\.stage), [0, 1, 2, 2, 2, 3])
    XCTAssertEqual(t.blocks.map(\.grid), [[16, 16], [8, 8], [4, 4], [4, 4], [4, 4], [2, 2]])
    XCTAssertEqual(Set(t.blocks.map(\.kind)), ["dwconv+mlp"])
    XCTAssertEqual(Set(t.blocks.map(\.layout)), ["nchw"])
    XCTAssertEqual(t.downsamplers, 3)
    XCTAssertEqual(t.stemNodes, 2)  // the 4x4 patchify conv and its LayerNorm
    XCTAssertEqual(t.defaultSelection, [0, 1, 2, 3])
  }

  func testExportersOpsetsAndRenamingGiveTheSameTable() throws {
    for (model, variants) in [
      ("vit_p4_d6", ["vit_p4_d6_ts14.onnx", "vit_p4_d6_dynamo/model.onnx"]),
      ("convnext_t1131", ["convnext_t1131_ts14.onnx", "convnext_t1131_dynamo/model.onnx"]),
    ] {
      let reference = structure(try blockTable(repoRoot + "/models/\(model)_ts17.onnx"))
      for v in variants {
        XCTAssertEqual(structure(try blockTable(repoRoot + "/models/" + v)), reference, v)
      }
    }
    // Matching is by structure: every node, value and initializer renamed (models/rename.py).
    XCTAssertEqual(
      try blockTable(fixtures + "/renamed/vit_p4_d6_ts17.onnx").blocks, try blockTable(repoRoot + "/models/vit_p4_d6_ts17.onnx").blocks)
    XCTAssertEqual(
      try blockTable(fixtures + "/renamed/convnext_t1131_ts14.onnx").blocks,
      try blockTable(repoRoot + "/models/convnext_t1131_ts14.onnx").blocks)
  }

  func testDefaultSelectionIsValidOnEveryBundledModel() throws {
    for path in bundledModels() {
      let t = try blockTable(path)
      XCTAssertFalse(t.blocks.isEmpty, path)
      XCTAssertTrue(t.unmatched.isEmpty, "\(path): \(t.unmatched)")
      XCTAssertFalse(t.defaultSelection.isEmpty, path)
      XCTAssertEqual(try BlockSelector.parse(t.defaultSpec, table: t), t.defaultSelection, path)
    }
  }

  func testNonSpatialTokensComeFromStructure() throws {
    XCTAssertEqual(Set(try blockTable(repoRoot + "/models/deit_dist_p4_d4_ts17.onnx").blocks.map(\.prefix)), [2])
    XCTAssertEqual(Set(try blockTable(repoRoot + "/models/vit_avg_p4_d4_ts17.onnx").blocks.map(\.prefix)), [0])
    XCTAssertEqual(
      structure(try blockTable(repoRoot + "/models/convnext_convmlp_t1131_ts17.onnx")),
      structure(try blockTable(repoRoot + "/models/convnext_t1131_ts17.onnx")))
  }

  func testUnmatchedUnitsAreListedWithTheirReason() throws {
    var g = try parseGraph(try String(contentsOfFile: repoRoot + "/passes/mark/unmatched-mlp.sbpir", encoding: .utf8))
    try Mark().run(&g)
    let t = BlockTable(g)
    XCTAssertEqual(t.blocks.count, 1)
    XCTAssertEqual(
      t.unmatched.map(\.reason),
      ["its linears and norm act on different axes of the input (a token-mixing MLP): it mixes tokens, so it cannot be split by rows"])
  }

  /// SBP reaches every PW-Conv node wherever it sits: in the CNN families, each 1×1 conv on a
  /// grid of more than one position is in a block, with or without a shortcut around it
  /// (the first block of an EfficientNet or MobileNet stage has none); the SE convs on the
  /// pooled 1×1 map are not.
  func testEveryPointwiseConvOnAGridIsMarked() throws {
    for family in ["efficientnet_b0", "mobilenetv3_small_100", "regnety_002", "resnet50"] {
      var g = try importONNX(path: repoRoot + "/models/families/\(family)/model_ts17.onnx", options: ImportOptions(batch: 2)).graph
      try Canonicalize().run(&g)
      try Mark().run(&g)
      var onGrid = 0
      for n in g.nodes {
        guard case .linear(1, _) = n.op, g.type(of: n.inputs[0]).rank == 4 else { continue }
        let s = g.type(of: n.inputs[0]).shape
        let split: Bool
        if case .string(let r)? = n.attrs[Annotation.role] { split = r.hasPrefix("pwconv") || r.hasPrefix("mlp.") } else { split = false }
        if s[2] * s[3] > 1 {
          onGrid += 1
          XCTAssertTrue(split, "\(family): '\(n.name)' is a 1×1 conv on a \(s[2])x\(s[3]) grid that is not split")
        } else {
          XCTAssertFalse(split, "\(family): '\(n.name)' reads a 1×1 map")
        }
      }
      XCTAssertGreaterThan(onGrid, 4, family)
    }
    let t = BlockTable(try {
      var g = try importONNX(path: repoRoot + "/models/families/efficientnet_b0/model_ts17.onnx", options: ImportOptions(batch: 2)).graph
      try Canonicalize().run(&g)
      try Mark().run(&g)
      return g
    }())
    XCTAssertTrue(t.blocks.contains { $0.kind == "pwconv(plain)" })
  }

  /// Block indices are 0..<n in every family, so `--blocks` accepts every index `inspect`
  /// prints (units nested in a larger sum used to leave holes).
  func testBlockIndicesAreDense() throws {
    let root = repoRoot + "/models/families"
    for family in try FileManager.default.contentsOfDirectory(atPath: root).sorted() {
      let t = try blockTable("\(root)/\(family)/model_ts17.onnx")
      XCTAssertEqual(t.blocks.map(\.index), Array(0..<t.blocks.count), family)
    }
  }

  func testMarkIsIdempotentAndTextRoundTrips() throws {
    var g = try importONNX(path: repoRoot + "/models/convnext_t1131_ts17.onnx", options: ImportOptions(batch: 2)).graph
    try Canonicalize().run(&g)
    try Mark().run(&g)
    let once = g.printed()
    try Mark().run(&g)
    XCTAssertEqual(g.printed(), once)
    XCTAssertEqual(BlockTable(try parseGraph(once)).blocks, BlockTable(g).blocks)
  }
}
