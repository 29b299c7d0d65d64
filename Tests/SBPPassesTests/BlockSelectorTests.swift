// BlockSelectorTests.swift: the --blocks grammar, the paper's default rule, and every error.
import XCTest

@testable import SBPIR
@testable import SBPPasses

final class BlockSelectorTests: XCTestCase {
  /// Blocks in stages of the given sizes, each stage's grid half the previous one's (7×7 last),
  /// as a hierarchy has them; or every stage on one 14×14 grid, its prefix tokens differing
  /// (ConViT's class token joining after its local blocks).
  func table(_ stageSizes: [Int], oneGrid: Bool = false) -> BlockTable {
    var blocks: [BlockInfo] = []
    for (s, n) in stageSizes.enumerated() {
      let side = oneGrid ? 14 : 7 << (stageSizes.count - 1 - s)
      for _ in 0..<n {
        blocks.append(
          BlockInfo(
            index: blocks.count, stage: s, kind: "mhsa+mlp", layout: "tokens", tokenAxes: [1], grid: [side, side], prefix: oneGrid ? s : 1,
            roles: [], parameters: 0, nodes: 0, splitStages: [s]))
      }
    }
    return BlockTable(blocks: blocks)
  }

  lazy var vit = table([12])
  lazy var convnext = table([3, 3, 9, 3])

  func testGrammar() throws {
    XCTAssertEqual(try BlockSelector.parse("all", table: vit), Array(0..<12))
    XCTAssertEqual(try BlockSelector.parse("none", table: vit), [])
    XCTAssertEqual(try BlockSelector.parse("last:8", table: vit), Array(4..<12))
    XCTAssertEqual(try BlockSelector.parse("first:2", table: vit), [0, 1])
    XCTAssertEqual(try BlockSelector.parse("3-5", table: vit), [3, 4, 5])
    XCTAssertEqual(try BlockSelector.parse("7", table: vit), [7])
    XCTAssertEqual(try BlockSelector.parse("0, 2-3,last:1,2", table: vit), [0, 2, 3, 11])
    XCTAssertEqual(try BlockSelector.parse("last:0", table: vit), [])
    XCTAssertEqual(try BlockSelector.parse("stage:0", table: vit), Array(0..<12))
    XCTAssertEqual(try BlockSelector.parse("stage:0,stage:1,stage:2[0-5]", table: convnext), Array(0..<12))
    XCTAssertEqual(try BlockSelector.parse("stage:2[0,8],stage:3[1-2]", table: convnext), [6, 14, 16, 17])
    XCTAssertEqual(try BlockSelector.parse("stage:3", table: convnext), [15, 16, 17])
  }

  /// `last:N` past the depth selects every block and says so, as `tail -n` would; the design
  /// card's `--blocks last:8` then works on a 6-block model.
  func testCountsPastTheDepthSelectEveryBlock() throws {
    var notes: [String] = []
    XCTAssertEqual(try BlockSelector.parse("last:13", table: vit, notes: &notes), Array(0..<12))
    XCTAssertEqual(try BlockSelector.parse("first:20", table: vit, notes: &notes), Array(0..<12))
    XCTAssertEqual(notes, ["--blocks last:13: the model has 12 blocks; all 12 selected", "--blocks first:20: the model has 12 blocks; all 12 selected"])
    notes = []
    _ = try BlockSelector.parse("last:12", table: vit, notes: &notes)
    XCTAssertEqual(notes, [])
  }

  func testDefaultIsThePapersRule() {
    XCTAssertEqual(vit.defaultSelection, Array(4..<12))
    XCTAssertEqual(vit.defaultSpec, "last:8")
    XCTAssertEqual(convnext.defaultSelection, Array(0..<12))
    XCTAssertEqual(convnext.defaultSpec, "stage:0,stage:1,stage:2[0-5]")
    XCTAssertEqual(try BlockSelector.parse(convnext.defaultSpec, table: convnext), convnext.defaultSelection)
    // Scaled to other depths: ⌈2/3·depth⌉.
    XCTAssertEqual(table([6]).defaultSelection, Array(2..<6))
    XCTAssertEqual(table([4]).defaultSelection, Array(1..<4))
    XCTAssertEqual(table([1, 1, 3, 1]).defaultSelection, [0, 1, 2, 3])
    XCTAssertEqual(table([2, 2, 18, 2]).defaultSelection.count, 4 + 12)
    XCTAssertEqual(table([]).defaultSelection, [])
    XCTAssertEqual(table([]).defaultSpec, "none")
    // Stages that differ only in prefix tokens are one grid: the isotropic rule, across them.
    XCTAssertFalse(table([2, 10], oneGrid: true).isHierarchical)
    XCTAssertEqual(table([2, 10], oneGrid: true).defaultSelection, Array(4..<12))
  }

  /// PiT's grids (27×27, 14×14, 7×7): the rule picks stage 0 and most of stage 1, but 27×27 is
  /// not a whole multiple of stage 1's 14×14 base, so the default leaves stage 0 out, says
  /// why, and writes the rest as a list the grammar reads back.
  func testDefaultLeavesOutStagesTheMaskCannotReach() throws {
    var blocks: [BlockInfo] = []
    for (s, (n, side)) in [(2, 27), (6, 14), (4, 7)].enumerated() {
      for _ in 0..<n {
        blocks.append(
          BlockInfo(
            index: blocks.count, stage: s, kind: "mhsa+mlp", layout: "tokens", tokenAxes: [1], grid: [side, side], prefix: 1, roles: [],
            parameters: 0, nodes: 0, splitStages: [s]))
      }
    }
    let pit = BlockTable(blocks: blocks)
    XCTAssertEqual(pit.defaultSelection, [2, 3, 4, 5])
    XCTAssertEqual(pit.defaultSpec, "2-5")
    XCTAssertEqual(try BlockSelector.parse(pit.defaultSpec, table: pit), pit.defaultSelection)
    XCTAssertEqual(
      pit.defaultNote,
      "the default SBP blocks leave out stage 0 (2 blocks): its 27x27 grid is not a whole multiple of the 14x14 base grid of stage 1, so the one mask cannot be replicated to it"
    )
    XCTAssertNil(convnext.defaultNote)
  }

  func testEveryErrorShowsTheValidRange() {
    let cases: [(String, BlockTable, String)] = [
      ("", vit, "empty spec"),
      ("12", vit, "block 12 is out of range"),
      ("3-20", vit, "block 20 is out of range"),
      ("5-3", vit, "range 5-3 is empty"),
      ("first:x", vit, "'x' is not a count"),
      ("last:-1", vit, "is not a count"),
      ("-1", vit, "is not all, none"),
      ("1-2-3", vit, "is not N or A-B"),
      ("bogus", vit, "'bogus' is not all, none"),
      ("0,,1", vit, "empty item"),
      ("stage:1", vit, "stage 1 does not exist"),
      ("stage:4", convnext, "stage 4 does not exist"),
      ("stage:2[9]", convnext, "stage 2 has 9 blocks (0-8)"),
      ("stage:2[0-9]", convnext, "stage 2 has 9 blocks"),
      ("stage:2[]", convnext, "should be stage:S[A-B]"),
      ("stage:2[1,]", convnext, "empty range"),
      ("stage:2[1", convnext, "unbalanced '['"),
      ("stage:2]", convnext, "unbalanced ']'"),
      ("stage:x", convnext, "'x' is not a stage"),
    ]
    for (spec, t, fragment) in cases {
      XCTAssertThrowsError(try BlockSelector.parse(spec, table: t), spec) { e in
        let m = "\(e)"
        XCTAssertTrue(m.contains(fragment), "'\(spec)': \(m)")
        XCTAssertTrue(m.contains("valid blocks are 0-\(t.blocks.count - 1) (\(t.blocks.count) blocks)"), "'\(spec)': \(m)")
      }
    }
    XCTAssertThrowsError(try BlockSelector.parse("0", table: table([]))) { e in XCTAssertTrue("\(e)".contains("no SBP blocks")) }
  }
}
